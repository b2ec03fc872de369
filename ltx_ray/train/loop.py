"""The training loop each Ray Train worker runs: plain PyTorch + DeepSpeed, and four Ray calls.

Read top to bottom, `_train` is the story of a run: build the model with its LoRA, wrapped in a
DeepSpeed engine; load the cached latents; resume from the newest verified checkpoint (written on
any world size); then for every optimizer step `train_step` (batch -> av2av loss -> backward ->
step), its metrics logged, previews and checkpoints when `should_preview` / `should_checkpoint`
say so, and a just-in-time checkpoint when a node's preemption is announced. The Ray calls are
fenced in the last section of this file, each named for what it asks.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import deepspeed
import ray
import ray.train
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from ltx_ray import tempdirs
from ltx_ray.config.schema import JobConfig
from ltx_ray.model.loader import load_transformer
from ltx_ray.model.lora import apply_lora
from ltx_ray.storage import upload
from ltx_ray.train import batches, train_state, zero3
from ltx_ray.train.checkpoint import CheckpointWriter, restore
from ltx_ray.train.deepspeed_config import deepspeed_accelerator, deepspeed_config, lr_lambda
from ltx_ray.train.outputs import outputs_uri
from ltx_ray.train.step import StepShape, train_step
from ltx_ray.train.tracking import Tracker

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train the IC-LoRA for exactly `number_of_steps` optimizer steps (Ray Train entry point)."""
    tempdirs.sweep()  # folders of this node's workers that were killed outright
    rank, _, _ = _worker_place()
    try:
        _train(config)
    finally:
        tempdirs.remove_all()
        if rank == 0:
            from ltx_ray.sample.preview import local_preview_dir

            shutil.rmtree(local_preview_dir(config["run_name"]), ignore_errors=True)


def should_preview(job: JobConfig, done: int) -> bool:
    """A validation preview after `done` steps: every `validation_every`, and after the last."""
    return done % job.train.validation_every == 0 or done == job.request.number_of_steps


def should_checkpoint(job: JobConfig, done: int) -> bool:
    """A checkpoint after `done` steps: every `checkpoint_every`, and the final one."""
    return done % job.train.checkpoint_every == 0 or done == job.request.number_of_steps


