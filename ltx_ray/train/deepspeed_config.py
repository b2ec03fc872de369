"""The DeepSpeed config generated from the job config, and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any, Callable

from ltx_ray.config.schema import JobConfig
from ltx_ray.estimate.memory import job_model_counts
from ltx_ray.estimate.zero_settings import zero_settings


def deepspeed_config(job: JobConfig, world_size: int, *, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """ZeRO stage, precision, clipping and a torch AdamW over the trainable (LoRA) parameters.

    The accumulation follows the world size of this (re)start, so a step trains on
    `cluster.global_batch_size` samples on any number of workers. ZeRO's buffers,
    and the fp32 reduction and accumulation of gradients, come from
    `ltx_ray.estimate.zero_settings`, sized from `counts` (`memory.model_counts` of the
    job's transformer and LoRA; read from `model.checkpoint`'s header when not given),
    the same settings `ltx-ray estimate` lays out.
    """
    c, o = job.cluster, job.optimizer
    if counts is None:
        counts = job_model_counts(job)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": c.micro_batch_size,
        "gradient_accumulation_steps": c.accumulation_steps(world_size),
        "train_batch_size": c.global_batch_size,
        "gradient_clipping": o.max_grad_norm,
        **zero_settings(counts, stage=c.zero_stage, overlap_comm=c.use_gpu),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": job.request.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": o.weight_decay,
                # The fused/CPU-Adam C++ kernels need a compiler toolchain per node;
                # torch's AdamW works everywhere and the LoRA optimizer state is small.
                "torch_adam": True,
            },
        },
        "bf16": {"enabled": c.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    # No DeepSpeed checkpointing is configured: the engine's own `save_checkpoint`/`save_16bit_model` are never
    # called. Checkpoints are `train.checkpoint`'s (the state gathered by `train.train_state`), and the LoRA file is
    # `model.lora.export_lora`'s.
    return cfg


def deepspeed_accelerator(job: JobConfig) -> str:
    """The DeepSpeed accelerator the training workers use: the job's device, not the machine's guess.

    Unset, DeepSpeed picks CUDA wherever torch sees a GPU (a CPU job on a GPU
    host would then put its engine on `cuda:0`), and its choice is cached at
    the first import. The driver sets it in the workers' environment
    (`DS_ACCELERATOR`, before they import DeepSpeed); the loop checks it.
    """
    return "cuda" if job.cluster.use_gpu else "cpu"


# ltx-trainer's linear schedule: LinearLR(start_factor=1.0, end_factor=0.1, total_iters=steps).
LINEAR_END_FACTOR = 0.1


def lr_lambda(job: JobConfig) -> Callable[[int], float]:
    """Multiplier of the base learning rate at an optimizer step: warmup, then constant/linear/cosine.

    linear: from 1 to `LINEAR_END_FACTOR` over the steps after warmup (torch's `LinearLR`
    as the official recipe builds it); cosine: from 1 to 0 (`CosineAnnealingLR`).
    """
    total = job.request.number_of_steps
    warmup = min(job.optimizer.warmup_steps, total)
    kind = job.optimizer.lr_scheduler

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return 1.0 - (1.0 - LINEAR_END_FACTOR) * min(1.0, progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn
