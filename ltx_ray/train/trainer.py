"""The training run of one worker: plain PyTorch + DeepSpeed over a `WorkerContext`, no Ray.

Read top to bottom, `Trainer.train` is the story of a run: build the model with its LoRA, wrapped
in a DeepSpeed engine (`build_engine`); take the latent samples; resume from the newest verified
checkpoint (written on any world size); then for every optimizer step `train_step` (batch -> av2av
loss -> backward -> step), its metrics and memory logged, previews and checkpoints when
`should_preview` / `should_checkpoint` say so, and a just-in-time checkpoint when a node's
preemption is announced. Ray Train runs it through `ltx_ray.train.loop`; the GPU check and the
loop's tests run it on a plain `torch.distributed` group (`ltx_ray.train.context.DistContext`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
import torch
import torch.distributed as dist
from tqdm import tqdm

from ltx_ray import console, tempdirs
from ltx_ray.config.schema import JobConfig
from ltx_ray.estimate.estimate import GIB
from ltx_ray.estimate.tracker import StorageTracker
from ltx_ray.model.av2av import precision_dtype
from ltx_ray.run_store import RunStore
from ltx_ray.train import batches, train_state, zero3
from ltx_ray.train.checkpoint import CheckpointWriter, restore
from ltx_ray.train.context import WorkerContext
from ltx_ray.train.engine import build_engine
from ltx_ray.train.evaluation import MODALITIES, Evaluator, improves, should_evaluate
from ltx_ray.train.step import StepShape, train_step
from ltx_ray.train.tracking import Tracker

log = logging.getLogger(__name__)

# Rank 0 warns when step 1's measured peak exceeds the estimate by more than this share.
MEMORY_TOLERANCE = 0.15


@dataclass(frozen=True)
class RunSetup:
    """What the driver resolved for every worker of a run."""

    job: JobConfig
    run_name: str
    checkpoint_path: str
    wandb_dir: str
    validation_file: str | None = None
    # `ltx-ray estimate`'s modelled bytes of a training worker (no CUDA-context allowance), if it ran.
    estimated_bytes: int | None = None
    # The names of the pairs held out (`train.holdout_pairs`), recorded in every checkpoint.
    holdout_names: tuple[str, ...] = ()


def should_preview(job: JobConfig, done: int) -> bool:
    """A validation preview after `done` steps: every `preview.every` steps, and after the last."""
    return done % job.preview.every == 0 or done == job.request.number_of_steps


def should_checkpoint(job: JobConfig, done: int) -> bool:
    """A checkpoint after `done` steps: every `checkpoint.every` steps, and the final one."""
    return done % job.checkpoint.every == 0 or done == job.request.number_of_steps


class Trainer:
    """Trains the IC-LoRA for exactly `request.number_of_steps` optimizer steps on one worker of the group."""

    def __init__(self, setup: RunSetup, context: WorkerContext):
        self.setup, self.context = setup, context
        self.job = setup.job
        self.store = RunStore(self.job.storage, setup.run_name)  # where its checkpoints and outputs go
        self.dtype = precision_dtype(self.job.cluster.precision)
        # As many intra-op threads as the worker was given CPUs: more oversubscribes the node.
        torch.set_num_threads(max(1, int(self.job.cluster.resources_per_worker.get("CPU", 1))))
        self.engine = None
        self.history: list = []  # this (re)start's `StepMetrics`, step by step
        self.evaluations: list = []  # this (re)start's held-out evaluations (`evaluation.Evaluation`)
        self.trained_pairs: list[int] = []  # with held-out pairs: the pairs (manifest indices) this worker trains on
        self.recomputed_blocks = 0  # ltx-core block forwards run again in backward, in the first step

    def train(self) -> None:
        """The run, from the newest checkpoint (or step 0) to the last step; rank 0 writes and reports."""
        tempdirs.sweep()  # folders of this node's workers that were killed outright
        try:
            self._train()
        finally:
            tempdirs.remove_all()
            if self.context.rank == 0:
                from ltx_ray.sample.preview import local_preview_dir

                shutil.rmtree(local_preview_dir(self.setup.run_name), ignore_errors=True)

    def _train(self) -> None:
        job, ctx, run = self.job, self.context, self.setup.run_name
        total, rank, world, device = job.request.number_of_steps, ctx.rank, ctx.world_size, ctx.device
        engine = self.engine = build_engine(job, self.setup.checkpoint_path, world, device, self.dtype)
        samples = ctx.latent_samples()
        c = job.cluster
        # The global batch is the run's; this (re)start's world size only sets how it is accumulated.
        shape = StepShape(rank=rank, world=world, accumulation=c.accumulation_steps(world),
                          micro_batch_size=c.micro_batch_size, global_batch_size=c.global_batch_size)
        start, resumed = self._resume()
        tracker = Tracker(job, run, Path(self.setup.wandb_dir), enabled=rank == 0)
        progress = _progress_bar(rank, start, total)
        previewer = self._previewer()
        writer = CheckpointWriter(job, self.store) if rank == 0 else None
        preemption = _PreemptionVote(ctx)
        memory = PeakMemory(engine, device)
        saved_step, preemption_saved = start, False  # the newest step whose state is in storage
        evaluator = self._evaluator(samples)
        # The lowest held-out loss so far (step, losses) and the last evaluation: carried in every checkpoint.
        best, last_eval = resumed.get("best"), resumed.get("evaluation")

        def checkpoint(done: int, reason: str) -> None:
            tensors, meta = train_state.gather(engine)  # collective
            lora = zero3.lora_state_dict(engine)  # collective under ZeRO-3
            if writer is not None:
                writer.submit(tensors, meta, lora, state={
                    "step": done, "data_position": {"epoch": batches.epoch_of(done, len(samples), shape.global_batch_size),
                                                    "samples_seen": done * shape.global_batch_size},
                    "seed": job.seed, "global_batch_size": shape.global_batch_size, "world_size": world,
                    "resumed_from": start, "reason": reason, "holdout_pairs": job.train.holdout_pairs,
                    "holdout": list(self.setup.holdout_names), "trained_pairs": self.trained_pairs,
                    "best": best, "evaluation": last_eval})

        def evaluate(done: int) -> bool:
            """Evaluate after `done` steps (every rank); whether the held-out loss is the run's lowest yet."""
            nonlocal best, last_eval
            result = evaluator.run(engine.module, done)
            self.evaluations.append(result)
            last_eval = result.summary()
            tracker.log(result.metrics(), step=done)
            if rank == 0:
                tqdm.write(f"ltx-ray: {result.line()}")  # above the training bar
            if done == 0 or not improves(result.holdout_loss, best):
                return False  # step 0 is no candidate: there is no trained LoRA to keep
            best = {"step": done, "loss": result.holdout_loss,
                    **{f"loss_{m}": result.loss("holdout", m) for m in MODALITIES}}
            return True

        def on_preemption_notice(step: int) -> None:
            # A node of this run is about to go (a spot reclaim, a drain), and a step of a large run takes
            # minutes: asked at every micro-step. Ranks may hear of it at different micro-steps, so they vote
            # first and all act at the same one. Until the accumulation boundary the weights and AdamW state
            # are the last completed step's: a just-in-time checkpoint holds that step, and the restarted
            # run redoes at most the steps since the notice.
            nonlocal saved_step, preemption_saved
            if preemption_saved or not preemption.agreed():
                return
            preemption_saved = True
            tracker.flush()  # the steps logged so far must outlive the node too: the restart redoes none of them
            if saved_step != step:
                if rank == 0:
                    print(f"ltx-ray: a node of this run is being preempted: checkpointing step {step} now", flush=True)
                checkpoint(step, "preemption")
                saved_step = step

        if evaluator is not None and start == 0:
            evaluate(0)  # where the curves start: the base model with the untrained LoRA
        for step in range(start, total):
            first = step == start
            counter = _BlockCounter(engine) if first else None
            memory.start(first=first)
            metrics = train_step(engine, samples, job, step, shape, device, self.dtype,
                                 storage_failed=writer is not None and writer.error is not None,
                                 before_micro_step=lambda: on_preemption_notice(step))
            metrics.memory_peak_gib = memory.stop() / GIB
            self.history.append(metrics)
            if counter is not None:
                self.recomputed_blocks = counter.close(shape.accumulation)
                self._check_first_step(metrics.memory_peak_gib, tracker, step + 1)
            done = step + 1
            if metrics.storage_failed:
                break  # every rank learned it in the step's all-reduce; rank 0 reports the error below
            tracker.log(metrics.logged(), step=done)
            if progress is not None:
                progress.set_postfix_str(f"loss video {metrics.video_loss:.4f} audio {metrics.audio_loss:.4f}, "
                                         f"{metrics.step_time:.2f} s/step, {metrics.memory_peak_gib:.2f} GiB",
                                         refresh=False)
                progress.update(1)
            improved = evaluator is not None and should_evaluate(job, done) and evaluate(done)
            if previewer is not None and should_preview(job, done):
                self._preview(previewer, done, final=done == total, tracker=tracker)
            interval = should_checkpoint(job, done)
            if interval or improved:
                # A new lowest held-out loss is checkpointed even between intervals: it is the best LoRA.
                checkpoint(done, "final" if done == total else "interval" if interval else "best")
                saved_step = done

        if progress is not None:
            progress.close()
        if writer is not None:
            writer.wait()
            if writer.error is not None:
                # Ends the run without a retry: a permanent storage error fails the same way on every attempt.
                ctx.report_failure(writer.error.problems)
                tracker.finish()
                return
        wandb_run_dir = tracker.finish()
        if wandb_run_dir is not None:
            self.store.upload(wandb_run_dir, self.store.output("wandb"))

    def _resume(self) -> tuple[int, dict]:
        """Load the newest verified checkpoint into the engine, if any; the step to go on from, and its state."""
        job, rank = self.job, self.context.rank
        resumed = restore(self.engine, self.store, rank)
        if not resumed:
            return 0, {}
        start, total = int(resumed["step"]), job.request.number_of_steps
        if rank == 0:
            print(f"ltx-ray: resuming from step {start} of {total} on {self.context.world_size} worker(s) (checkpoint "
                  f"written on {resumed.get('world_size', '?')}, reason: {resumed.get('reason', '?')})", flush=True)
            if start >= total:
                print("ltx-ray: this run is already complete; publishing its outputs again", flush=True)
        return start, resumed

    def _evaluator(self, samples) -> Evaluator | None:
        """The held-out evaluation (every rank takes part), or None without held-out pairs; `samples`: this
        worker's training samples, which must hold no held-out pair."""
        sets = self.context.eval_samples()
        if not sets or not len(sets.get("holdout", ())):
            return None
        held = set(pairs_of(sets["holdout"]))
        self.trained_pairs = sorted(pairs_of(samples))
        overlap = held & set(self.trained_pairs)
        if overlap:  # the driver's split makes this impossible: a wrong context must not pass unnoticed
            raise RuntimeError(f"the held-out pairs {sorted(overlap)} are among the samples trained on")
        ctx = self.context
        return Evaluator(self.job, sets, rank=ctx.rank, world=ctx.world_size, device=ctx.device, dtype=self.dtype)

    def _check_first_step(self, measured_gib: float, tracker: Tracker, done: int) -> None:
        """After step 1: gradient checkpointing must have recomputed blocks, and memory is set against the estimate."""
        job = self.job
        if job.cluster.gradient_checkpointing and self.recomputed_blocks == 0:
            raise RuntimeError("cluster.gradient_checkpointing is on but ltx-core recomputed no transformer block in "
                               "backward: the model is not in train mode, and the run would need the memory of a "
                               "step without checkpointing")
        if self.context.rank != 0:
            return
        tracker.log({"memory/recomputed_blocks": self.recomputed_blocks}, step=done)
        estimated = self.setup.estimated_bytes
        if estimated is None:
            print(f"ltx-ray: memory: measured {measured_gib:.2f} GiB (no estimate)", flush=True)
            return
        print(f"ltx-ray: memory: measured {measured_gib:.2f} GiB, estimated {estimated / GIB:.2f} GiB", flush=True)
        if measured_gib * GIB > (1 + MEMORY_TOLERANCE) * estimated:
            log.warning("memory: step 1's peak %.2f GiB exceeds the estimate (%.2f GiB) by more than %d%%: "
                        "`ltx-ray estimate` undercounts this setup, so its pre-flight may pass runs that do not fit",
                        measured_gib, estimated / GIB, round(MEMORY_TOLERANCE * 100))

    def _previewer(self):
        """The validation previewer (every rank takes part in a preview), or None without validation."""
        uri = self.setup.validation_file
        if not uri:
            return None
        from ltx_ray.fetch import fetch
        from ltx_ray.sample.preview import Previewer

        local = fetch(uri, tempdirs.make("val"), storage=self.job.storage)
        return Previewer(self.job, local, self.context.rank, self.context.device, self.dtype)

    def _preview(self, previewer, done: int, *, final: bool, tracker: Tracker) -> None:
        from ltx_ray.sample.preview import REEL_NAME, local_preview_dir

        # Eval mode inside, train mode again after.
        reel = previewer.run(self.engine.module, done, local_preview_dir(self.setup.run_name))
        if reel is None:
            return
        uri = self.store.upload(reel, self.store.output(reel.name))
        if final:
            self.store.upload(reel, self.store.output(REEL_NAME))
        tqdm.write(f"ltx-ray: preview of step {done}: {uri}")
        tracker.log_video("validation/reel", reel, step=done, caption=f"step {done}: reference | generated")


