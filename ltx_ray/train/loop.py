"""The training loop each Ray Train worker runs: plain PyTorch + DeepSpeed, and a few Ray calls.

Read top to bottom, it is the story of a run: build the model with its LoRA,
wrap it in a DeepSpeed engine, load the cached latents, resume if a
checkpoint exists (on any world size), then for every optimizer step: batch
-> av2av loss -> backward -> step, with checkpoints and previews at their
intervals and a just-in-time checkpoint when a node's preemption is announced.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import deepspeed
import ray.train
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from ltx_ray import tempdirs
from ltx_ray.config.schema import JobConfig
from ltx_ray.model.loader import load_transformer, load_transformer_zero3
from ltx_ray.model.lora import apply_lora
from ltx_ray.model.objective import av2av_loss
from ltx_ray.model.lora import lora_state_dict
from ltx_ray.train import batches, train_state
from ltx_ray.train.checkpoint import CheckpointWriter, restore
from ltx_ray.train.deepspeed_config import deepspeed_accelerator, deepspeed_config, lr_lambda
from ltx_ray.storage import upload
from ltx_ray.train.outputs import outputs_uri
from ltx_ray.train.tracking import Tracker

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train the IC-LoRA for exactly `number_of_steps` optimizer steps (Ray Train entry point)."""
    tempdirs.sweep()  # folders of this node's workers that were killed outright
    try:
        _train(config)
    finally:
        tempdirs.remove_all()
        if ray.train.get_context().get_world_rank() == 0:
            from ltx_ray.sample.preview import local_preview_dir

            shutil.rmtree(local_preview_dir(config["run_name"]), ignore_errors=True)


