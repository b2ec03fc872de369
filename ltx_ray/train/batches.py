"""Batches for each optimizer step, from the cached latents.

The samples are numbered in the manifest's (pair index) order, and a run draws
them from a permutation per epoch seeded by (seed, epoch). A step trains on
`global_batch_size` samples whatever the world size: the sample at each place of
the global batch, and the noise it gets, are pure functions of (seed, step,
place), never of rank or world size. A resumed run, on any number of workers,
continues with exactly the batches an uninterrupted run would have seen, which
Ray Data's streaming split (whose block order depends on timing) cannot promise.
A worker reads only the samples of its own places, by number
(`ltx_ray.latents.reader.LatentReader`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import torch

from ltx_ray.latents.cache import LATENT_TENSORS


def micro_batch_positions(*, micro_step: int, rank: int, world_size: int, micro_batch_size: int) -> list[int]:
    """Places in the step's global batch (0 .. global_batch_size - 1) that a rank trains at one micro-step.

    The global batch is cut into micro-batches; micro-step m of rank r takes the
    (m * world_size + r)-th. Any world size with its accumulation covers every
    place exactly once.
    """
    first = (micro_step * world_size + rank) * micro_batch_size
    return list(range(first, first + micro_batch_size))


def sample_indices(num_samples: int, *, seed: int, step: int, positions: list[int],
                   global_batch_size: int) -> list[int]:
    """Samples at `positions` of optimizer step `step`: the run reads epoch permutations back to back."""
    out = []
    for position in positions:
        epoch, offset = divmod(step * global_batch_size + position, num_samples)
        out.append(_epoch_permutation(num_samples, seed, epoch)[offset])
    return out


def noise_generators(seed: int, step: int, positions: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per sample for its σ and ε, seeded by (seed, step, place in the global batch) only."""
    return [torch.Generator(device=device).manual_seed(_noise_seed(seed, step, p)) for p in positions]


def _noise_seed(seed: int, step: int, position: int) -> int:
    digest = hashlib.blake2b(f"ltx-ray-noise:{seed}:{step}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())  # Python ints: indexing them reads no tensor


def collate(samples: Sequence[dict[str, torch.Tensor]], indices: list[int], device: torch.device,
            dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Stack the chosen samples into a batch on `device`; latents and contexts in `dtype`; the context mask
    stays on the host."""
    batch = {}
    for col in LATENT_TENSORS:
        stacked = torch.stack([samples[i][col] for i in indices])
        if col == "context_mask":
            # `model.tokens` reads it on the host (reading a device tensor would stall the GPU's queue), drops
            # it when it masks nothing, so attention may take its flash kernel, and moves it otherwise.
            batch[col] = stacked
        else:
            batch[col] = stacked.to(device=device, dtype=dtype)
    return batch


def epoch_of(step: int, num_samples: int, global_batch_size: int) -> int:
    """The epoch a step's first sample belongs to (for logging and the checkpoint's data position)."""
    return (step * global_batch_size) // num_samples
