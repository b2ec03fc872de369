"""Training checkpoints: the world-size-free training state, the LoRA file and the loop's state.

Layout of one checkpoint directory (rank 0 writes it; Ray Train uploads it to
`<storage_path>/<run>/checkpoint_<timestamp>/`):

    train_state.safetensors   LoRA fp32 weights, AdamW moments and counters, LR-scheduler state
                              (`train.train_state`: loads on any world size and either ZeRO stage)
    lora.safetensors          the LoRA at this step, in LTX naming
    trainer_state.json        step, data position, seed, global batch, the world size that wrote it
                              and why (`interval`, `final`, `preemption`); the samples and noise
                              of every step follow from (seed, step, place in the global batch)
    config.json               the redacted job config

The upload runs in the background (Ray Train's asynchronous upload), so
training goes on while a checkpoint travels to object storage.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray.train

from ltx_ray.config.load import redact, to_plain
from ltx_ray.config.schema import JobConfig
from ltx_ray.model.lora import lora_state_dict, save_lora_file
from ltx_ray.train import train_state

LORA_FILE = "lora.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"


def save_and_report(engine, job: JobConfig, *, step: int, state: dict[str, Any], rank: int,
                    metrics: dict[str, Any], lora_metadata: dict[str, str]) -> None:
    """Gather the training state, write it on rank 0 and hand it to Ray Train (all ranks must call)."""
    tensors, meta = train_state.gather(engine)  # collective
    lora = lora_state_dict(engine)  # collective under ZeRO-3
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    tmp = Path(tempfile.mkdtemp(prefix="ltx-ray-ckpt-"))
    try:
        train_state.save(tensors, meta, tmp)
        save_lora_file(lora, tmp / LORA_FILE, lora_metadata)
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}))
        (tmp / CONFIG_FILE).write_text(json.dumps(redact(to_plain(job)), indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Steps go on while the upload runs; Ray deletes the local copy once it is in storage.
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                     delete_local_checkpoint_after_upload=True)


def restore(engine) -> dict[str, Any] | None:
    """Load the latest reported checkpoint into `engine`; returns its trainer state (None if there is none)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        tensors, meta = train_state.read(Path(directory))
        state = json.loads((Path(directory) / STATE_FILE).read_text())
    train_state.load(engine, tensors, meta)
    engine.global_steps = int(state["step"])
    return state


SNAPSHOT = "checkpoint_manager_snapshot.json"


def check_resumable(job: JobConfig, fs, run_dir: str) -> None:
    """Refuse, before any worker starts, a run whose latest checkpoint this version cannot continue.

    `run_dir` is the run's folder on `fs` (pyarrow). No checkpoint yet: nothing to check.
    """
    import pyarrow.fs as pafs

    from ltx_ray.errors import ConfigError, Problem

    snapshot = f"{run_dir}/{SNAPSHOT}"
    if fs.get_file_info(snapshot).type != pafs.FileType.File:
        return
    with fs.open_input_stream(snapshot) as f:
        latest = (json.loads(f.read()).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    if not latest:
        return
    where = f"{run_dir}/{latest}"
    if fs.get_file_info(f"{where}/{train_state.FILE}").type != pafs.FileType.File:
        raise ConfigError(Problem(where, f"this checkpoint has no {train_state.FILE}: it was written by an earlier "
                                         "ltx-ray (DeepSpeed per-rank files, which resume only on their own world "
                                         "size) and cannot be continued. Start afresh under another "
                                         "storage.run_name, or remove the run's folder"))
    with fs.open_input_stream(f"{where}/{STATE_FILE}") as f:
        state = json.loads(f.read())
    saved = state.get("global_batch_size")
    if saved != job.cluster.global_batch_size:
        raise ConfigError(Problem("cluster.global_batch_size",
                                  f"the run's checkpoint at step {state.get('step')} ({where}) trains "
                                  f"{saved} samples per step, this config {job.cluster.global_batch_size}: set "
                                  f"cluster.global_batch_size={saved} to continue it (a step must stay the same "
                                  "step), or start afresh under another storage.run_name"))


@contextmanager
def lora_file_of(checkpoint: ray.train.Checkpoint) -> Iterator[Path]:
    """The LoRA file inside a reported checkpoint, as a local path."""
    with checkpoint.as_directory() as directory:
        yield Path(directory) / LORA_FILE