def _train(config: dict[str, Any]) -> None:
    job: JobConfig = config["job"]
    run, total = config["run_name"], job.request.number_of_steps
    rank, world, local_rank = _worker_place()
    device, dtype = _device_and_dtype(job, local_rank)
    engine = _build_engine(job, config["checkpoint_path"], world, device, dtype)
    samples = batches.load_samples(_latent_batches())
    c = job.cluster
    # The global batch is the run's; this (re)start's world size only sets how it is accumulated.
    shape = StepShape(rank=rank, world=world, accumulation=c.accumulation_steps(world),
                      micro_batch_size=c.micro_batch_size, global_batch_size=c.global_batch_size)
    start = _resume(engine, job, run, rank, world)
    tracker = Tracker(job, run, Path(config["wandb_dir"]), enabled=rank == 0)
    progress = _progress_bar(rank, start, total)
    previewer = _previewer(job, config, rank, device, dtype)
    writer = CheckpointWriter(job, run) if rank == 0 else None
    saved_step, preemption_saved = start, False  # the newest step whose state is in storage

    def checkpoint(done: int, reason: str) -> None:
        tensors, meta = train_state.gather(engine)  # collective
        lora = zero3.lora_state_dict(engine)  # collective under ZeRO-3
        if writer is not None:
            writer.submit(tensors, meta, lora, config["lora_metadata"], state={
                "step": done, "data_position": {"epoch": batches.epoch_of(done, len(samples), shape.global_batch_size),
                                                "samples_seen": done * shape.global_batch_size},
                "seed": job.seed, "global_batch_size": shape.global_batch_size, "world_size": world,
                "resumed_from": start, "reason": reason})

    def on_preemption_notice(step: int) -> None:
        # A node of this run is about to go (a spot reclaim, a drain): every rank learns it at the same
        # call, at every micro-step, for a step of a large run takes minutes. Until the accumulation
        # boundary the weights and AdamW state are the last completed step's: a just-in-time checkpoint
        # holds that step, and the restarted run redoes at most the steps since the notice.
        nonlocal saved_step, preemption_saved
        if preemption_saved or not _preemption_announced():
            return
        preemption_saved = True
        tracker.flush()  # the steps logged so far must outlive the node too: the restart redoes none of them
        if saved_step != step:
            if rank == 0:
                print(f"ltx-ray: a node of this run is being preempted: checkpointing step {step} now", flush=True)
            checkpoint(step, "preemption")
            saved_step = step

    for step in range(start, total):
        metrics = train_step(engine, samples, job, step, shape, device, dtype,
                             storage_failed=writer is not None and writer.error is not None,
                             before_micro_step=lambda: on_preemption_notice(step))
        done = step + 1
        _maybe_fail(job, done, start, rank)
        if metrics.storage_failed:
            break  # every rank learned it in the step's all-reduce; rank 0 reports the error below
        tracker.log(metrics.logged(), step=done)
        if progress is not None:
            progress.set_postfix(loss=f"{metrics.loss:.4f}", s_per_step=f"{metrics.step_time:.2f}")
            progress.update(1)
        if previewer is not None and should_preview(job, done):
            _preview(previewer, engine, job, run, done, final=done == total, tracker=tracker)
        if should_checkpoint(job, done):
            checkpoint(done, "final" if done == total else "interval")
            saved_step = done

    if progress is not None:
        progress.close()
    if writer is not None:
        writer.wait()
        if writer.error is not None:
            # Ends the run without a retry: a permanent storage error fails the same way on every attempt.
            _report_failure(config, writer.error.problems)
            tracker.finish()
            return
    wandb_run_dir = tracker.finish()
    if wandb_run_dir is not None:
        upload(wandb_run_dir, outputs_uri(job, run, "wandb"), job.storage)


def _device_and_dtype(job: JobConfig, local_rank: int) -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda", local_rank) if job.cluster.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # As many intra-op threads as the worker was given CPUs: more oversubscribes the node.
    torch.set_num_threads(max(1, int(job.cluster.resources_per_worker.get("CPU", 1))))
    return device, torch.bfloat16 if job.cluster.precision == "bf16" else torch.float32


def _resume(engine, job: JobConfig, run: str, rank: int, world: int) -> int:
    """Load the newest verified checkpoint into the engine, if any; the step to go on from."""
    resumed = restore(engine, job, run, rank)
    if not resumed:
        return 0
    start, total = int(resumed["step"]), job.request.number_of_steps
    if rank == 0:
        print(f"ltx-ray: resuming from step {start} of {total} on {world} worker(s) (checkpoint written on "
              f"{resumed.get('world_size', '?')}, reason: {resumed.get('reason', '?')})", flush=True)
        if start >= total:
            print("ltx-ray: this run is already complete; publishing its outputs again", flush=True)
    return start


def _previewer(job: JobConfig, config: dict[str, Any], rank: int, device: torch.device, dtype: torch.dtype):
    """The validation previewer, on the ranks that take part in sampling (None without validation)."""
    uri = config.get("validation_file")
    if not uri or not (rank == 0 or job.cluster.zero_stage == 3):
        return None if not uri else _Bystander()
    from ltx_ray.data.fetch import fetch
    from ltx_ray.sample.preview import Previewer

    local = fetch(uri, tempdirs.make("val"), storage=job.storage)
    return Previewer(job, local, rank, device, dtype)


