"""The base model's files, which generation of LTX they are (2.3 or 2.5), and whether they belong together.

LTX-2.3 is published as one file holding every component (transformer, text connectors and the
projection of Gemma's features, video VAE, audio VAE, vocoder) beside a Gemma-3 directory. LTX-2.5
is published as one file per component (`huggingface.co/Lightricks/LTX-2.5`): the transformer (with
the text connectors), the video VAE, the audio VAE with the vocoder, and a Gemma-4 12B packed in one
safetensors file together with the projection of its features. A job names them in `model.*`:
`checkpoint` (the transformer, or 2.3's single file), `video_vae`, `audio_vae` (empty for 2.3:
the single file) and `text_encoder`.

The generation is read from the transformer file's own metadata, never set by a flag: its
`model_version` ("2.5.0"), parsed as the official `ltx_core.loader.parse_model_version` does, with
the official floor of 2.4.0 for the Gemma-4 generation (`encoder_configurator.py`,
`_GEMMA_SOURCE_CHECKPOINT_REQUIRED_SINCE`); a file that states no version is a 2.3 one. A set whose
files are of different generations (a 2.3 VAE, a Gemma-3 directory with a 2.5 transformer) is
refused before any compute (`ModelError`, exit 2), naming the field.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltx_ray.errors import ModelError, Problem
from ltx_ray.model.header import read_metadata

log = logging.getLogger(__name__)

LTX23, LTX25 = "2.3", "2.5"
# The official floor of the Gemma-4 generation (ltx-core 1.2.0, encoder_configurator.py).
_GEMMA4_SINCE = (2, 4, 0)


def parse_model_version(version: str | None) -> tuple[int, ...]:
    """A `model_version` as comparable numbers, up to its first non-numeric part ("2.3.0-tiny" -> (2, 3, 0)).

    As the official `ltx_core.loader.parse_model_version`, with ltx-pipelines' `detect_model_version`
    normalisation of "-" to ".".
    """
    numbers = []
    for part in (version or "").replace("-", ".").split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def generation_of(metadata: dict[str, str]) -> str:
    """"2.5" for a file whose `model_version` is 2.4.0 or later (the Gemma-4 models), else "2.3"."""
    return LTX25 if parse_model_version(metadata.get("model_version")) >= _GEMMA4_SINCE else LTX23


@dataclass(frozen=True)
class ModelFiles:
    """Where each component of the base model is read from, and the generation they are."""

    generation: str  # "2.3" or "2.5"
    model_version: str  # as the transformer file states it ("" when it states none)
    transformer: str
    video_vae: str
    audio_vae: str  # the audio VAE and the vocoder
    text_encoder: str  # a Gemma-3 directory (2.3); a packed Gemma-4 file or a Gemma-4 directory (2.5)
    text_projection: str  # the file with `text_embedding_projection.*`: 2.3's single file, 2.5's packed Gemma-4
    text_encoder_version: str  # "gemma-3" (2.3), or the packed Gemma-4's `gemma_version` (2.5)

    @property
    def label(self) -> str:
        """"LTX-2.3" / "LTX-2.5", for messages and names."""
        return f"LTX-{self.generation}"


def model_files(model, storage=None) -> ModelFiles:
    """The job's `model.*` (a `ModelConfig`) as a checked set of files; raises `ModelError` on a mismatched set.

    Reads only headers (by range for remote files), once per process for a given set (the driver, each
    worker): a run does not go back to the storage for them at every checkpoint or preview. A transformer
    file that cannot be read yet is taken for LTX-2.3's single file when no VAE file is named (its loader
    names the problem); with VAE files named (LTX-2.5), its read error is the answer.
    """
    endpoint = getattr(storage, "endpoint_override", None) if storage is not None else None
    key = (str(model.checkpoint), str(model.video_vae or ""), str(model.audio_vae or ""), str(model.text_encoder),
           endpoint)
    if key not in _CHECKED:
        _CHECKED[key] = _check(model, storage)
    return _CHECKED[key]


_CHECKED: dict[tuple, ModelFiles] = {}


def _check(model, storage) -> ModelFiles:
    checkpoint = str(model.checkpoint)
    try:
        meta = read_metadata(checkpoint, storage)
    except ModelError as exc:
        if model.video_vae or model.audio_vae:
            raise
        log.debug("model.checkpoint not readable for its version (%s): taken for LTX-2.3", exc)
        meta = {}
    if generation_of(meta) == LTX23:
        return _ltx23_files(model, meta, storage)
    return _ltx25_files(model, meta, storage)


def _ltx23_files(model, meta: dict[str, str], storage) -> ModelFiles:
    checkpoint = str(model.checkpoint)
    for field in ("video_vae", "audio_vae"):
        value = getattr(model, field)
        if value and value != checkpoint:
            raise ModelError(Problem(f"model.{field}", f"{value}: LTX-2.3's single file ({Path(checkpoint).name}) "
                                     "holds its VAEs; leave model." + field + " empty"))
    text = str(model.text_encoder)
    kind = _gemma_kind(gemma_config_of(text, storage))
    if kind not in (None, "gemma3"):
        raise ModelError(Problem("model.text_encoder", f"{text} is a {kind} text encoder; the LTX-2.3 "
                                 f"transformer {Path(checkpoint).name} runs on Gemma-3 (a gemma-3-12b-it directory)"))
    return ModelFiles(generation=LTX23, model_version=meta.get("model_version", ""), transformer=checkpoint,
                      video_vae=checkpoint, audio_vae=checkpoint, text_encoder=text, text_projection=checkpoint,
                      text_encoder_version="gemma-3")


# The sections each LTX-2.5 component file's `config` holds, and the class of the video VAE ltx-core 1.0.0
# builds (the convolutional decoder; 1.2.0's `is_diffusion_video_vae` tells the other from `_class_name`).
_SECTIONS = {"video_vae": ("vae",), "audio_vae": ("audio_vae", "vocoder")}
_CONV_VAE = "CausalVideoAutoencoder"


def _ltx25_files(model, meta: dict[str, str], storage) -> ModelFiles:
    checkpoint = str(model.checkpoint)
    name = Path(checkpoint).name
    version = meta.get("model_version", "")
    for field, what in (("video_vae", "the video VAE"), ("audio_vae", "the audio VAE and vocoder")):
        value = getattr(model, field)
        if not value:
            raise ModelError(Problem(f"model.{field}", f"{name} is an LTX-{LTX25} transformer ({version}), published "
                                     f"without its VAEs: set model.{field} to {what}'s file"))
        try:
            other = read_metadata(value, storage)
        except ModelError:
            continue  # not reachable yet: its loader names the problem
        _check_component(field, value, other, name, version)
    text = str(model.text_encoder)
    config = gemma_config_of(text, storage)
    kind = _gemma_kind(config)
    if kind == "gemma3":
        raise ModelError(Problem("model.text_encoder", f"{text} is a Gemma-3; the LTX-{LTX25} transformer {name} "
                                 "runs on Gemma-4 (the packed gemma4-12b-with-proj-ltx-2.5-bf16.safetensors)"))
    if not text.endswith(".safetensors"):
        raise ModelError(Problem("model.text_encoder", f"{text}: LTX-{LTX25}'s text encoder is one packed file with "
                                 "the projection of its features (gemma4-12b-with-proj-ltx-2.5-bf16.safetensors)"))
    # As the official `_check_gemma_version`: a transformer naming its Gemma takes that Gemma only.
    expected = _expected_gemma_version(meta)
    actual = (config or {}).get("gemma_version")
    if expected and config is not None and actual != expected:
        raise ModelError(Problem("model.text_encoder", f"{text} is Gemma version {actual!r}; {name} was trained "
                                 f"on {expected!r} (its gemma_source_checkpoint)"))
    return ModelFiles(generation=LTX25, model_version=version, transformer=checkpoint, video_vae=str(model.video_vae),
                      audio_vae=str(model.audio_vae), text_encoder=text, text_projection=text,
                      text_encoder_version=actual or expected or "gemma-4")


def _check_component(field: str, uri: str, meta: dict[str, str], transformer: str, version: str) -> None:
    """Refuse an LTX-2.5 VAE file that is of 2.3, of the other component, or the diffusion-decoder video VAE."""
    config = _config(meta)
    stated = parse_model_version(meta.get("model_version"))
    if "transformer" in config or (stated and generation_of(meta) != LTX25):
        found = meta.get("model_version") or "LTX-2.3's single file"
        raise ModelError(Problem(f"model.{field}", f"{uri} is not an LTX-{LTX25} file ({found}); "
                                 f"{transformer} is LTX-{LTX25} ({version})"))
    lacking = [s for s in _SECTIONS[field] if s not in config]
    if lacking:
        raise ModelError(Problem(f"model.{field}", f"{uri} has no {', '.join(lacking)} config (has: {sorted(config)}): "
                                 f"not the {'video VAE' if field == 'video_vae' else 'audio VAE and vocoder'}'s file"))
    kind = config.get("vae", {}).get("_class_name", _CONV_VAE) if field == "video_vae" else _CONV_VAE
    if kind != _CONV_VAE:
        raise ModelError(Problem("model.video_vae", f"{uri} is the diffusion-decoder video VAE ({kind}); use the "
                                 "convolutional one (ltx-2.5-video-vae-conv-bf16.safetensors)"))


def _config(meta: dict[str, str]) -> dict[str, Any]:
    try:
        config = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError:
        return {}
    return config if isinstance(config, dict) else {}


def _expected_gemma_version(meta: dict[str, str]) -> str | None:
    """The `gemma_version` a 2.5 transformer names in its `gemma_source_checkpoint` metadata."""
    raw = meta.get("gemma_source_checkpoint")
    if not raw:
        return None
    try:
        source = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return None
    return source.get("gemma_version") if isinstance(source, dict) else None


def _gemma_kind(config: dict[str, Any] | None) -> str | None:
    """"gemma3" / "gemma4" (or another model_type) of a Gemma's HF config; None when it could not be read."""
    if config is None:
        return None
    model_type = str(config.get("model_type", ""))
    return "gemma4" if model_type.startswith("gemma4") else "gemma3" if model_type.startswith("gemma3") else model_type


def gemma_config_of(text: str, storage=None) -> dict[str, Any] | None:
    """The HF config of a text encoder: a local directory's config.json, or a packed file's `gemma_config` header
    metadata (local or remote, read by range); None when it cannot be read (a remote directory, no network)."""
    local = "://" not in text or text.startswith("file://")
    path = Path(text.removeprefix("file://")).expanduser() if local else None
    try:
        if path is not None and path.is_dir():
            return json.loads((path / "config.json").read_text())
        if text.endswith(".safetensors") or (path is not None and path.is_file()):
            raw = read_metadata(text, storage).get("gemma_config")
            return json.loads(raw) if raw else None
    except (OSError, ValueError, ModelError):
        return None
    return None