class _PreemptionVote:
    """Whether any rank has heard of a preemption: one one-element all-reduce (MAX) per question.

    Each rank hears of it on its own; acting on its own word, ranks would enter the just-in-time
    checkpoint's collectives at different micro-steps and hang. The vote runs on the host (a gloo
    group beside NCCL), so asking it at every micro-step never waits for the GPU.
    """

    def __init__(self, context: WorkerContext):
        self.context = context
        self.group = None
        if dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # every rank creates it, in the same order

    def agreed(self) -> bool:
        heard = torch.tensor([int(self.context.preemption_announced())], dtype=torch.int32)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(heard, op=dist.ReduceOp.MAX, group=self.group)
        return heard.tolist()[0] > 0  # a CPU tensor: no device sync


class PeakMemory:
    """`memory/peak_gib` of a step: on CUDA the allocator's peak since the step began; on CPU the estimator's
    storage tracker during the first step (everything the process holds for training), then that value."""

    def __init__(self, engine, device: torch.device):
        self.engine, self.device = engine, device
        self.tracker: StorageTracker | None = None
        self.last = 0

    def start(self, *, first: bool = True) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif first:
            self.tracker = StorageTracker()
            for t in _held_tensors(self.engine):
                self.tracker.add(t)
            self.tracker.__enter__()

    def stop(self) -> int:
        if self.device.type == "cuda":
            self.last = torch.cuda.max_memory_allocated(self.device)
        elif self.tracker is not None:
            self.tracker.__exit__(None, None, None)
            self.last, self.tracker = self.tracker.peak, None
        return self.last


