"""`ltx-ray estimate`: GPU memory of a run, per GPU, before any GPU is booked.

What is measured and what is laid out by rule:

- measured (`memory.py`, fake tensors): one training micro-step of ltx-core's
  transformer with our LoRA (activations, temporaries, inputs), one preview
  step (all guidance passes as one batch), the VAE encoders on one pair.
  The transformer's blocks are identical, so a step's memory is affine in the
  number of blocks: it is measured at two depths (`PROBE_DEPTHS`, same widths)
  and extended to the model's depth; `exact_depth=True` runs every block instead
  (minutes for the 48-block model; a test checks the two agree).
- laid out by rule: parameters, DeepSpeed's buffers, gradients and optimizer
  state as DeepSpeed ZeRO holds them per GPU (`zero_layout`), from the exact
  parameter counts of the model built on the meta device and the very ZeRO
  settings training runs with (`zero_settings`, which `deepspeed_config` uses);
  the Gemma text encoder's weights from its config (a Gemma-3 directory's
  `config.json`, LTX-2.5's packed Gemma-4's header) and its forward from its sizes.
- allowed for, not modelled: the CUDA context and kernels, cuBLAS workspaces,
  NCCL buffers (`FIXED_ALLOWANCE`) and the caching allocator's fragmentation
  (`FRAGMENTATION` of the modelled peak).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ltx_ray.config.schema import JobConfig
from ltx_ray.estimate import memory
from ltx_ray.estimate.architecture import (
    Architecture,
    architecture_for,
    preview_shapes,
    training_shapes,
)
from ltx_ray.estimate.zero_settings import zero_settings

GIB = 2**30
# Depths the step is measured at before extending it to the model's depth.
PROBE_DEPTHS = (4, 8)
# Bytes per element of the dtype names a DeepSpeed config uses.
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Per GPU: CUDA context + kernels (~0.5-1 GiB), cuBLAS workspaces, NCCL communicators (~0.3 GiB) ...
FIXED_ALLOWANCE = 1.5 * GIB
# ... and the caching allocator's fragmentation, as a share of the modelled peak.
FRAGMENTATION = 0.05


@dataclass
class GpuUse:
    """One GPU user's memory (bytes) by kind, the allowance added, and the total to compare with a GPU."""

    name: str
    kinds: dict[str, int]
    allowance: int
    notes: list[str] = field(default_factory=list)

    @property
    def modelled(self) -> int:
        return sum(self.kinds.values())

    @property
    def total(self) -> int:
        return self.modelled + self.allowance


@dataclass
class Estimate:
    """Everything `ltx-ray estimate` reports."""

    architecture: str
    architecture_note: str | None
    counts: dict[str, int]
    tokens: dict[str, int]
    preview_tokens: dict[str, int]
    settings: dict[str, Any]
    uses: list[GpuUse]
    # The training worker's total under other ZeRO stages, gradient checkpointing and world sizes.
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def peak(self) -> int:
        return max(u.total for u in self.uses)

    def use(self, name: str) -> GpuUse:
        return next(u for u in self.uses if u.name == name)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for u, data in zip(self.uses, out["uses"]):
            data["modelled"], data["total"] = u.modelled, u.total
        out["peak"] = self.peak
        return out


def with_depth(arch: Architecture, blocks: int) -> Architecture:
    config = copy.deepcopy(arch.config)
    config["transformer"]["num_layers"] = blocks
    return Architecture(config, arch.source)


def at_depth(measure, arch: Architecture, blocks: int, *, exact: bool = False) -> memory.Measured:
    """`measure(arch)` at the model's depth `blocks`: run at two probe depths and extended (affine in the
    block count), or run at full depth when `exact` or when the probes' peaks fall in different phases."""
    d1, d2 = PROBE_DEPTHS
    if exact or blocks <= d2:
        return measure(with_depth(arch, blocks))
    a, b = measure(with_depth(arch, d1)), measure(with_depth(arch, d2))
    if a.peak_phase != b.peak_phase:
        return measure(with_depth(arch, blocks))
    scale = (blocks - d2) / (d2 - d1)
    kinds = {k: round(b.kinds[k] + (b.kinds[k] - a.kinds[k]) * scale) for k in b.kinds}
    return memory.Measured(
        peak=sum(kinds.values()), kinds=kinds, seconds=a.seconds + b.seconds, peak_phase=b.peak_phase,
        parameters=round(b.parameters + (b.parameters - a.parameters) * scale),
        trainable=round(b.trainable + (b.trainable - a.trainable) * scale),
        lora_layers=round(b.lora_layers + (b.lora_layers - a.lora_layers) * scale),
        notes=[f"measured at {d1} and {d2} blocks, extended to {blocks}"],
    )


