"""What a training worker needs from whoever launched it: its place, its device, its data, and two signals.

`Trainer` (ltx_ray.train.trainer) asks only this interface, so the same training code runs under
Ray Train (`ltx_ray.train.loop.RayWorkerContext`) and on a plain `torch.distributed` group
(`DistContext`: env:// rendezvous as torchrun sets it, for the GPU check and the tests that need no Ray).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist

from ltx_ray.errors import Problem


class WorkerContext(Protocol):
    """This worker's place in the worker group, its training device and its latent samples."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    def latent_samples(self) -> Sequence[dict[str, Any]]:
        """The run's cached latent samples, by number (the trainer draws its batches from them by index): a
        `ltx_ray.latents.reader.LatentReader`, which reads a sample when it is asked for, or a list."""

    def eval_samples(self) -> dict[str, Sequence[dict[str, Any]]] | None:
        """The held-out evaluation's samples by split (`holdout`, `train`: a fixed sample of the training pairs;
        `ltx_ray.train.evaluation`), or None when the run holds no pair out."""

    def preemption_announced(self) -> bool:
        """Whether this worker has heard that a node of the group is about to go (ranks may hear at different times)."""

    def report_failure(self, problems: list[Problem] | Problem) -> None:
        """Tell whoever started the run that it stops for a reason no retry can fix."""


def process_group_backend(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise (NCCL has no CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


class DistContext:
    """A worker of a plain `torch.distributed` group: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the
    environment (torchrun's), the process group initialised here when it is not already.

    `samples` are the run's latent samples (a list, or a `LatentReader` of a cache), `eval_samples` the held-out
    evaluation's by split (default: none); `preemption` says whether a node is going (default: never);
    failures reported by the trainer are kept in `failures`.
    """

    def __init__(self, samples: Sequence[dict[str, Any]], *, use_gpu: bool, timeout_s: float = 1800.0,
                 preemption: Callable[[], bool] = lambda: False,
                 eval_samples: dict[str, Sequence[dict[str, Any]]] | None = None):
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_gpu:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(process_group_backend(self.device), init_method="env://",
                                    timeout=datetime.timedelta(seconds=timeout_s),
                                    device_id=self.device if use_gpu else None)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._samples, self._preemption, self._eval_samples = samples, preemption, eval_samples
        self.failures: list[Problem] = []

    def latent_samples(self) -> Sequence[dict[str, Any]]:
        return self._samples

    def eval_samples(self) -> dict[str, Sequence[dict[str, Any]]] | None:
        return self._eval_samples

    def preemption_announced(self) -> bool:
        return bool(self._preemption())

    def report_failure(self, problems: list[Problem] | Problem) -> None:
        self.failures += problems if isinstance(problems, list) else [problems]
