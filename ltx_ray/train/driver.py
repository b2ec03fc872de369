"""The job driver: validate, preprocess into the latent cache, train with Ray Train, publish outputs.

`run_job` is what `ltx-ray train` runs, on the Ray head or wherever `ray job
submit` starts the entrypoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ltx_ray import console, lease, tempdirs
from ltx_ray.config.naming import run_name as derive_run_name
from ltx_ray.config.schema import JobConfig
from ltx_ray.latents import holdout
from ltx_ray.latents.pipeline import build_latent_cache, publish_debug_dataset
from ltx_ray.latents.reader import LatentIndex
from ltx_ray.errors import Problem, StorageError
from ltx_ray.estimate.preflight import gpu_memory, preflight
from ltx_ray.ray_cluster import init_ray
from ltx_ray.sample.conditioning import check_validation_inputs
from ltx_ray.sample.preview import preview_timeout_s
from ltx_ray.run_store import RunStore
from ltx_ray.storage import join, upload
from ltx_ray.train import checkpoint
from ltx_ray.train.deepspeed_config import deepspeed_accelerator
from ltx_ray.train.loop import train_loop_per_worker
from ltx_ray.train import outputs
from ltx_ray.train.trainer import RunSetup

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished training run leaves behind."""

    run_name: str
    steps: int
    seconds: float
    checkpoint_uri: str
    outputs: dict[str, Any]
    evaluation: dict[str, Any] | None = None  # the last held-out evaluation's summary (train.holdout_pairs > 0)


def prepare_validation(job: JobConfig, store: RunStore) -> str | None:
    """Encode the validation samples once (a Ray task, on a GPU when the cluster has them); returns its URI."""
    if not job.request.validation:
        return None
    from ltx_ray.model.files import model_files
    from ltx_ray.model.loader import model_identity
    from ltx_ray.sample.conditioning import validation_key

    identity = model_identity(model_files(job.model, job.storage), job.storage)
    uri = join(store.validation, validation_key(job, identity) + ".safetensors")
    if not store.is_file(uri):
        options = {"num_gpus": 1} if job.cluster.use_gpu else {"num_cpus": 1}
        ray.get(_build_validation_task.options(**options).remote(job, uri))
    return uri


@ray.remote
def _build_validation_task(job: JobConfig, uri: str) -> str:
    import tempfile
    from pathlib import Path

    from ltx_ray.sample.conditioning import build_validation_set

    with tempfile.TemporaryDirectory(prefix="ltx-ray-val-") as tmp:
        local = build_validation_set(job, Path(tmp) / "validation.safetensors")
        return upload(local, uri, job.storage)


@ray.remote(num_cpus=0)
class _Outcome:
    """Where the workers leave a reason to stop that no retry can fix (a permanent storage error)."""

    def __init__(self):
        self.problems = None

    def fail(self, problems) -> None:
        self.problems = problems

    def get(self):
        return self.problems


def run_training(job: JobConfig) -> TrainResult:
    """Preprocess (or reuse the cache), then train the LoRA across the Ray cluster."""
    from ltx_ray.model.files import model_files

    # The model's files are checked first: a mismatched set (a 2.3 VAE with a 2.5 transformer) is refused here.
    files = model_files(job.model, job.storage)
    store = RunStore(job.storage, derive_run_name(job, files.generation))
    # Refused inputs fail here, before any cluster time is spent.
    check_validation_inputs(job)
    # A run continues from its newest verified checkpoint: refuse one this version cannot continue, before any work.
    resume = checkpoint.check_resumable(job, store)
    if resume is not None:
        log.info("run %s resumes from its checkpoint at step %d (%s)", store.run, resume.step, resume.uri)
    tempdirs.sweep()
    # One driver per run: a second one for the same run stops here, naming the first.
    with lease.hold(store):
        return _train(job, store, resume)


