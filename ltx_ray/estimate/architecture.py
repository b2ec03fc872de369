"""What the estimate is of: the model's architecture (from a checkpoint header) and the step's tensor shapes.

The architecture is the `config` JSON of the transformer file's safetensors header
(LTX-2.3's single file; for LTX-2.5, with its VAE files' sections): only the first
8 + n bytes of each file are read, locally or by ranged reads from `s3://` / `gs://` / `http(s)://` (never the 44 GB
body). Without a reachable checkpoint the built-in `LTX23_22B_CONFIG` stands in.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltx_ray.config.resolution import bucket_size
from ltx_ray.config.schema import JobConfig, StorageConfig
from ltx_ray.errors import ModelError, Problem
from ltx_ray.model.av2av import (
    AUDIO_LATENT_DOWNSAMPLE,
    SPATIAL_COMPRESSION,
    TEMPORAL_COMPRESSION,
    ReferenceScaling,
    audio_latent_frames,
)
from ltx_ray.model.header import read_config, read_metadata
from ltx_ray.model.ltx23 import LTX23_22B_CONFIG

BUILTIN_SOURCE = "built-in LTX-2.3 22B configuration (ltx_ray.model.ltx23.LTX23_22B_CONFIG)"

# Padded caption length of the text encoder (ltx_ray.model.loader.load_text_encoder's max_length).
TEXT_TOKENS = 1024



@dataclass(frozen=True)
class Architecture:
    """A checkpoint's `config` and where it came from (a path or URI, or the built-in copy)."""

    config: dict[str, Any]
    source: str

    @property
    def transformer(self) -> dict[str, Any]:
        return self.config["transformer"]


def builtin_architecture() -> Architecture:
    return Architecture(copy.deepcopy(LTX23_22B_CONFIG), BUILTIN_SOURCE)


def read_architecture(checkpoint: str | Path, storage: StorageConfig | None = None) -> Architecture:
    """The `config` of a safetensors header, read by range (only 8 + n bytes) wherever the file lives.

    `storage` gives an S3 endpoint and region (`storage.endpoint_override`). Raises `ModelError` naming the checkpoint when it cannot be reached or is not an LTX-2 checkpoint.
    """
    text = str(checkpoint)
    config = read_config(text, storage)
    if "transformer" not in config:
        raise ModelError(Problem(text, "the 'config' metadata has no 'transformer' section"))
    return Architecture(config, text)


def architecture_for(job: JobConfig) -> tuple[Architecture, str | None]:
    """The job checkpoint's architecture, or the built-in one and why the checkpoint was not read.

    A checkpoint that cannot be reached (no such local file, no network) gives
    the built-in architecture; a local file that is not an LTX-2 checkpoint is
    the user's error (`ModelError`, exit 2).
    """
    text = str(job.model.checkpoint)
    local = "://" not in text or text.startswith("file://")
    if local and not Path(text.removeprefix("file://")).expanduser().is_file():
        return builtin_architecture(), f"{text}: no such file"
    try:
        return _with_component_configs(read_architecture(text, job.storage), job), None
    except ModelError as exc:
        if local:
            raise
        reason = str(exc)
        return builtin_architecture(), reason if len(reason) <= 200 else reason[:197] + "..."


def _with_component_configs(arch: Architecture, job: JobConfig) -> Architecture:
    """LTX-2.5's transformer file holds only {transformer, scheduler}: add its VAE files' sections (`vae`,
    `audio_vae`, `vocoder`) where they can be read; the built-in 2.3 values stand in for the others, and the
    architecture's source says so."""
    missing = [s for s in ("vae", "audio_vae") if s not in arch.config]
    if not missing:
        return arch
    config = dict(arch.config)
    for uri in dict.fromkeys(u for u in (job.model.video_vae, job.model.audio_vae) if u):
        try:
            config = {**json.loads(read_metadata(uri, job.storage).get("config", "{}")), **config}
        except (ModelError, ValueError):
            continue
    stand_ins = [s for s in missing if s not in config]
    for section in stand_ins:
        config[section] = copy.deepcopy(LTX23_22B_CONFIG[section])
    note = f" ({', '.join(stand_ins)}: the built-in LTX-2.3 22B's, the VAE files were not read)" if stand_ins else ""
    return Architecture(config, arch.source + note)


# --- the step's shapes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepShapes:
    """Latent shapes of one sample (no batch dimension) and its token counts."""

    video: tuple[int, int, int, int]  # C, F, H, W (latent)
    ref_video: tuple[int, int, int, int]
    audio: tuple[int, int, int]  # C, T, M
    ref_audio: tuple[int, int, int]
    text_tokens: int
    pixels: tuple[int, int, int]  # frames, height, width of the target clip
    ref_pixels: tuple[int, int, int]
    scaling: ReferenceScaling = ReferenceScaling()  # what made the reference's shapes (and the clips' frame rate)

    @property
    def tokens(self) -> dict[str, int]:
        video = self.video[1] * self.video[2] * self.video[3]
        ref = self.ref_video[1] * self.ref_video[2] * self.ref_video[3]
        return {"video": video, "reference_video": ref, "audio": self.audio[1], "reference_audio": self.ref_audio[1],
                "text": self.text_tokens}


def step_shapes(arch: Architecture, *, resolution: str, aspect_ratio: str, frames: int,
                scaling: ReferenceScaling = ReferenceScaling()) -> StepShapes:
    """Shapes of a training or preview sample at this size and `scaling.frame_rate`, its reference scaled by
    `scaling`."""
    width, height = bucket_size(resolution, aspect_ratio)
    ref_w, ref_h = scaling.size(width, height)
    ref_f = scaling.frames(frames)
    t = arch.transformer
    channels = t.get("in_channels", 128)
    dd = arch.config.get("audio_vae", {}).get("model", {}).get("params", {}).get("ddconfig", {})
    mel = dd.get("mel_bins", 64) // AUDIO_LATENT_DOWNSAMPLE
    audio_channels = t.get("audio_in_channels", 128) // mel

    def latent(f: int, h: int, w: int) -> tuple[int, int, int, int]:
        return channels, (f - 1) // TEMPORAL_COMPRESSION + 1, h // SPATIAL_COMPRESSION, w // SPATIAL_COMPRESSION

    audio = (audio_channels, audio_latent_frames(frames, scaling.frame_rate), mel)
    return StepShapes(latent(frames, height, width), latent(ref_f, ref_h, ref_w), audio, audio, TEXT_TOKENS,
                      (frames, height, width), (ref_f, ref_h, ref_w), scaling)


def training_shapes(job: JobConfig, arch: Architecture) -> StepShapes:
    """The shapes of one training sample of the job."""
    r = job.request
    return step_shapes(arch, resolution=r.resolution, aspect_ratio=r.aspect_ratio, frames=r.number_of_frames,
                       scaling=ReferenceScaling.from_request(r))


def preview_shapes(job: JobConfig, arch: Architecture) -> StepShapes:
    """The shapes of one validation clip of the job."""
    r = job.request
    return step_shapes(arch, resolution=r.validation_resolution, aspect_ratio=r.validation_aspect_ratio,
                       frames=r.validation_number_of_frames, scaling=ReferenceScaling.from_request(r, validation=True))
