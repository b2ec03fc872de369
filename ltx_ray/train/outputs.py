"""The job's outputs in `<storage_path>/<run>/outputs/`: the LoRA, its config file, the W&B run.

The four output names follow SPEC-endpoint.md: `lora_file`, `config_file`,
`video` (the validation reel) and `debug_dataset`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ltx_ray.config.schema import JobConfig
from ltx_ray.model.lora import TRAINING_TYPE, LoraMetadata
from ltx_ray.run_store import RunStore

LORA_NAME = "ic_lora_av2av.safetensors"
CONFIG_NAME = "config.json"
DEBUG_NAME = "debug_dataset.zip"


def config_file_content(job: JobConfig) -> dict[str, Any]:
    """The `config_file` output: what a user needs to run the LoRA at inference (the LoRA file's metadata, typed,
    and the clips it was trained on)."""
    r, meta = job.request, LoraMetadata.from_job(job)
    return {
        "training_type": TRAINING_TYPE,
        "trigger_phrase": meta.trigger_phrase,
        "rank": meta.rank,
        "alpha": meta.rank,
        "reference_downscale_factor": meta.reference_downscale_factor,
        "reference_temporal_scale_factor": meta.reference_temporal_scale_factor,
        "number_of_frames": r.number_of_frames,
        "frame_rate": r.frame_rate,
        "resolution": r.resolution,
        "aspect_ratio": r.aspect_ratio,
        "base_model": meta.base_model,
        "number_of_steps": r.number_of_steps,
        "learning_rate": r.learning_rate,
    }


def local_wandb_dir(run: str) -> str:
    """A node-local folder for the W&B run files of rank 0 (uploaded to outputs at the end)."""
    return os.path.join(tempfile.gettempdir(), "ltx-ray-wandb", run)


def publish(job: JobConfig, store: RunStore, checkpoint) -> dict[str, Any]:
    """Copy the final LoRA out of the last checkpoint and write the config file; returns output URIs.

    The LoRA file is the one `ltx_ray.model.lora.export_lora` wrote into the final checkpoint
    (`CheckpointWriter.submit`), copied byte for byte: the output is the checkpointed LoRA.
    """
    from ltx_ray.train.checkpoint import LORA_FILE

    result: dict[str, Any] = {"lora_file": None, "config_file": None, "video": None, "debug_dataset": None}
    target = store.output(LORA_NAME)
    store.copy(checkpoint.file_uri(LORA_FILE), target)
    result["lora_file"] = target
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / CONFIG_NAME
        cfg.write_text(json.dumps(config_file_content(job), indent=2))
        result["config_file"] = store.upload(cfg, store.output(CONFIG_NAME))
    from ltx_ray.sample.preview import REEL_NAME

    for key, name in (("video", REEL_NAME), ("debug_dataset", DEBUG_NAME)):
        if store.is_file(store.output(name)):
            result[key] = store.output(name)
    return result
