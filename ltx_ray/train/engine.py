"""The one place the model, its LoRA and DeepSpeed are put together into a training engine."""

from __future__ import annotations

import os

import torch

from ltx_ray.config.schema import JobConfig
from ltx_ray.model.loader import load_transformer
from ltx_ray.model.av2av import LoraSettings, trainable_lora_model
from ltx_ray.train import zero3
from ltx_ray.train.deepspeed_config import deepspeed_accelerator, deepspeed_config, lr_lambda


def build_engine(job: JobConfig, checkpoint_path: str | torch.nn.Module, world: int, device: torch.device,
                 dtype: torch.dtype):
    """The transformer from `checkpoint_path` with the job's LoRA, in a DeepSpeed engine, in train mode.

    `checkpoint_path` may instead be a transformer already built on `device` in `dtype` (ZeRO-1/2 only:
    the GPU check's real-width blocks, which have no checkpoint file).
    Every rank of an initialised process group calls it (ZeRO-3 loads partitioned; DeepSpeed's
    initialisation is a collective). Gradient checkpointing, when the job asks for it, is active:
    ltx-core recomputes a block in backward only `if self._enable_gradient_checkpointing and
    self.training` — the loaders return eval-mode modules and DeepSpeed never calls `.train()`.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator().device_name()
    if accelerator != deepspeed_accelerator(job):
        raise RuntimeError(f"DeepSpeed chose its {accelerator!r} accelerator but cluster.use_gpu={job.cluster.use_gpu} "
                           f"needs {deepspeed_accelerator(job)!r} (DS_ACCELERATOR in this worker: "
                           f"{os.environ.get('DS_ACCELERATOR')!r})")
    # Same seed on every rank, so the LoRA starts identical everywhere.
    torch.manual_seed(job.seed)
    ds_config = deepspeed_config(job, world)
    if isinstance(checkpoint_path, torch.nn.Module):
        if job.cluster.zero_stage == 3:
            raise ValueError("ZeRO-3 builds its transformer partitioned from a checkpoint file, not a built module")
        transformer = checkpoint_path
    elif job.cluster.zero_stage == 3:
        # Partitioned as it loads: no rank ever holds the whole base model.
        transformer = zero3.load_transformer_zero3(checkpoint_path, ds_config, dtype=dtype)
    else:
        transformer = load_transformer(checkpoint_path, dtype=dtype, device=device)
    # DeepSpeed does not cast a model built under zero.Init: the adapters follow the base.
    model = trainable_lora_model(transformer, LoraSettings.from_job(job),
                                 gradient_checkpointing=job.cluster.gradient_checkpointing, dtype=dtype, device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(job)),
        config=ds_config,
    )
    engine.train()  # recursively: the LTXModel inside the PEFT wrapper too (see above)
    return engine