def zero_layout(counts: dict[str, int], ds_config: dict[str, Any], *, world: int, element_bytes: int,
                between_steps: bool = False) -> dict[str, int]:
    """Parameters, DeepSpeed's buffers, gradients and optimizer state per GPU under `ds_config` (a DeepSpeed
    config dict, or `zero_settings`' part of one), as DeepSpeed 0.19 holds them (read from its
    `runtime/zero/stage_1_and_2.py` and `stage3.py`).

    - parameters: ZeRO-2 keeps the base model and the LoRA whole on every rank. ZeRO-3 splits them over
      the `world` ranks and holds whole, besides, the parameters under `stage3_param_persistence_threshold`
      and a gathered working set: one block plus `stage3_prefetch_bucket_size`, at most
      `stage3_max_live_parameters`.
    - ZeRO buffers: the gradient reduction buckets of `reduce_bucket_size` elements, allocated in full
      whenever `contiguous_gradients` is on (ZeRO-2: in the model's dtype, twice with `overlap_comm`;
      ZeRO-3: once, in `communication_data_type`), plus the bucket being reduced (ZeRO-2 flattens it and
      casts it to the communication dtype; ZeRO-3 concatenates it).
    - gradients: this rank's 1/world of the LoRA's reduced gradients, summed over micro-steps in
      `data_types.grad_accum_dtype` (the model's dtype when unset), and cast to fp32 for the step if not
      fp32 already.
    - optimizer state: this rank's 1/world of the LoRA's fp32 master weights and AdamW's two fp32 moments.

    `between_steps`: what stays allocated outside backward and the optimizer step (a preview runs then):
    ZeRO-2 frees its buckets after every backward and its gradient partition after the step; ZeRO-3
    keeps its one bucket and its gradient partition; no bucket is being reduced, no gradient cast.
    """
    zero = ds_config["zero_optimization"]
    stage = zero["stage"]
    base, lora = counts["base_parameters"], counts["trainable_parameters"]
    comm = _DTYPE_BYTES[ds_config.get("communication_data_type") or _dtype_name(element_bytes)]
    accum = _DTYPE_BYTES[(ds_config.get("data_types") or {}).get("grad_accum_dtype") or _dtype_name(element_bytes)]
    bucket, share = zero["reduce_bucket_size"], -(-lora // world)
    if stage == 2:
        params = (base + lora) * element_bytes
        buckets = (2 if zero["overlap_comm"] else 1) * bucket * element_bytes  # from backward's start to its end
        reducing = min(bucket, lora) * (element_bytes + (comm if comm != element_bytes else 0))
        kept_gradients = 0  # freed after the step
    else:
        working = min(zero["stage3_max_live_parameters"],
                      counts["block_parameters"] + zero["stage3_prefetch_bucket_size"])
        params = (-(-(base + lora) // world) + _persistent(counts, zero) + working) * element_bytes
        buckets = bucket * comm  # allocated once, kept
        reducing = min(bucket, lora) * comm
        kept_gradients = share * accum
    if not zero.get("contiguous_gradients", True):
        buckets = 0
    if between_steps:
        buffers = buckets if stage == 3 else 0
        gradients = kept_gradients
    else:
        buffers = buckets + reducing
        gradients = share * accum + (share * 4 if accum != 4 else 0)
    return {
        "parameters": params,
        "ZeRO buffers": buffers,
        "gradients": gradients,
        "optimizer state": share * (4 + 8),
    }


def _dtype_name(element_bytes: int) -> str:
    return "fp32" if element_bytes == 4 else "bf16"


def _persistent(counts: dict[str, int], zero: dict[str, Any]) -> int:
    """Elements ZeRO-3 keeps whole on every rank: the parameters of at most `stage3_param_persistence_threshold`
    elements, counted for the two thresholds `zero_settings` can give (none, or every tensor smaller than the
    smallest adapted weight)."""
    threshold = zero["stage3_param_persistence_threshold"]
    if threshold == 0:
        return 0
    if threshold == counts["smallest_adapted_weight"] - 1:
        return counts["small_parameters"]
    raise ValueError(f"no count of the parameters under a persistence threshold of {threshold} elements")


def _allowance(modelled: int) -> int:
    return int(FIXED_ALLOWANCE + FRAGMENTATION * modelled)


def _gemma_use(job: JobConfig, arch: Architecture, shapes, element_bytes: int) -> tuple[dict[str, int], str, str]:
    """The Gemma text encoder (Gemma-3, or LTX-2.5's Gemma-4) + our connectors on the encoder actor: weights
    counted on the meta device, the forward of one padded caption from its sizes (every hidden state is kept;
    one layer's working set). Returns the bytes by kind, the Gemma's name and where its sizes came from."""
    from ltx_ray.estimate.architecture import TEXT_TOKENS
    from ltx_ray.estimate.text_encoder import gemma_config, gemma_parameters
    from ltx_ray.model.loader import build_embeddings_processor

    config, source = gemma_config(job.model.text_encoder, job.storage)
    text = getattr(config, "text_config", config)
    with torch.device("meta"):
        connectors = sum(p.numel() for p in build_embeddings_processor(
            arch.config, text.hidden_size, text.num_hidden_layers).parameters())
    weights = (gemma_parameters(config) + connectors) * element_bytes
    hidden = (text.num_hidden_layers + 1) * TEXT_TOKENS * text.hidden_size * element_bytes
    layer = TEXT_TOKENS * (3 * text.intermediate_size + 4 * text.hidden_size) * element_bytes
    return {"parameters": weights, "activations": hidden, "temporaries": layer}, _gemma_name(config), source


def _gemma_name(config) -> str:
    return "Gemma-4" if str(config.model_type).startswith("gemma4") else "Gemma-3"


def _training_use(counts, step: memory.Measured, ds_config: dict[str, Any], *, world: int,
                  element_bytes: int) -> GpuUse:
    layout = zero_layout(counts, ds_config, world=world, element_bytes=element_bytes)
    kinds = {**layout, **{k: step.kinds[k] for k in ("activations", "temporaries", "inputs")}}
    return GpuUse("training worker", kinds, _allowance(sum(kinds.values())), list(step.notes))


def estimate(job: JobConfig, *, exact_depth: bool = False, gpu_attention: bool = True,
             alternatives: bool = True) -> Estimate:
    """The per-GPU memory of the job's training workers, its rank 0 while previewing, and an encoder actor."""
    import time

    from ltx_ray.model.av2av import LoraSettings, precision_dtype
    from ltx_ray.sample.sampler import guidance_from_config

    started = time.perf_counter()
    arch, note = architecture_for(job)
    r, c = job.request, job.cluster
    dtype = precision_dtype(job.cluster.precision)
    element_bytes = torch.finfo(dtype).bits // 8
    lora = LoraSettings.from_job(job)
    counts = memory.model_counts(arch, lora)
    blocks = counts["blocks"]
    shapes = training_shapes(job, arch)
    training = memory.StepSetup(arch, shapes, lora, dtype, batch=c.micro_batch_size)

    def training_step(gradient_checkpointing: bool) -> memory.Measured:
        setup = replace(training, gradient_checkpointing=gradient_checkpointing)
        return at_depth(lambda a: memory.training_step(replace(setup, arch=a), weight_decay=job.optimizer.weight_decay,
                                                       gpu_attention=gpu_attention), arch, blocks, exact=exact_depth)

    steps = {c.gradient_checkpointing: training_step(c.gradient_checkpointing)}
    # An elastic run may shrink to its minimum: the fewest workers hold the largest shards.
    world_size = c.min_workers
    # The ZeRO settings deepspeed_config trains with (the same function, the same counts).
    settings = {stage: zero_settings(counts, stage=stage, overlap_comm=c.use_gpu) for stage in (2, 3)}
    uses = [_training_use(counts, steps[c.gradient_checkpointing], settings[c.zero_stage], world=world_size,
                          element_bytes=element_bytes)]
    others = []
    if alternatives:
        steps[not c.gradient_checkpointing] = training_step(not c.gradient_checkpointing)
        for gc in (True, False):
            for stage in (2, 3):
                for world in ((world_size,) if stage == 2 else (world_size, 2 * world_size, 4 * world_size)):
                    use = _training_use(counts, steps[gc], settings[stage], world=world,
                                        element_bytes=element_bytes)
                    others.append({"zero_stage": stage, "gradient_checkpointing": gc, "num_workers": world,
                                   "peak": use.total})

    with torch.device("meta"):
        depth_probe = memory.build_transformer(with_depth(arch, 1), dtype=dtype)
    guidance = guidance_from_config(job, depth_probe)
    passes = len(guidance.passes) if guidance.batched else 1
    pshapes = preview_shapes(job, arch)
    if r.validation:
        previewing = memory.StepSetup(arch, pshapes, lora, dtype, batch=passes)
        preview = at_depth(lambda a: memory.preview_step(replace(previewing, arch=a), gpu_attention=gpu_attention),
                           arch, blocks, exact=exact_depth)
        resident = zero_layout(counts, settings[c.zero_stage], world=world_size, element_bytes=element_bytes,
                               between_steps=True)
        kinds = {**resident, **{k: preview.kinds[k] for k in ("activations", "temporaries", "inputs")}}
        uses.append(GpuUse("previewing rank 0", kinds, _allowance(sum(kinds.values())),
                           [f"{passes} guidance pass(es) per step as one batch"] + preview.notes))

    encoders = memory.encoder_step(arch, shapes, dtype=dtype)
    gemma, gemma_name, gemma_source = _gemma_use(job, arch, shapes, element_bytes)
    enc = {k: encoders.kinds.get(k, 0) + gemma.get(k, 0) for k in ("parameters", "activations", "temporaries",
                                                                    "inputs")}
    uses.append(GpuUse("encoder actor", enc, _allowance(sum(enc.values())),
                       [f"VAE encoders on one pair (measured) + {gemma_name} and connectors",
                        f"{gemma_name} sizes from {gemma_source}"]))

    return Estimate(
        architecture=arch.source, architecture_note=note,
        counts=counts,
        tokens=shapes.tokens, preview_tokens=pshapes.tokens,
        settings={"zero_stage": c.zero_stage, "world_size": world_size, "micro_batch_size": c.micro_batch_size,
                  "gradient_checkpointing": c.gradient_checkpointing, "precision": c.precision,
                  "gpu_attention": gpu_attention, "rank": r.rank, "deepspeed": settings[c.zero_stage]},
        uses=uses, alternatives=others, seconds=time.perf_counter() - started,
    )


def format_table(est: Estimate) -> str:
    """The estimate as a person reads it: GiB per GPU by kind for each GPU user, then the peak."""
    s = est.settings
    lines = [f"architecture: {est.architecture}"]
    if est.architecture_note:
        lines.append(f"  (checkpoint header not read: {est.architecture_note})")
    c = est.counts
    lines += [
        f"transformer: {c['base_parameters'] / 1e9:.2f} B base parameters in {c['blocks']} blocks; LoRA rank "
        f"{s['rank']}: {c['trainable_parameters'] / 1e6:.1f} M trainable in {c['lora_layers']} layers",
        "tokens per sample: " + ", ".join(f"{k} {v:,}" for k, v in est.tokens.items())
        + "; previews: " + ", ".join(f"{k} {v:,}" for k, v in est.preview_tokens.items() if k != "text"),
        f"ZeRO-{s['zero_stage']} over {s['world_size']} GPU(s), micro-batch {s['micro_batch_size']}, "
        f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, {s['precision']}, "
        f"attention {'as a GPU fused kernel holds it' if s['gpu_attention'] else 'as CPU SDPA runs it'}",
        _deepspeed_line(s["deepspeed"]),
        "",
    ]
    kinds = list(dict.fromkeys(k for u in est.uses for k in u.kinds))
    names = [u.name for u in est.uses]
    width = max(16, *(len(n) + 2 for n in names))
    lines.append(f"{'GiB per GPU':<18}" + "".join(f"{n:>{width}}" for n in names))
    for k in kinds:
        lines.append(f"{k:<18}" + "".join(f"{u.kinds.get(k, 0) / GIB:>{width}.2f}" for u in est.uses))
    lines.append(f"{'allowance':<18}" + "".join(f"{u.allowance / GIB:>{width}.2f}" for u in est.uses))
    lines.append(f"{'peak':<18}" + "".join(f"{u.total / GIB:>{width}.2f}" for u in est.uses))
    lines.append("")
    for u in est.uses:
        for n in u.notes:
            lines.append(f"{u.name}: {n}")
    if est.alternatives:
        lines.append("training worker under other settings (GiB per GPU):")
        for a in est.alternatives:
            lines.append(f"  ZeRO-{a['zero_stage']}, gradient checkpointing {'on ' if a['gradient_checkpointing'] else 'off'}"
                         f", {a['num_workers']:>4} workers: {a['peak'] / GIB:7.2f}")
    lines.append(f"allowance: {FIXED_ALLOWANCE / GIB:.1f} GiB (CUDA context, cuBLAS, NCCL) + "
                 f"{FRAGMENTATION:.0%} of the modelled peak (allocator fragmentation)")
    lines.append(f"peak per GPU: {est.peak / GIB:.2f} GiB  (estimated in {est.seconds:.0f} s)")
    return "\n".join(lines)


def _deepspeed_line(ds: dict[str, Any]) -> str:
    zero = ds["zero_optimization"]
    line = (f"DeepSpeed: reduce bucket {zero['reduce_bucket_size'] / 1e6:.1f} M elements"
            f"{' (double-buffered)' if zero['overlap_comm'] and zero['stage'] == 2 else ''}, gradients reduced in "
            f"{ds['communication_data_type']} and accumulated in {ds['data_types']['grad_accum_dtype']}")
    if zero["stage"] == 3:
        line += (f"; parameters under {zero['stage3_param_persistence_threshold'] / 1e6:.1f} M elements whole on "
                 f"every rank, prefetch {zero['stage3_prefetch_bucket_size'] / 1e6:.0f} M elements")
    return line


def as_json(est: Estimate) -> str:
    return json.dumps(est.to_json(), indent=2)
