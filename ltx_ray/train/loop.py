"""The Ray Train worker: the `Trainer` (ltx_ray.train.trainer) over this worker's Ray calls, all of them here.

`train_loop_per_worker` is what `TorchTrainer` runs on every worker; `RayWorkerContext` answers the
trainer's questions (its place and device, its latent samples, a preemption notice, a failure
report) from Ray Train.
"""

from __future__ import annotations

from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from ltx_ray.latents.pipeline import UnpackLatents
from ltx_ray.errors import Problem
from ltx_ray.train import batches
from ltx_ray.train.trainer import RunSetup, Trainer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train the IC-LoRA for exactly `number_of_steps` optimizer steps (Ray Train entry point).

    `config`: `setup` (the driver's `RunSetup`) and `outcome` (the driver's error-report actor).
    """
    setup: RunSetup = config["setup"]
    Trainer(setup, RayWorkerContext(config["outcome"])).train()


class RayWorkerContext:
    """A Ray Train worker as the trainer sees it (`ltx_ray.train.context.WorkerContext`)."""

    def __init__(self, outcome):
        ctx = ray.train.get_context()
        self.rank, self.world_size, self.local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        # The device Ray Train assigned this worker (its GPU under use_gpu, else the CPU); never picked by hand.
        self.device: torch.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._outcome = outcome

    def latent_samples(self) -> list[dict[str, Any]]:
        """The whole cached latent set (`ltx_ray.latents.cache`), read from this worker's dataset shard."""
        return batches.load_samples(ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=16, device="cpu", collate_fn=UnpackLatents()))

    def preemption_announced(self) -> bool:
        """Whether Ray has announced that a node of this worker group is going (a drain with a deadline)."""
        return ray.train.get_preemption_info() is not None

    def report_failure(self, problems: list[Problem] | Problem) -> None:
        """Tell the driver why the run stops (its `_Outcome` actor), so it exits 2 with these problems."""
        ray.get(self._outcome.fail.remote(problems))
