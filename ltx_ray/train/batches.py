"""Batches for each optimizer step, from the cached latents.

Every worker reads the whole (small) latent dataset once from its Ray Data
shard, sorts it by pair name, and then draws batches from a permutation per
epoch seeded by (seed, epoch). Which samples a rank sees at a step is thus a
pure function of (seed, step, rank): a resumed run continues with exactly the
batches an uninterrupted run would have seen, which Ray Data's streaming
split (whose block order depends on timing) cannot promise.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from ltx_ray.data.pipeline import LATENT_COLUMNS as TENSOR_COLUMNS, unpack_tensors


class UnpackLatents(NumpyBatchCollateFn):
    """`collate_fn` for `iter_torch_batches`: the cached safetensors blobs as stacked tensors."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        rows = [unpack_tensors(blob) for blob in batch["latents"]]
        out = {col: torch.stack([r[col] for r in rows]) for col in TENSOR_COLUMNS}
        out["index"] = torch.tensor(np.array(batch["index"], dtype=np.int64))
        return out


def load_samples(batches: Iterable[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Split the batches of a dataset shard into per-sample dicts, in the manifest's (name) order."""
    samples = []
    for batch in batches:
        for i, index in enumerate(batch["index"].tolist()):
            sample = {col: batch[col][i] for col in TENSOR_COLUMNS}
            sample["index"] = index
            samples.append(sample)
    samples.sort(key=lambda s: s["index"])
    if not samples:
        raise RuntimeError("the training dataset shard is empty")
    return samples


def sample_indices(num_samples: int, *, seed: int, step: int, micro_step: int, rank: int, world_size: int,
                   micro_batch_size: int, accumulation_steps: int) -> list[int]:
    """Indices of the samples a rank trains on at one micro-step of one optimizer step."""
    per_step = world_size * accumulation_steps * micro_batch_size
    first = step * per_step + (micro_step * world_size + rank) * micro_batch_size
    out = []
    for position in range(first, first + micro_batch_size):
        epoch, offset = divmod(position, num_samples)
        out.append(int(_epoch_permutation(num_samples, seed, epoch)[offset]))
    return out


@lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def collate(samples: list[dict[str, torch.Tensor]], indices: list[int], device: torch.device,
            dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Stack the chosen samples into a batch on `device`; latents and contexts in `dtype`."""
    batch = {}
    for col in TENSOR_COLUMNS:
        stacked = torch.stack([samples[i][col] for i in indices])
        if col == "context_mask":
            batch[col] = stacked.to(device)
        else:
            batch[col] = stacked.to(device=device, dtype=dtype)
    return batch


def epoch_of(step: int, num_samples: int, world_size: int, micro_batch_size: int, accumulation_steps: int) -> int:
    """The epoch a step's first sample belongs to (for logging and the checkpoint's data position)."""
    return (step * world_size * micro_batch_size * accumulation_steps) // num_samples
