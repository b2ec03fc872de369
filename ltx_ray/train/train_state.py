"""The state a run resumes from, in a layout that depends on neither the world size nor the ZeRO stage.

DeepSpeed's own checkpoints are one file per rank, cut by the world size: they
resume only on the same number of workers. What a LoRA run needs is small
(the LoRA and its AdamW state), so it is gathered to rank 0 and written as one
safetensors file, `train_state.safetensors`:

    param/<name>        fp32 master weight of each trainable parameter (PEFT naming)
    exp_avg/<name>      AdamW first moment
    exp_avg_sq/<name>   AdamW second moment

and in its metadata (`ltx_ray_train_state`, JSON): the layout tag, AdamW's step
count, the LR scheduler's state and the parameter names. Any world size and
either ZeRO stage load it: each rank writes back the part of every tensor its
partition holds.

This is the one module that reaches into DeepSpeed's ZeRO optimizers (their
fp32 partitions and torch AdamW's state), and some of it through private
DeepSpeed attributes (checked against deepspeed 0.19):
- gathering: under ZeRO-3 DeepSpeed's public `safe_get_full_fp32_param` /
  `safe_get_full_optimizer_state`, one parameter at a time; under ZeRO-1/2
  each parameter's fragment of the flat partition (`_hp_mapping`), summed
  over the data-parallel group (`_dp_group`) in one all-reduce;
- loading: AdamW's state is created on the flat partitions
  (`fp32_partitioned_groups_flat`) and linked to the parameters
  (`_lazy_init_hp_params_optimizer_state`); under ZeRO-2 the public
  `safe_set_full_*` write each partition, under ZeRO-3 the optimizer's
  `_get_fp32_opt_state_partition` / `_get_param_partition_rank` /
  `_get_param_partition_group` (its own setter does not pad a last partition).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state, safe_set_full_fp32_param
from deepspeed.utils import safe_set_full_optimizer_state
from safetensors import safe_open
from safetensors.torch import save_file

from ltx_ray.train.zero3 import gathered

LAYOUT = "ltx-ray/train-state/1"
FILE = "train_state.safetensors"
METADATA_KEY = "ltx_ray_train_state"
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


class TrainStateError(RuntimeError):
    """A checkpoint whose training state this version cannot resume from."""


def _trainable(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def gather(engine) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every trainable tensor and AdamW moment in full, plus the optimizer's counters.

    A collective: every rank must call it, in the same order. Every rank
    receives the full tensors; rank 0 writes them (`save`).
    """
    trainable = _trainable(engine)
    names = [n for n, _ in trainable]
    tensors: dict[str, torch.Tensor] = {}
    for key, label in ((None, "param"), *((k, k) for k in ADAM_KEYS)):
        for name, full in zip(names, _gather_full([p for _, p in trainable], key)):
            tensors[f"{label}/{name}"] = full.detach().to("cpu", torch.float32).clone()
    meta = {
        "layout": LAYOUT,
        "adam_step": _adam_step(engine),
        "lr_scheduler": engine.lr_scheduler.state_dict(),
        "names": names,
    }
    return tensors, meta


def _gather_full(params: list[torch.nn.Parameter], key: str | None) -> list[torch.Tensor]:
    """The full fp32 master weights (key None) or one AdamW moment of `params`, on every rank.

    ZeRO-3: DeepSpeed's per-parameter all-gather. ZeRO-1/2: each rank writes the fragments its
    partition holds into one zero buffer for all parameters, and one all-reduce sums them: what
    DeepSpeed's `safe_get_full_*` do parameter by parameter, in one collective instead of one each
    (a checkpoint of the 22B model's LoRA would otherwise be ~7,000 all-reduces).
    """
    if not params or hasattr(params[0], "ds_id") or not hasattr(params[0], "_hp_mapping"):
        get = safe_get_full_fp32_param if key is None else (lambda p: safe_get_full_optimizer_state(p, key))
        return [get(p) for p in params]
    sizes = [p.numel() for p in params]
    buffer = torch.zeros(sum(sizes), dtype=torch.float32, device=params[0].device)
    offset = 0
    for p, size in zip(params, sizes):
        mapping = p._hp_mapping
        if mapping is not None:
            address = mapping.lp_fragment_address
            buffer.narrow(0, offset + address.start, address.numel).copy_(mapping.get_hp_fragment(key).flatten())
        offset += size
    dist.all_reduce(buffer, group=params[0]._dp_group)
    return [chunk.view(p.shape) for chunk, p in zip(buffer.split(sizes), params)]