class _Bystander:
    """A ZeRO-2 rank other than 0 while rank 0 samples a preview: it waits for it at the barrier.

    Under ZeRO-2 every rank holds the whole model, so rank 0 samples alone (under ZeRO-3 sampling
    gathers weights, a collective, and every rank runs the `Previewer`); the barrier that ends
    rank 0's preview keeps the others from running ahead into the next step's collectives.
    """

    def run(self, model, step, out_dir):
        if dist.is_initialized():
            dist.barrier()
        return None


def _preview(previewer, engine, job: JobConfig, run: str, done: int, *, final: bool, tracker: Tracker) -> None:
    from ltx_ray.sample.preview import REEL_NAME, local_preview_dir

    reel = previewer.run(engine.module, done, local_preview_dir(run))
    if reel is None:
        return
    upload(reel, outputs_uri(job, run, reel.name), job.storage)
    if final:
        upload(reel, outputs_uri(job, run, REEL_NAME), job.storage)
    tracker.log_video("validation/reel", reel, step=done, caption=f"step {done}: reference | generated")


def _build_engine(job: JobConfig, checkpoint_path: str, world: int, device: torch.device, dtype: torch.dtype):
    accelerator = get_accelerator().device_name()
    if accelerator != deepspeed_accelerator(job):
        raise RuntimeError(f"DeepSpeed chose its {accelerator!r} accelerator but cluster.use_gpu={job.cluster.use_gpu} "
                           f"needs {deepspeed_accelerator(job)!r} (DS_ACCELERATOR in this worker: "
                           f"{os.environ.get('DS_ACCELERATOR')!r})")
    # Same seed on every rank, so the LoRA starts identical everywhere.
    torch.manual_seed(job.seed)
    ds_config = deepspeed_config(job, world)
    if job.cluster.zero_stage == 3:
        # Partitioned as it loads: no rank ever holds the whole base model.
        transformer = zero3.load_transformer_zero3(checkpoint_path, ds_config, dtype=dtype)
    else:
        transformer = load_transformer(checkpoint_path, dtype=dtype, device=device)
    if job.cluster.gradient_checkpointing:
        transformer.set_gradient_checkpointing(True)
    model = apply_lora(
        transformer,
        job.request.rank,
        targets=job.model.lora_targets,
        include_feed_forward=job.model.lora_include_feed_forward,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # DeepSpeed does not cast a model built under zero.Init; the adapters follow the base
        p.data = p.data.to(device=device, dtype=dtype)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(job)),
        config=ds_config,
    )
    return engine


def _maybe_fail(job: JobConfig, done: int, start: int, rank: int) -> None:
    """Test hook `train.fail_at_step`: kill the last rank's process once, as a crashed node would.

    It fires only in an attempt that started from scratch, so the restarted
    attempt (which resumes from a checkpoint) runs through.
    """
    last_rank = dist.get_world_size() - 1 if dist.is_initialized() else 0
    if job.train.fail_at_step and done == job.train.fail_at_step and start == 0 and rank == last_rank:
        log.warning("train.fail_at_step=%d: killing worker rank %d", done, rank)
        os.kill(os.getpid(), signal.SIGKILL)


def _progress_bar(rank: int, start: int, total: int):
    if rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", mininterval=2.0)


# --- The worker's Ray calls, all of them ---------------------------------------------------------------


def _worker_place() -> tuple[int, int, int]:
    """This worker's (world rank, world size, local rank) in the Ray Train worker group."""
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()


def _latent_batches():
    """This worker's shard of the cached latents (`ltx_ray.data.cache`), unpacked into tensors."""
    return ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=16, device="cpu", collate_fn=batches.UnpackLatents()
    )


def _preemption_announced() -> bool:
    """Whether Ray has announced that a node of this worker group is going (a drain with a deadline)."""
    return ray.train.get_preemption_info() is not None


def _report_failure(config: dict[str, Any], problems) -> None:
    """Tell the driver why the run stops (its `_Outcome` actor), so it exits 2 with these problems."""
    ray.get(config["outcome"].fail.remote(problems))
