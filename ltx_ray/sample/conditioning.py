"""Validation inputs: checked before training, encoded once, read by the previews.

`check_validation_inputs` runs on the driver before any compute: every
reference video is fetched, and one without audio and without a
`reference_audio_url` is refused (the spec's 422). `build_validation_set`
runs once per run as a Ray task (on a GPU node on clusters) and stores, per
sample, the encoded reference video/audio (scaled exactly as in training), the
prompt and negative-prompt embeddings, and the fitted reference for the reel,
in one safetensors file in storage. Rank 0 then needs only the decoders.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ltx_ray import tempdirs
from ltx_ray.config.resolution import bucket_size
from ltx_ray.config.schema import JobConfig
from ltx_ray.fetch import fetch
from ltx_ray.clips.media import has_audio
from ltx_ray.errors import DatasetError, Problem
from ltx_ray.sample.sampler import Conditioning

# 2: temporally subsampled references keep frames 0, 1, 1+k, ... (were 0, k, 2k, ...).
VALIDATION_FORMAT = 2


def check_validation_inputs(job: JobConfig) -> None:
    """Fetch every validation reference and refuse a silent one without a separate audio (before training)."""
    problems: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="ltx-ray-val-") as tmp:
        for i, sample in enumerate(job.request.validation):
            where = f"request.validation[{i}]"
            try:
                video = fetch(sample.reference_video_url, Path(tmp), storage=job.storage)
                if sample.reference_audio_url:
                    fetch(sample.reference_audio_url, Path(tmp), storage=job.storage)
                elif not has_audio(video):
                    problems.append(
                        Problem(
                            f"{where}.reference_video_url",
                            "the reference video has no audio track and no reference_audio_url was given",
                        )
                    )
            except DatasetError as err:
                problems += [Problem(f"{where}: {p.where}", p.message) for p in err.problems]
    if problems:
        raise DatasetError(problems)


def validation_key(job: JobConfig, model_identity: str) -> str:
    """A digest of everything the encoded validation set depends on."""
    r = job.request
    identity = {
        "format": VALIDATION_FORMAT,
        "model": model_identity,
        "samples": [[s.prompt, s.reference_video_url, s.reference_audio_url] for s in r.validation],
        "negative": r.validation_negative_prompt,
        "frames": r.validation_number_of_frames,
        "frame_rate": r.validation_frame_rate,
        "resolution": r.validation_resolution,
        "aspect_ratio": r.validation_aspect_ratio,
        "scale": [r.reference_downscale_factor, r.reference_temporal_scale_factor],
        "audio": [r.audio_normalize, r.audio_preserve_pitch],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def build_validation_set(job: JobConfig, out_file: Path) -> Path:
    """Fit and encode every validation sample into one safetensors file at `out_file`."""
    from ltx_ray.clips.ingest import fit_reference
    from ltx_ray.model.vae import audio_to_latents, encode_text, video_to_latents
    from ltx_ray.model.loader import load_audio_encoder, load_text_encoder, load_video_encoder, precision_dtype

    r = job.request
    device = torch.device("cuda" if job.cluster.use_gpu and torch.cuda.is_available() else "cpu")
    dtype = precision_dtype(job.cluster.precision)
    video_encoder = load_video_encoder(job.model.checkpoint, dtype=dtype, device=device)
    audio_encoder = load_audio_encoder(job.model.checkpoint, dtype=dtype, device=device)
    text_encoder = load_text_encoder(job.model.text_encoder, job.model.checkpoint, dtype=dtype, device=device)
    width, height = bucket_size(r.validation_resolution, r.validation_aspect_ratio)
    tensors: dict[str, torch.Tensor] = {}
    negative = encode_text(text_encoder, [r.validation_negative_prompt])
    tensors["negative_video_context"] = negative.video_context.cpu()
    tensors["negative_audio_context"] = negative.audio_context.cpu()
    tensors["negative_context_mask"] = negative.attention_mask.cpu()
    tmp = tempdirs.make("val")
    try:
        for i, sample in enumerate(r.validation):
            video_path = fetch(sample.reference_video_url, tmp, storage=job.storage)
            audio_path = fetch(sample.reference_audio_url, tmp, storage=job.storage) if sample.reference_audio_url else None
            common = dict(
                width=width, height=height, frames=r.validation_number_of_frames, frame_rate=r.validation_frame_rate,
                auto_scale=r.auto_scale_input, audio_normalize=r.audio_normalize,
                audio_preserve_pitch=r.audio_preserve_pitch,
            )
            scaled = fit_reference(
                video_path, audio_path, downscale_factor=r.reference_downscale_factor,
                temporal_factor=r.reference_temporal_scale_factor, **common,
            )
            # The reel shows the reference at full size, before the training-time scaling.
            shown = fit_reference(video_path, audio_path, **common)
            text = encode_text(text_encoder, [sample.prompt])
            tensors[f"{i}.ref_video"] = video_to_latents(video_encoder, torch.from_numpy(scaled.video)[None]).cpu()
            # The waveform stays float32 into the mel front end; only the encoder runs in `dtype`.
            tensors[f"{i}.ref_audio"] = audio_to_latents(audio_encoder, torch.from_numpy(scaled.audio)[None]).cpu()
            tensors[f"{i}.video_context"] = text.video_context.cpu()
            tensors[f"{i}.audio_context"] = text.audio_context.cpu()
            tensors[f"{i}.context_mask"] = text.attention_mask.cpu()
            tensors[f"{i}.shown_video"] = torch.from_numpy(shown.video)
    finally:
        tempdirs.remove(tmp)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"count": str(len(r.validation)), "prompts": json.dumps([s.prompt for s in r.validation])}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_file), metadata=meta)
    return out_file


def load_validation_set(path: Path) -> list[tuple[str, Conditioning, torch.Tensor]]:
    """(prompt, conditioning, fitted reference frames for the reel) per validation sample."""
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
    out = []
    for i, prompt in enumerate(prompts):
        cond = Conditioning(
            ref_video=tensors[f"{i}.ref_video"],
            ref_audio=tensors[f"{i}.ref_audio"],
            video_context=tensors[f"{i}.video_context"],
            audio_context=tensors[f"{i}.audio_context"],
            context_mask=tensors[f"{i}.context_mask"],
            negative_video_context=tensors["negative_video_context"],
            negative_audio_context=tensors["negative_audio_context"],
            negative_context_mask=tensors["negative_context_mask"],
        )
        out.append((prompt, cond, tensors[f"{i}.shown_video"]))
    return out
