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

import pyarrow.fs as pafs

from ltx_ray import __version__
from ltx_ray.config.schema import JobConfig
from ltx_ray.storage import resolve_filesystem, retrying, storage_uri, upload

LORA_NAME = "ic_lora_av2av.safetensors"
CONFIG_NAME = "config.json"
DEBUG_NAME = "debug_dataset.zip"
TRAINING_TYPE = "av2av_ic_lora"


def outputs_uri(job: JobConfig, run: str, name: str = "") -> str:
    """Where an output of this run lands."""
    return storage_uri(job.storage, run, "outputs", *([name] if name else []))


def base_model_name(job: JobConfig) -> str:
    """The base checkpoint's file name, recorded in the LoRA's metadata and config file."""
    return Path(job.model.checkpoint.split("?", 1)[0]).name


def lora_metadata(job: JobConfig) -> dict[str, str]:
    """Metadata strings stored inside the LoRA safetensors file."""
    r = job.request
    return {
        "training_type": TRAINING_TYPE,
        "rank": str(r.rank),
        "alpha": str(r.rank),
        "trigger_phrase": r.trigger_phrase,
        "reference_downscale_factor": str(r.reference_downscale_factor),
        "reference_temporal_scale_factor": str(r.reference_temporal_scale_factor),
        "base_model": base_model_name(job),
        "ltx_ray_version": __version__,
    }


def config_file_content(job: JobConfig) -> dict[str, Any]:
    """The `config_file` output: what a user needs to run the LoRA at inference."""
    r = job.request
    return {
        "training_type": TRAINING_TYPE,
        "trigger_phrase": r.trigger_phrase,
        "rank": r.rank,
        "alpha": r.rank,
        "reference_downscale_factor": r.reference_downscale_factor,
        "reference_temporal_scale_factor": r.reference_temporal_scale_factor,
        "number_of_frames": r.number_of_frames,
        "frame_rate": r.frame_rate,
        "resolution": r.resolution,
        "aspect_ratio": r.aspect_ratio,
        "base_model": base_model_name(job),
        "number_of_steps": r.number_of_steps,
        "learning_rate": r.learning_rate,
    }


def local_wandb_dir(run: str) -> str:
    """A node-local folder for the W&B run files of rank 0 (uploaded to outputs at the end)."""
    return os.path.join(tempfile.gettempdir(), "ltx-ray-wandb", run)


def publish(job: JobConfig, run: str, checkpoint) -> dict[str, Any]:
    """Copy the final LoRA out of the last checkpoint and write the config file; returns output URIs."""
    from ltx_ray.train.checkpoint import LORA_FILE

    result: dict[str, Any] = {"lora_file": None, "config_file": None, "video": None, "debug_dataset": None}
    source, target = checkpoint.file_uri(LORA_FILE), outputs_uri(job, run, LORA_NAME)
    fs, src = resolve_filesystem(source, job.storage)
    _, dst = resolve_filesystem(target, job.storage)

    def copy() -> None:
        fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        fs.copy_file(src, dst)

    retrying(f"copying {source} to {target}", copy, job.storage, where=target)
    result["lora_file"] = target
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / CONFIG_NAME
        cfg.write_text(json.dumps(config_file_content(job), indent=2))
        result["config_file"] = upload(cfg, outputs_uri(job, run, CONFIG_NAME), job.storage)
    from ltx_ray.sample.preview import REEL_NAME

    for key, name in (("video", REEL_NAME), ("debug_dataset", DEBUG_NAME)):
        uri = outputs_uri(job, run, name)
        fs, path = resolve_filesystem(uri, job.storage)
        if retrying(f"looking up {uri}", lambda: fs.get_file_info(path).type, job.storage) == pafs.FileType.File:
            result[key] = uri
    return result
