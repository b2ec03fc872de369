"""Training checkpoints: DeepSpeed state without the frozen base, plus the LoRA file and loop state.

Layout of one checkpoint directory (Ray Train merges every rank's files into
`<storage_path>/<run>/checkpoint_<timestamp>/`):

    deepspeed/            DeepSpeed engine state (LoRA weights, optimizer, scheduler), one file per rank
    latest                DeepSpeed's pointer to the tag above
    lora.safetensors      the LoRA at this step, in LTX naming (rank 0)
    trainer_state.json    step, data position and seed (rank 0); the noise RNG of every step is
                          seeded from (seed, step, micro-step, rank), so the step fixes it
    config.json           the redacted job config (rank 0)
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

DEEPSPEED_TAG = "deepspeed"
LORA_FILE = "lora.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"


def save_and_report(engine, job: JobConfig, *, step: int, data_position: dict[str, int], rank: int,
                    metrics: dict[str, Any], lora_metadata: dict[str, str]) -> None:
    """Write this rank's part of a checkpoint and hand it to Ray Train (all ranks must call)."""
    tmp = Path(tempfile.mkdtemp(prefix="ltx-ray-ckpt-"))
    try:
        state = {"step": step, "data_position": data_position, "seed": job.seed}
        engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG, client_state=state, exclude_frozen_parameters=True)
        lora = lora_state_dict(engine)  # collective under ZeRO-3
        if rank == 0:
            save_lora_file(lora, tmp / LORA_FILE, lora_metadata)
            (tmp / STATE_FILE).write_text(json.dumps(state))
            (tmp / CONFIG_FILE).write_text(json.dumps(redact(to_plain(job)), indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore(engine) -> int:
    """Load the latest reported checkpoint into `engine`; returns the step to continue from (0 if none)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        # Strict loading would demand the frozen base weights, which are never saved.
        _, client_state = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG, load_module_strict=False)
    return int(client_state["step"])


@contextmanager
def lora_file_of(checkpoint: ray.train.Checkpoint) -> Iterator[Path]:
    """The LoRA file inside a reported checkpoint, as a local path."""
    with checkpoint.as_directory() as directory:
        yield Path(directory) / LORA_FILE