def _train(config: dict[str, Any]) -> None:
    job: JobConfig = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", ctx.get_local_rank()) if job.cluster.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # As many intra-op threads as the worker was given CPUs: more oversubscribes the node.
    torch.set_num_threads(max(1, int(job.cluster.resources_per_worker.get("CPU", 1))))
    dtype = torch.bfloat16 if job.cluster.precision == "bf16" else torch.float32

    engine = _build_engine(job, config["checkpoint_path"], world, device, dtype)
    samples = batches.load_samples(
        ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=16, device="cpu", collate_fn=batches.UnpackLatents()
        )
    )
    c = job.cluster
    # The global batch is the run's; this (re)start's world size only sets how it is accumulated.
    accumulation, global_batch = c.accumulation_steps(world), c.global_batch_size
    run = config["run_name"]
    resumed = restore(engine, job, run, rank)
    start = int(resumed["step"]) if resumed else 0
    total = job.request.number_of_steps
    if rank == 0 and resumed:
        print(f"ltx-ray: resuming from step {start} of {total} on {world} worker(s) (checkpoint written on "
              f"{resumed.get('world_size', '?')}, reason: {resumed.get('reason', '?')})", flush=True)
        if start >= total:
            print("ltx-ray: this run is already complete; publishing its outputs again", flush=True)
    tracker = Tracker(job, run, Path(config["wandb_dir"]), enabled=rank == 0)
    progress = _progress_bar(rank, start, total)
    lora_metadata = config["lora_metadata"]
    previewer = _previewer(job, config, rank, device, dtype)
    saved_step, preemption_saved = start, False  # the newest step whose state is in storage
    writer = CheckpointWriter(job, run) if rank == 0 else None

    def checkpoint(done: int, reason: str) -> None:
        tensors, meta = train_state.gather(engine)  # collective
        lora = lora_state_dict(engine)  # collective under ZeRO-3
        if writer is not None:
            writer.submit(tensors, meta, lora, lora_metadata, state={
                "step": done, "data_position": {"epoch": batches.epoch_of(done, len(samples), global_batch),
                                                "samples_seen": done * global_batch},
                "seed": job.seed, "global_batch_size": global_batch, "world_size": world,
                "resumed_from": start, "reason": reason})

    for step in range(start, total):
        started = time.perf_counter()
        data_seconds = 0.0
        totals = torch.zeros(3)
        sigmas = torch.zeros(2)
        tokens = 0
        for micro in range(accumulation):
            # A node of this run is about to go (a spot reclaim, a drain): every rank learns it at the same
            # call, at every micro-step, for a step of a large run takes minutes. Until the accumulation
            # boundary the weights and AdamW state are the last completed step's: a just-in-time checkpoint
            # holds that step, and the restarted run redoes at most the steps since the notice.
            if not preemption_saved and ray.train.get_preemption_info() is not None:
                preemption_saved = True
                # The steps logged so far must outlive the node too: the restart redoes none of them.
                tracker.flush()
                if saved_step != step:
                    if rank == 0:
                        print(f"ltx-ray: a node of this run is being preempted: checkpointing step {step} now",
                              flush=True)
                    checkpoint(step, "preemption")
                    saved_step = step
            t = time.perf_counter()
            positions = batches.micro_batch_positions(micro_step=micro, rank=rank, world_size=world,
                                                      micro_batch_size=c.micro_batch_size)
            idx = batches.sample_indices(len(samples), seed=job.seed, step=step, positions=positions,
                                         global_batch_size=global_batch)
            batch = batches.collate(samples, idx, device, dtype)
            data_seconds += time.perf_counter() - t
            loss, m = av2av_loss(
                engine, batch, batches.noise_generators(job.seed, step, positions, device),
                reference_downscale_factor=job.request.reference_downscale_factor,
                reference_temporal_scale_factor=job.request.reference_temporal_scale_factor,
                frame_rate=float(job.request.frame_rate),
            )
            engine.backward(loss)
            # DeepSpeed steps the optimizer only at the accumulation boundary (the last micro-step).
            engine.step()
            totals += torch.tensor([loss.item(), float(m["video_loss"]), float(m["audio_loss"])])
            sigmas += torch.tensor([float(m["sigma_video"]), float(m["sigma_audio"])])
            tokens += int(m["video_tokens"]) + int(m["audio_tokens"])

        _maybe_fail(job, step + 1, start, rank)
        metrics = _step_metrics(engine, totals, sigmas, tokens, accumulation, global_batch, world, started,
                                data_seconds, storage_failed=writer is not None and writer.error is not None)
        if metrics.pop("storage_failed"):
            break  # every rank learns it in the same all-reduce; rank 0 reports the error below
        seconds = metrics["step_time"]
        tracker.log(metrics, step=step + 1)
        if progress is not None:
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", s_per_step=f"{seconds:.2f}")
            progress.update(1)

        done = step + 1
        if previewer is not None and (done % job.train.validation_every == 0 or done == total):
            _preview(previewer, engine, job, run, done, final=done == total, tracker=tracker)
        if done % job.train.checkpoint_every == 0 or done == total:
            checkpoint(done, "final" if done == total else "interval")
            saved_step = done

    if progress is not None:
        progress.close()
    if writer is not None:
        writer.wait()
        if writer.error is not None:
            # Ends the run without a retry: a permanent storage error fails the same way on every attempt.
            ray.get(config["outcome"].fail.remote(writer.error.problems))
            tracker.finish()
            return
    wandb_run_dir = tracker.finish()
    if wandb_run_dir is not None:
        upload(wandb_run_dir, outputs_uri(job, run, "wandb"), job.storage)


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
    """A rank that does not sample under ZeRO-2: it only waits for rank 0 at the barrier."""

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
        transformer = load_transformer_zero3(checkpoint_path, ds_config, dtype=dtype)
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


def _step_metrics(engine, totals: torch.Tensor, sigmas: torch.Tensor, tokens: int, accumulation: int,
                  global_batch: int, world: int, started: float, data_seconds: float,
                  storage_failed: bool) -> dict[str, float]:
    """Losses averaged over micro-steps and ranks, plus speed and optimizer figures.

    `step_time` runs from the step's start to after this all-reduce: everything but logging.
    `storage_failed` (rank 0's checkpoint writer has failed for good) rides along, so all ranks stop together.
    """
    n = accumulation
    packed = torch.cat([totals / n, sigmas / n, torch.tensor([world * float(storage_failed)])])
    if dist.is_initialized():
        dist.all_reduce(packed)
        packed /= world
    grad_norm = engine.get_global_grad_norm()
    seconds = time.perf_counter() - started
    return {
        "loss": float(packed[0]),
        "video_loss": float(packed[1]),
        "audio_loss": float(packed[2]),
        "sigma_video": float(packed[3]),
        "sigma_audio": float(packed[4]),
        "learning_rate": float(engine.get_lr()[0]),
        "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
        "step_time": seconds,
        "data_time": data_seconds,
        "samples_per_second": global_batch / seconds,
        "world_size": world,
        "tokens_per_second": tokens * world / seconds,
        "storage_failed": bool(packed[5] > 0),
    }


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
