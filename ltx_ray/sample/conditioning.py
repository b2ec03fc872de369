"""A sample's conditioning: a reference clip and a prompt encoded into a `Conditioning`; the validation set.

`ConditioningEncoder` is the one encoder of a `Conditioning`, for the previews' validation set and
for `ltx-ray generate`: the fitted reference through the model's VAE encoders, the prompt and
the negative prompt through its Gemma (Gemma-3 for 2.3, Gemma-4 for 2.5) and the connectors.

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
from ltx_ray.config.schema import JobConfig
from ltx_ray.fetch import fetch
from ltx_ray.clips.media import has_audio
from ltx_ray.errors import DatasetError, Problem
from ltx_ray.model.av2av import ReferenceScaling, precision_dtype
from ltx_ray.sample.sampler import Conditioning

# 2: temporally subsampled references keep frames 0, 1, 1+k, ... (were 0, k, 2k, ...).
VALIDATION_FORMAT = 2


class ConditioningEncoder:
    """The checkpoint's video and audio VAE encoders and its text encoder, loaded once in the job's precision on
    `device`: a fitted reference clip and its prompts in, a `Conditioning` out.

    A context manager: the encoders are freed on leaving it (before the transformer loads, in `generate`).
    """

    def __init__(self, job: JobConfig, device: torch.device):
        from ltx_ray.model.files import model_files
        from ltx_ray.model.loader import load_audio_encoder, load_text_encoder, load_video_encoder

        files, dtype = model_files(job.model, job.storage), precision_dtype(job.cluster.precision)
        self.video = load_video_encoder(files.video_vae, dtype=dtype, device=device)
        self.audio = load_audio_encoder(files.audio_vae, dtype=dtype, device=device)
        self.text = load_text_encoder(files, dtype=dtype, device=device)
        self._prompts: dict[str, object] = {}  # the negative prompt is shared by every sample: encoded once

    def __enter__(self) -> "ConditioningEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.video = self.audio = self.text = None
        self._prompts.clear()

    def encode(self, reference, prompt: str, negative_prompt: str) -> Conditioning:
        """The conditioning of one sample: `reference` (a fitted, scaled `FittedClip`) and its two prompts."""
        from ltx_ray.model.vae import audio_to_latents, video_to_latents

        positive, negative = self._prompt(prompt), self._prompt(negative_prompt)
        return Conditioning(
            ref_video=video_to_latents(self.video, torch.from_numpy(reference.video)[None]).cpu(),
            # The waveform stays float32 into the mel front end; only the encoder runs in the job's dtype.
            ref_audio=audio_to_latents(self.audio, torch.from_numpy(reference.audio)[None]).cpu(),
            video_context=positive.video_context, audio_context=positive.audio_context,
            context_mask=positive.attention_mask,
            negative_video_context=negative.video_context, negative_audio_context=negative.audio_context,
            negative_context_mask=negative.attention_mask,
        )

    def _prompt(self, text: str):
        from ltx_ray.model.vae import TextContext, encode_text

        if text not in self._prompts:
            encoded = encode_text(self.text, [text])
            self._prompts[text] = TextContext(encoded.video_context.cpu(), encoded.audio_context.cpu(),
                                              encoded.attention_mask.cpu())
        return self._prompts[text]


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
    from ltx_ray.clips.ingest import ReferenceFit, fit_reference

    r = job.request
    device = torch.device("cuda" if job.cluster.use_gpu and torch.cuda.is_available() else "cpu")
    fit, scaling = ReferenceFit.validation(r), ReferenceScaling.from_request(r, validation=True)
    tensors: dict[str, torch.Tensor] = {}
    tmp = tempdirs.make("val")
    try:
        with ConditioningEncoder(job, device) as encoder:
            for i, sample in enumerate(r.validation):
                video_path = fetch(sample.reference_video_url, tmp, storage=job.storage)
                audio_path = (fetch(sample.reference_audio_url, tmp, storage=job.storage)
                              if sample.reference_audio_url else None)
                cond = encoder.encode(fit_reference(video_path, audio_path, fit, scaling), sample.prompt,
                                      r.validation_negative_prompt)
                for name in ("ref_video", "ref_audio", "video_context", "audio_context", "context_mask"):
                    tensors[f"{i}.{name}"] = getattr(cond, name)
                for name in ("video_context", "audio_context", "context_mask"):
                    tensors[f"negative_{name}"] = getattr(cond, f"negative_{name}")
                # The reel shows the reference at full size, before the training-time scaling.
                tensors[f"{i}.shown_video"] = torch.from_numpy(fit_reference(video_path, audio_path, fit).video)
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