def save(tensors: dict[str, torch.Tensor], meta: dict[str, Any], directory: Path) -> Path:
    path = directory / FILE
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def read(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a checkpoint's training state; refuses any other layout."""
    path = Path(directory) / FILE
    if not path.is_file():
        found = sorted(p.name for p in Path(directory).iterdir()) if Path(directory).is_dir() else []
        raise TrainStateError(
            f"{path.parent.name} has no {FILE} (found: {', '.join(found) or 'nothing'}): it was written by an "
            "earlier ltx-ray whose DeepSpeed per-rank files resume only on their own world size. Start the run "
            "afresh under another storage.run_name, or remove that run's folder from storage")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        if meta.get("layout") != LAYOUT:
            raise TrainStateError(f"{path} has training-state layout {meta.get('layout')!r}; this ltx-ray reads "
                                  f"{LAYOUT!r}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def load(engine, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put a gathered state into a freshly built engine, on any world size and ZeRO stage (every rank calls)."""
    trainable = _trainable(engine)
    names = [n for n, _ in trainable]
    if names != meta["names"]:
        missing = sorted(set(meta["names"]) ^ set(names))[:5]
        raise TrainStateError(f"the checkpoint's LoRA has other parameters than this run's model (e.g. {missing}): "
                              "request.rank and model.lora_* must be those the run started with")
    _prime_adam_state(engine, meta["adam_step"])
    optimizer = engine.optimizer
    for name, p in trainable:
        master = tensors[f"param/{name}"]
        # The working copy the forward pass reads (under ZeRO-3 scattered again on leaving the context)...
        with gathered([p], written_by_rank0=True):
            p.data.copy_(master.to(device=p.device, dtype=p.dtype).view_as(p.data))
        # ...and the fp32 master copy and AdamW moments, of which each rank holds its partition.
        _set_partition(optimizer, p, master, None)
        for key in ADAM_KEYS:
            _set_partition(optimizer, p, tensors[f"{key}/{name}"], key)
    scheduler = meta["lr_scheduler"]
    engine.lr_scheduler.load_state_dict(scheduler)
    for group, lr in zip(optimizer.param_groups, scheduler["_last_lr"]):
        group["lr"] = lr


def _adam_step(engine) -> float:
    steps = {float(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s}
    if len(steps) > 1:
        raise RuntimeError(f"AdamW parameter groups disagree on their step count: {sorted(steps)}")
    return steps.pop() if steps else 0.0


def _prime_adam_state(engine, step: float) -> None:
    """Create torch AdamW's state on each rank's fp32 partitions (it is created lazily at the first step)."""
    adam = engine.optimizer.optimizer
    # ZeRO-3 hands AdamW one sub-group at a time and leaves its param_groups empty between steps.
    flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) \
        or [flat for group in adam.param_groups for flat in group["params"]]
    for flat in flats:
        adam.state[flat] = {
            "step": torch.tensor(float(step), dtype=torch.float32),
            "exp_avg": torch.zeros_like(flat, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(flat, memory_format=torch.preserve_format),
        }
    # ZeRO-1/2 link each parameter's fragment of the flat state after the first step; link them now.
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        engine.optimizer._hp_optimizer_states_linked = False
        link()


def _set_partition(optimizer, p: torch.nn.Parameter, full: torch.Tensor, key: str | None) -> None:
    """Write this rank's partition of `full` into the fp32 master (key None) or an AdamW moment of `p`."""
    if not hasattr(p, "ds_id"):  # ZeRO-2: DeepSpeed maps the parameter onto its fragment of the flat partition
        value = full.to(torch.float32)
        if key is None:
            safe_set_full_fp32_param(p, value)
        else:
            safe_set_full_optimizer_state(p, value, key)
        return
    # ZeRO-3: DeepSpeed's setter cuts `full` without the padding of a last partition; pad it here.
    part, _ = optimizer._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
    rank = optimizer._get_param_partition_rank(p)
    padded = torch.zeros(part.numel() * dist.get_world_size(group=optimizer._get_param_partition_group(p)),
                         dtype=torch.float32)
    padded[: full.numel()] = full.flatten().to(torch.float32)
    part.data.copy_(padded.narrow(0, part.numel() * rank, part.numel()).to(part.device))
