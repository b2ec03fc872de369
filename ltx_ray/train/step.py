"""One optimizer step: its micro-batches through the av2av loss and backward, and the step's figures.

A step trains on the run's `global_batch_size` samples whatever the world size: each rank runs
`accumulation` micro-steps of `micro_batch_size` samples (`ltx_ray.train.batches` says which),
and DeepSpeed steps the optimizer once, at the last of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ltx_ray.config.schema import JobConfig
from ltx_ray.model.av2av import ReferenceScaling
from ltx_ray.model.objective import av2av_loss
from ltx_ray.train import batches

# Averaged over micro-steps, then over ranks in one all-reduce.
_AVERAGED = ("loss", "video_loss", "audio_loss", "sigma_video", "sigma_audio")


@dataclass
class StepMetrics:
    """What one optimizer step did, as logged (`logged()`), and whether any rank's storage has failed."""

    loss: float
    video_loss: float
    audio_loss: float
    sigma_video: float
    sigma_audio: float
    learning_rate: float
    grad_norm: float
    step_time: float  # from the step's start to after its all-reduce: everything but logging
    data_time: float  # of which collating batches
    samples_per_second: float
    world_size: int
    tokens_per_second: float
    memory_peak_gib: float = 0.0  # set by the trainer: the step's peak memory (`memory/peak_gib`)
    # Rank 0's checkpoint writer has failed for good: known to every rank after the same all-reduce,
    # so all of them stop together.
    storage_failed: bool = False

    def logged(self) -> dict[str, float]:
        out = asdict(self)
        del out["storage_failed"]
        out["memory/peak_gib"] = out.pop("memory_peak_gib")
        return out


@dataclass(frozen=True)
class StepShape:
    """How this (re)start of the run cuts a step: its world size and the accumulation that gives."""

    rank: int
    world: int
    accumulation: int
    micro_batch_size: int
    global_batch_size: int


def rank_samples(num_samples: int, seed: int, step: int, shape: StepShape) -> list[int]:
    """The samples this rank trains on in optimizer step `step`, micro-step by micro-step."""
    positions = [p for micro in range(shape.accumulation)
                 for p in batches.micro_batch_positions(micro_step=micro, rank=shape.rank, world_size=shape.world,
                                                        micro_batch_size=shape.micro_batch_size)]
    return batches.sample_indices(num_samples, seed=seed, step=step, positions=positions,
                                  global_batch_size=shape.global_batch_size)


def read_ahead(samples: Sequence[dict[str, Any]], job: JobConfig, step: int, shape: StepShape) -> None:
    """Name this step's samples and the next's to a reader of the cache (`ltx_ray.latents.reader`), which reads
    the next's in the background while this step trains; an in-memory list has nothing to read."""
    prefetch = getattr(samples, "prefetch", None)
    if prefetch is None:
        return
    # This step's first: those already held count as just used, so reading the next's never evicts them.
    for s in range(step, min(step + 2, job.request.number_of_steps)):
        prefetch(rank_samples(len(samples), job.seed, s, shape))


def train_step(engine, samples: Sequence[dict[str, Any]], job: JobConfig, step: int, shape: StepShape,
               device: torch.device, dtype: torch.dtype, *, storage_failed: bool = False,
               before_micro_step: Callable[[], None] = lambda: None) -> StepMetrics:
    """Run optimizer step `step` (0-based) on this rank; every rank calls it (it ends in an all-reduce).

    `before_micro_step` runs before each micro-step (the loop's preemption check: a step of a large
    run takes minutes). `storage_failed` is this rank's word on its checkpoint writer.
    """
    started = time.perf_counter()
    data_seconds, tokens = 0.0, 0
    # Summed on the device: reading a loss (`.item()`, `float()`) is a host sync, which would stall the
    # GPU's queue at every micro-step. The step's figures cross to the host once, after its all-reduce.
    sums = torch.zeros(len(_AVERAGED), dtype=torch.float32, device=device)
    read_ahead(samples, job, step, shape)
    for micro in range(shape.accumulation):
        before_micro_step()
        t = time.perf_counter()
        positions = batches.micro_batch_positions(micro_step=micro, rank=shape.rank, world_size=shape.world,
                                                  micro_batch_size=shape.micro_batch_size)
        idx = batches.sample_indices(len(samples), seed=job.seed, step=step, positions=positions,
                                     global_batch_size=shape.global_batch_size)
        batch = batches.collate(samples, idx, device, dtype)
        data_seconds += time.perf_counter() - t
        loss, m = av2av_loss(engine, batch, batches.noise_generators(job.seed, step, positions, device),
                             ReferenceScaling.from_request(job.request))
        engine.backward(loss)
        # Called every micro-step, as DeepSpeed wants it: it counts them, and steps the optimizer (and
        # zeroes the gradients) only at the accumulation boundary, the last micro-step.
        engine.step()
        sums += torch.stack([loss.detach().float(), *(m[name].float() for name in _AVERAGED[1:])])
        tokens += m["video_tokens"] + m["audio_tokens"]  # Python ints: shapes, no sync
    averaged, grad_norm, storage_failed = _mean_over_ranks(
        sums / shape.accumulation, _as_tensor(engine.get_global_grad_norm(), device), storage_failed, shape.world)
    seconds = time.perf_counter() - started
    return StepMetrics(
        **averaged,
        learning_rate=float(engine.get_lr()[0]),
        grad_norm=grad_norm,
        step_time=seconds,
        data_time=data_seconds,
        samples_per_second=shape.global_batch_size / seconds,
        world_size=shape.world,
        tokens_per_second=tokens * shape.world / seconds,
        storage_failed=storage_failed,
    )


def _as_tensor(value, device: torch.device) -> torch.Tensor:
    """DeepSpeed's global gradient norm (a tensor on the device, a float, or None before any step) as a
    one-element float32 tensor on `device`."""
    if value is None:
        return torch.zeros(1, dtype=torch.float32, device=device)
    return torch.as_tensor(value, dtype=torch.float32, device=device).reshape(1)


def _mean_over_ranks(sums: torch.Tensor, grad_norm: torch.Tensor, flag: bool,
                     world: int) -> tuple[dict[str, float], float, bool]:
    """Each of `_AVERAGED`'s mean over the ranks, the (already global) gradient norm, and whether any rank
    raised `flag`: one all-reduce on the training device (NCCL has no CPU tensors), one transfer to the host."""
    packed = torch.cat([sums, torch.tensor([float(flag)], dtype=torch.float32, device=sums.device)])
    if dist.is_initialized():
        dist.all_reduce(packed)
        packed /= world
    values = torch.cat([packed, grad_norm]).tolist()  # the step's one device-to-host transfer
    return dict(zip(_AVERAGED, values[:len(_AVERAGED)])), values[-1], values[-2] > 0
