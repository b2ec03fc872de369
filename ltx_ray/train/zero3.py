"""DeepSpeed ZeRO-3 where it reaches into parameters: the partitioned load and the gathers.

Under ZeRO-3 each parameter is an empty placeholder whose values live in per-rank shards
(`param.ds_tensor`, `ds_numel` elements of the flattened tensor); this module is the one place
that reads or writes them, or gathers them whole. (The optimizer's partitions, which exist at every
stage, are `ltx_ray.train.train_state`'s.) `ltx_ray.model` stays free of DeepSpeed: it names the tensors
(`transformer_blueprint`, `transformer_tensors`), this module decides which rank holds what.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from ltx_ray.errors import ModelError, Problem
from ltx_ray.model import lora
from ltx_ray.model.loader import raise_if_missing, transformer_blueprint, transformer_from_config, transformer_tensors

log = logging.getLogger(__name__)

_PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def load_transformer_zero3(checkpoint: str | Path, ds_config: dict[str, Any], *, dtype: torch.dtype = torch.float32):
    """The transformer built already partitioned for DeepSpeed ZeRO-3: no rank ever holds all of it.

    Built inside `deepspeed.zero.Init` (each module's parameters are partitioned
    across the data-parallel ranks as soon as the module exists; their random
    init is skipped), then every checkpoint tensor, a zero-copy view of the
    memory-mapped file, is narrowed to this rank's flat slice and copied into
    that parameter's shard. No collective runs while loading, and a rank touches
    only its own pages of the file. Host memory per node: the file's page cache
    (shared by the node's ranks) plus 1/world of the weights per rank.
    Call it on every rank of an initialised process group, with the same
    DeepSpeed config as `deepspeed.initialize`; `dtype` must be the precision
    that config trains in (`bf16.enabled`: bfloat16, else float32).

    The dtype is left to the config, never passed to `zero.Init`: DeepSpeed
    0.19's `Init._set_dtype` keeps a passed dtype only where the accelerator
    reports fp16 support (on CPU, oneDNN's answer, which differs between
    machines) and otherwise builds in bfloat16. Every parameter and shard is
    checked against `dtype` after the build.
    """
    import deepspeed
    import torch.distributed as dist

    configured = _deepspeed_precision(ds_config)
    if configured != dtype:
        raise ValueError(f"the DeepSpeed config trains in {_PRECISION_NAMES[configured]}, not {dtype}: "
                         "pass the dtype its precision gives (cluster.precision)")
    path, config, shapes = transformer_blueprint(checkpoint)
    # Wraps the process group Ray Train (or torchrun) set up, with that group's own backend: zero.Init
    # checks the config's batch sizes against the world size before it would initialise comms itself.
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    with _no_random_init(), deepspeed.zero.Init(config_dict_or_path=ds_config):  # dtype from the config
        model = transformer_from_config(config)
    # zero.Init partitions a module's parameters when its own __init__ returns: one added after that (LTX-2.5's
    # keyframe marker, `ltx_ray.model.transformer`) is partitioned here, as if it had been made in the context.
    deepspeed.zero.Init(module=model, config_dict_or_path=ds_config)
    params = dict(model.named_parameters())
    if set(params) != set(shapes) or any(True for _ in model.buffers()):
        # Buffers are not partitioned and nothing here would fill them: refuse rather than guess.
        raise ModelError(Problem(str(path), "this ltx-core transformer has buffers or differs from its meta twin; "
                                            "the partitioned (ZeRO-3) load does not support it"))
    wrong = sorted({str(t.dtype) for p in params.values() for t in (p, p.ds_tensor) if t.dtype != dtype})
    if wrong:  # a DeepSpeed that chooses the dtype otherwise than its config says: fail before training on it
        raise ModelError(Problem("cluster.precision", f"DeepSpeed's zero.Init built the transformer in {wrong}, "
                                                      f"not {dtype}; this DeepSpeed release is not supported"))
    filled: set[str] = set()
    for name, tensor in transformer_tensors(path):
        param = params.get(name)
        if param is None:
            continue  # the text connectors' weights live under the same prefix
        if tuple(tensor.shape) != shapes[name]:
            raise ModelError(Problem(str(path), f"{name} has shape {tuple(tensor.shape)}, "
                                                f"the model expects {shapes[name]}"))
        _fill_own_shard(param, tensor)
        filled.add(name)
    raise_if_missing(path, "transformer", set(params) - filled)  # an unfilled shard is uninitialised memory
    log.info("loaded transformer from %s partitioned for ZeRO-3 (%d tensors, %s)", path.name, len(filled), dtype)
    return model.eval()


def gathered(params: list[torch.nn.Parameter], *, written_by_rank0: bool = False):
    """A context under which ZeRO-3 parameters hold their full values (a collective: every rank enters).

    With `written_by_rank0`, what rank 0 writes into them is scattered to every rank's shard on leaving.
    """
    # ZeRO-3 replaces each parameter by an empty shard and tags it with `ds_id`.
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if written_by_rank0 else None)
    return contextlib.nullcontext()


def lora_state_dict(engine: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`ltx_ray.model.lora.lora_state_dict` of an engine at any ZeRO stage: one gather for all LoRA tensors
    (they are small, and each gather is a collective), so every rank must call it."""
    return lora.lora_state_dict(engine, gathered=gathered)


def _deepspeed_precision(ds_config: dict[str, Any]) -> torch.dtype:
    """The dtype a DeepSpeed config trains in, as `zero.Init` reads it when given no dtype."""
    if (ds_config.get("bf16") or ds_config.get("bfloat16") or {}).get("enabled"):  # DeepSpeed reads either key
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def _fill_own_shard(param, full: torch.Tensor) -> None:
    """Copy this rank's slice of the flattened `full` tensor into `param`'s ZeRO-3 shard."""
    import torch.distributed as dist

    shard = param.ds_tensor
    if getattr(shard, "final_location", None) is not None or getattr(param, "ds_secondary_tensor", None) is not None:
        raise ModelError(Problem("cluster.zero_stage", "NVMe offload and hpZ are not supported by the partitioned load"))
    size = shard.ds_numel
    start = size * dist.get_rank(group=param.ds_process_group)
    take = max(0, min(size, param.ds_numel - start))
    with torch.no_grad():
        if take:
            shard.narrow(0, 0, take).copy_(full.reshape(-1).narrow(0, start, take))
        if take < size:
            shard.narrow(0, take, size - take).zero_()  # ZeRO pads the last rank's slice


# torch.nn.init's fillers, which module constructors call through the module (`init.kaiming_uniform_`).
_INIT_FUNCTIONS = ("uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _no_random_init():
    """torch.nn.init's fillers as no-ops: every weight is overwritten by the checkpoint's right after.

    Our own rather than transformers' `no_init_weights`, which moved between its releases (4.x
    `modeling_utils`, 5.x `initialization`) and patches its own models too.
    """
    init = torch.nn.init
    originals = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}
    try:
        for name in originals:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in originals.items():
            setattr(init, name, fn)