def _held_tensors(engine):
    """The tensors a DeepSpeed engine holds before a step: the model's parameters and buffers, the
    optimizer's parameters (the fp32 master partitions) and their state."""
    yield from engine.module.parameters()
    yield from engine.module.buffers()
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for group in getattr(optimizer, "param_groups", []):
        yield from group["params"]
    for state in getattr(optimizer, "state", {}).values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


class _BlockCounter:
    """Counts the calls of ltx-core's transformer blocks during the first step: with gradient checkpointing
    each block runs again in backward (`torch.utils.checkpoint` calls the block), so a step of `a`
    micro-steps calls each block 2a times, and a times without. Counted as the call starts: a recomputation
    stops early (torch's checkpoint early stop) once it has what backward needs, so no forward hook sees its end."""

    def __init__(self, engine):
        blocks = [m for name, m in engine.module.named_modules() if name.endswith("transformer_blocks")]
        self.blocks = list(blocks[0]) if blocks else []
        self.calls = 0
        self.handles = [b.register_forward_pre_hook(self._count) for b in self.blocks]

    def _count(self, module, args) -> None:
        self.calls += 1

    def close(self, micro_steps: int) -> int:
        """Stop counting; the block forwards beyond one per block and micro-step (the recomputations)."""
        for h in self.handles:
            h.remove()
        return max(0, self.calls - len(self.blocks) * micro_steps)


def pairs_of(samples) -> list[int]:
    """The pairs (manifest indices) of a worker's samples: a `LatentReader`'s index lists them without reading one."""
    index = getattr(samples, "index", None)
    if index is not None and hasattr(index, "samples"):
        return [row.pair for row in index.samples]
    return [int(sample["index"]) for sample in samples]


def _progress_bar(rank: int, start: int, total: int):
    if rank != 0:
        return None
    if console.is_verbose():
        return tqdm(total=total, initial=start, desc="train", unit="step", mininterval=2.0)
    # One bar, drawn in place by the driver, on a terminal; off one (CI, a pipe) a line every 30 s.
    return console.Progress("train", total, initial=start, unit="step", interval_s=30.0)

