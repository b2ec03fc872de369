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

from ltx_ray import console
from ltx_ray.config.schema import JobConfig
from ltx_ray.errors import Problem
from ltx_ray.latents.reader import LatentIndex, LatentReader
from ltx_ray.train.trainer import RunSetup, Trainer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train the IC-LoRA for exactly `number_of_steps` optimizer steps (Ray Train entry point).

    `config`: `setup` (the driver's `RunSetup`), `outcome` (the driver's error-report actor), `latents`
    (the `LatentIndex` of the samples trained on) and `eval_latents` (the held-out evaluation's, by split).
    """
    console.setup_worker()
    setup: RunSetup = config["setup"]
    context = RayWorkerContext(config["outcome"], config["latents"], setup.job, config.get("eval_latents"))
    if context.rank == 0:
        print(f"ltx-ray: {context.world_size} training worker(s) started ({context.device.type}, DeepSpeed "
              f"ZeRO-{setup.job.cluster.zero_stage})", flush=True)
    Trainer(setup, context).train()


class RayWorkerContext:
    """A Ray Train worker as the trainer sees it (`ltx_ray.train.context.WorkerContext`)."""

    def __init__(self, outcome, latents: LatentIndex, job: JobConfig,
                 eval_latents: dict[str, LatentIndex] | None = None):
        ctx = ray.train.get_context()
        self.rank, self.world_size, self.local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        # The device Ray Train assigned this worker (its GPU under use_gpu, else the CPU); never picked by hand.
        self.device: torch.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._outcome, self._latents, self._job, self._eval_latents = outcome, latents, job, eval_latents

    def latent_samples(self) -> LatentReader:
        """The cached latent samples, read from storage as this worker's places in the steps need them."""
        c = self._job.cluster
        # This step's samples and the next's, read while this one trains: the most a step needs at once.
        per_step = c.micro_batch_size * c.accumulation_steps(self.world_size)
        return LatentReader(self._latents, self._job.storage, capacity=2 * per_step)

    def eval_samples(self) -> dict[str, LatentReader] | None:
        """The held-out evaluation's samples by split: few, each read once and held for the run."""
        if not self._eval_latents:
            return None
        readers = {split: LatentReader(index, self._job.storage, capacity=max(1, len(index)))
                   for split, index in self._eval_latents.items()}
        for reader in readers.values():
            reader.prefetch(range(len(reader)))  # in the background, a shard read once for its samples
        return readers

    def preemption_announced(self) -> bool:
        """Whether Ray has announced that a node of this worker group is going (a drain with a deadline)."""
        return ray.train.get_preemption_info() is not None

    def report_failure(self, problems: list[Problem] | Problem) -> None:
        """Tell the driver why the run stops (its `_Outcome` actor), so it exits 2 with these problems."""
        ray.get(self._outcome.fail.remote(problems))