def _train(job: JobConfig, store: RunStore, resume: checkpoint.StoredCheckpoint | None) -> TrainResult:
    # Will it fit? Asked before Ray books any GPU (warns; a CPU job without cluster.gpu_memory_gb skips it).
    # The same estimate is the figure the workers set their measured step 1 against.
    est = _estimate(job)
    preflight(job, est)
    run = store.run
    fs, storage_root = store.filesystem(job.storage.storage_path)
    init_ray(job)
    cache = build_latent_cache(job, store)
    # What the run trains on and what it holds out (refused here when no pair would be left to train on).
    samples = holdout.split(LatentIndex.read(cache.uri, job.storage), job.train.holdout_pairs)
    checkpoint.check_holdout_names(resume, store, samples.holdout.names)
    if job.train.eval_every is not None and not samples.evaluated:
        log.warning("train.eval_every is set but train.holdout_pairs is 0: there is nothing to evaluate")
    if samples.evaluated:
        print(f"ltx-ray: {len(samples.train)} pair(s) to train on, {len(samples.holdout)} held out "
              f"(train.holdout_pairs, never trained on: {', '.join(samples.holdout.names)}); evaluated with "
              f"{len(samples.train_sample)} training pair(s) every "
              f"{job.train.evaluation_interval(job.preview.every)} steps", flush=True)
    publish_debug_dataset(job, cache, store.output(outputs.DEBUG_NAME), samples)
    validation_file = prepare_validation(job, store)
    # On the driver's own node: an actor elsewhere would go with that node when it is preempted.
    outcome = _Outcome.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=True)).remote()
    setup = RunSetup(job=job, run_name=run, checkpoint_path=job.model.checkpoint,
                     wandb_dir=outputs.local_wandb_dir(run),
                     validation_file=validation_file,
                     estimated_bytes=est.use("training worker").modelled if est is not None else None,
                     holdout_names=tuple(samples.holdout.names))

    trainer = TorchTrainer(
        train_loop_per_worker,
        # Every worker reads, by number, only the samples its places in each step need (ltx_ray.train.batches
        # picks them from (seed, step, place)), so a resumed run sees exactly the data it would have.
        train_loop_config={"setup": setup, "outcome": outcome, "latents": samples.train,
                           "eval_latents": {"holdout": samples.holdout, "train": samples.train_sample}
                           if samples.evaluated else None},
        # A preview is the longest time a rank may wait in one collective (the next one comes after it):
        # the watchdog's timeout follows the preview's size, never below Ray's default of 30 minutes.
        torch_config=TorchConfig(timeout_s=preview_timeout_s(job, job.cluster.min_workers)),
        scaling_config=ScalingConfig(
            # (min, max) makes Ray Train elastic: any count in between, as nodes come and go.
            num_workers=(job.cluster.min_workers, job.cluster.max_workers) if job.cluster.elastic
            else job.cluster.num_workers,
            use_gpu=job.cluster.use_gpu,
            resources_per_worker=dict(job.cluster.resources_per_worker),
        ),
        run_config=RunConfig(
            name=run,
            storage_path=storage_root,
            storage_filesystem=fs,
            # The loop writes, verifies and prunes its own checkpoints (ltx_ray.train.checkpoint) and reports
            # none to Ray Train: resuming reads them from storage, never Ray's snapshot of them.
            failure_config=FailureConfig(
                max_failures=job.cluster.max_failures,
                max_preemption_failures=job.cluster.max_preemption_failures,
                preemption_grace_s=job.cluster.preemption_grace_s,
            ),
            worker_runtime_env={"env_vars": worker_env(job)},
            # Ray Train's own console lines (worker group start, resources); its log files keep every level.
            logging_config=ray.train.LoggingConfig(log_level=logging.getLevelName(console.library_level())),
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    if result.error is not None:
        # A worker that stopped on the user's data or storage: its one sentence, not the worker's traceback.
        raise _user_error_in(result.error) or result.error
    try:
        problems = ray.get(outcome.get.remote())
    except ray.exceptions.RayActorError:
        # Its node went (soft affinity let it land elsewhere): the check of the final checkpoint below remains.
        log.warning("the workers' error report was lost with its node; checking the checkpoints instead")
        problems = None
    if problems:
        raise StorageError(problems)
    final = checkpoint.latest(store)
    if final is None or final.step != job.request.number_of_steps:
        raise StorageError(Problem(store.checkpoints,
                                   f"training ended but the step-{job.request.number_of_steps} checkpoint is not "
                                   f"in storage (newest verified: {final.step if final else 'none'}); re-run the "
                                   "command to continue from it"))
    published, evaluation = outputs.publish(job, store, final)
    return TrainResult(
        run_name=run,
        steps=job.request.number_of_steps,
        seconds=seconds,
        checkpoint_uri=final.uri,
        outputs=published,
        evaluation=evaluation,
    )


def worker_env(job: JobConfig) -> dict[str, str]:
    """Environment of the training workers, set before they import torch or DeepSpeed."""
    from ltx_ray import console

    return {
        "DS_ACCELERATOR": deepspeed_accelerator(job),
        # Previews decode and sample beside the training state: growable segments keep the caching
        # allocator from fragmenting between the step's and the preview's differently sized blocks.
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        # The driver's console: quiet or --verbose, a terminal (progress bars) or not (lines).
        **console.worker_env(train_worker=True),
    }


def _estimate(job: JobConfig):
    """`ltx-ray estimate` of the job (its alternatives too when the pre-flight has a GPU to fit), or None."""
    from ltx_ray.estimate.estimate import estimate

    try:
        return estimate(job, alternatives=gpu_memory(job)[0] is not None, gpu_attention=job.cluster.use_gpu)
    except Exception as exc:  # noqa: BLE001 - an estimate is a report, never a reason to stop
        log.warning("no memory estimate for this run (%s): step 1's memory is logged without one", exc)
        return None


def _user_error_in(error: BaseException):
    """The UserError behind a Ray Train failure (in a worker's exception chain), if there is one."""
    from ltx_ray.errors import UserError

    seen, todo = set(), [error, *getattr(error, "worker_failures", {}).values()]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        todo += [getattr(exc, "cause", None), exc.__cause__, exc.__context__]
    return None


def run_job(job: JobConfig) -> dict[str, Any]:
    """The whole job; prints and returns the result JSON."""
    result = run_training(job)
    payload = {
        "run_name": result.run_name,
        **result.outputs,
        "billable_units": max(100, job.request.number_of_steps),
    }
    print(
        f"\nTrained {result.steps} steps in {result.seconds:.0f} s. "
        f"LoRA: {payload['lora_file']}\nCheckpoints: {result.checkpoint_uri}"
    )
    for line in outputs.evaluation_summary(result.evaluation, payload):
        print(line)
    print(json.dumps(payload, indent=2))
    return payload
