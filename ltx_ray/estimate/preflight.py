"""`ltx-ray train`'s pre-flight: will the run fit its GPUs? Asked on the driver, before any GPU is booked."""

from __future__ import annotations

import logging

from ltx_ray.config.schema import JobConfig
from ltx_ray.estimate.estimate import GIB, Estimate, estimate

log = logging.getLogger(__name__)


def gpu_memory(job: JobConfig) -> tuple[int | None, str]:
    """Bytes of one worker GPU and where the figure comes from: `cluster.gpu_memory_gb`, else the driver's
    own GPU when the job uses GPUs and the driver has one, else (None, "")."""
    if job.cluster.gpu_memory_gb is not None:
        return int(job.cluster.gpu_memory_gb * GIB), f"cluster.gpu_memory_gb={job.cluster.gpu_memory_gb:g}"
    if job.cluster.use_gpu:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.total_memory, f"this machine's {props.name}"
    return None, ""


def _setting(a: dict, job: JobConfig) -> str:
    c = job.cluster
    parts = []
    if a["zero_stage"] != c.zero_stage:
        parts.append(f"cluster.zero_stage={a['zero_stage']}")
    if a["gradient_checkpointing"] != c.gradient_checkpointing:
        parts.append(f"cluster.gradient_checkpointing={str(a['gradient_checkpointing']).lower()}")
    if a["num_workers"] != c.min_workers:
        parts.append(f"cluster.num_workers={a['num_workers']}")
    return " ".join(parts)


def fitting_settings(est: Estimate, job: JobConfig, limit: int) -> list[str]:
    """Up to three changes of ZeRO stage, gradient checkpointing and worker count whose training worker
    fits in `limit` bytes: fewest changes first, then the smallest peak."""
    fits = [a for a in est.alternatives if a["peak"] <= limit and _setting(a, job)]
    fits.sort(key=lambda a: (len(_setting(a, job).split()), a["num_workers"], a["peak"]))
    return [f"{_setting(a, job)} ({a['peak'] / GIB:.1f} GiB)" for a in fits[:3]]


def preflight(job: JobConfig, est: Estimate | None = None) -> list[str]:
    """Estimate the run's memory and return a warning per GPU user whose peak exceeds the GPU (also logged).

    `est`: the job's estimate when the caller has it (with its alternatives, for the settings that would
    fit). No GPU memory known (a CPU job without `cluster.gpu_memory_gb`): no estimate, no warnings.
    """
    limit, source = gpu_memory(job)
    if limit is None:
        return []
    log.info("pre-flight: estimating GPU memory against %.1f GiB per GPU (%s)", limit / GIB, source)
    est = est or estimate(job)
    warnings = []
    for use in est.uses:
        if use.total <= limit:
            continue
        text = (f"pre-flight: the {use.name} needs an estimated {use.total / GIB:.1f} GiB per GPU, more than the "
                f"{limit / GIB:.1f} GiB of {source}")
        if use.name == "training worker":
            fits = fitting_settings(est, job, limit)
            text += ("; would fit: " + "; ".join(fits)) if fits else (
                "; no ZeRO stage, gradient checkpointing setting or up to 4x the workers fits: lower "
                "request.resolution or request.number_of_frames, or use larger GPUs")
        elif use.name == "previewing rank 0":
            text += ("; set preview.batch_guidance=false (one guidance pass at a time) or a lower "
                     "request.validation_resolution")
        else:
            text += "; give the encoder actors GPUs with more memory"
        text += " (ltx-ray estimate shows the breakdown)"
        log.warning(text)
        warnings.append(text)
    if not warnings:
        log.info("pre-flight: peak %.1f GiB per GPU fits %.1f GiB", est.peak / GIB, limit / GIB)
    return warnings
