"""`ltx-ray generate`: run a trained av2av IC-LoRA on a new reference clip, picture and sound.

What a user does next with the LoRA. The reference is fitted and scaled by the
code training and validation use (`fit_reference`, with the factors the LoRA's
metadata records), encoded by the checkpoint's VAEs and Gemma-3, the LoRA is
fused into the transformer by ltx-core's own loader at `strength`, and the clip
is sampled by the validation previews' sampler. Every input is checked before
any model is loaded; a refusal is a `UserError` (exit 2) naming the input.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltx_ray import tempdirs
from ltx_ray.config.resolution import bucket_size
from ltx_ray.config.schema import JobConfig
from ltx_ray.fetch import fetch
from ltx_ray.errors import ConfigError, DatasetError, Problem
from ltx_ray.storage import is_local, local_path, upload
from ltx_ray.sample.sampler import Conditioning, guidance_from_config, sample_av2av, target_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateRequest:
    """The command line of `ltx-ray generate` (frames, resolution, steps, guidance come from the config)."""

    lora: str
    reference_video: str
    prompt: str
    reference_audio: str | None = None
    negative_prompt: str | None = None  # None: the config's validation_negative_prompt
    strength: float = 1.0
    seed: int | None = None  # None: the config's seed
    out: str = "generated.mp4"
    side_by_side: bool = False
    latents_out: str | None = None  # also save the generated latents (safetensors: video, audio)


def generate(job: JobConfig, req: GenerateRequest) -> str:
    """Generate one clip (video + audio) from `req.reference_video` with the LoRA; returns the mp4's path or URI."""
    from ltx_ray.model.lora import check_ic_lora

    r = job.request
    tmp = tempdirs.make("generate")
    try:
        # Every refusal comes before any model is loaded.
        lora = check_ic_lora(fetch(req.lora, tmp, storage=job.storage), job.model.checkpoint)
        _check_scaling(job, req.lora, lora)
        scaled, shown = prepare_reference(job, req, lora, tmp)
        width, height = bucket_size(r.validation_resolution, r.validation_aspect_ratio)

        # --- models: encoders, then the fused transformer, then the decoders ---------------------
        use_expandable_segments()  # before anything is allocated on the GPU
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        from ltx_ray.model.loader import load_transformer, precision_dtype

        dtype = precision_dtype(job.cluster.precision)
        started = time.perf_counter()
        cond = _encode(job, scaled, req, device, dtype)
        model = load_transformer(job.model.checkpoint, dtype=dtype, device=device,
                                 lora=(lora.path, req.strength)).eval()
        shape = target_shape(r, cond)
        seed = job.seed if req.seed is None else req.seed
        generator = torch.Generator(device=device).manual_seed(seed)
        log.info("sampling %d steps at %dx%d, %d frames (reference factors %d, %d; LoRA strength %g) on %s",
                 job.train.validation_inference_steps, width, height, r.validation_number_of_frames,
                 lora.reference_downscale_factor, lora.reference_temporal_scale_factor, req.strength, device)
        video_lat, audio_lat = sample_av2av(
            model, cond, shape, generator,
            frame_rate=float(r.validation_frame_rate),
            reference_downscale_factor=lora.reference_downscale_factor,
            reference_temporal_scale_factor=lora.reference_temporal_scale_factor,
            steps=job.train.validation_inference_steps,
            guidance=guidance_from_config(job, model),
            progress=True,
        )
        del model
        if req.latents_out:
            _save_latents(job, req.latents_out, video_lat, audio_lat, tmp)
        local = local_path(req.out) if is_local(req.out) else tmp / Path(req.out).name
        _write(job, local, video_lat, audio_lat, shown, device, dtype)
        out = str(local) if is_local(req.out) else upload(local, req.out, job.storage)
        log.info("wrote %s in %.0f s", out, time.perf_counter() - started)
        return out
    finally:
        tempdirs.remove(tmp)


def prepare_reference(job: JobConfig, req: GenerateRequest, lora, workdir: Path):
    """(the reference fitted and scaled by the LoRA's factors, the unscaled fit for --side-by-side or None).

    The same `fit_reference` as validation, so the reference is cut, resized,
    downscaled and subsampled (frames 0, 1, 1+k, ...) exactly as in training.
    """
    from ltx_ray.clips.ingest import fit_reference
    from ltx_ray.clips.media import has_audio, probe

    r = job.request
    video_path = fetch(req.reference_video, workdir, storage=job.storage)
    probe(video_path, label=req.reference_video)
    audio_path = None
    if req.reference_audio:
        audio_path = fetch(req.reference_audio, workdir, storage=job.storage)
        if not has_audio(audio_path):
            raise DatasetError(Problem(req.reference_audio, "has no audio track"))
    elif not has_audio(video_path):
        raise DatasetError(Problem(req.reference_video, "the reference video has no audio track: "
                                                        "give its sound with --reference-audio"))
    width, height = bucket_size(r.validation_resolution, r.validation_aspect_ratio)
    common = dict(width=width, height=height, frames=r.validation_number_of_frames,
                  frame_rate=r.validation_frame_rate, auto_scale=r.auto_scale_input,
                  audio_normalize=r.audio_normalize, audio_preserve_pitch=r.audio_preserve_pitch)
    scaled = fit_reference(video_path, audio_path, downscale_factor=lora.reference_downscale_factor,
                           temporal_factor=lora.reference_temporal_scale_factor, **common)
    shown = fit_reference(video_path, audio_path, **common).video if req.side_by_side else None
    return scaled, shown


def _save_latents(job: JobConfig, uri: str, video: torch.Tensor, audio: torch.Tensor, tmp: Path) -> str:
    from safetensors.torch import save_file

    local = local_path(uri) if is_local(uri) else tmp / Path(uri).name
    local.parent.mkdir(parents=True, exist_ok=True)
    save_file({"video": video.float().cpu().contiguous(), "audio": audio.float().cpu().contiguous()}, str(local))
    return str(local) if is_local(uri) else upload(local, uri, job.storage)


def _check_scaling(job: JobConfig, name: str, lora) -> None:
    """Refuse a clip size the LoRA's reference factors cannot scale (the spec's rules, on the validation size)."""
    from ltx_ray.config.load import downscale_problems, temporal_problems

    r = job.request
    problems = temporal_problems(
        f"{name} (reference_temporal_scale_factor={lora.reference_temporal_scale_factor})",
        lora.reference_temporal_scale_factor, {"request.validation_number_of_frames": r.validation_number_of_frames},
    ) + downscale_problems(
        f"{name} (reference_downscale_factor={lora.reference_downscale_factor})",
        lora.reference_downscale_factor, {"output": (r.validation_resolution, r.validation_aspect_ratio)},
    )
    if problems:
        raise ConfigError(problems)


def _encode(job: JobConfig, scaled, req: GenerateRequest, device, dtype) -> Conditioning:
    from ltx_ray.model.vae import audio_to_latents, encode_text, video_to_latents
    from ltx_ray.model.loader import load_audio_encoder, load_text_encoder, load_video_encoder

    ckpt = job.model.checkpoint
    video = video_to_latents(load_video_encoder(ckpt, dtype=dtype, device=device), torch.from_numpy(scaled.video)[None])
    # The waveform stays float32 into the mel front end; only the encoder runs in `dtype`.
    audio = audio_to_latents(load_audio_encoder(ckpt, dtype=dtype, device=device), torch.from_numpy(scaled.audio)[None])
    text_encoder = load_text_encoder(job.model.text_encoder, ckpt, dtype=dtype, device=device)
    negative = req.negative_prompt if req.negative_prompt is not None else job.request.validation_negative_prompt
    pos, neg = encode_text(text_encoder, [req.prompt]), encode_text(text_encoder, [negative])
    del text_encoder
    return Conditioning(
        ref_video=video, ref_audio=audio,
        video_context=pos.video_context, audio_context=pos.audio_context, context_mask=pos.attention_mask,
        negative_video_context=neg.video_context, negative_audio_context=neg.audio_context,
        negative_context_mask=neg.attention_mask,
    )


def _write(job: JobConfig, out: Path, video_lat, audio_lat, shown: np.ndarray | None, device, dtype) -> Path:
    """Decode (the video tile by tile, each decoder loaded for its turn and freed after it) and write the mp4.

    The caller has dropped the transformer: its memory goes back to CUDA before the decoders load.
    """
    from ltx_ray.clips.media import write_clip
    from ltx_ray.sample.preview import decode_clips, fit_audio_length, release_cached_memory

    release_cached_memory(device)
    [(frames, waveform)], sample_rate = decode_clips(job.model.checkpoint, [(video_lat, audio_lat)], device, dtype)
    rate = float(job.request.validation_frame_rate)
    audio = fit_audio_length(waveform, round(len(frames) / rate * sample_rate))
    if shown is not None:
        frames = np.concatenate([shown[: len(frames)], frames], axis=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_clip(out, frames, rate, audio, sample_rate)


# Growable segments keep the caching allocator from fragmenting between the transformer's blocks and
# the encoders' and decoders' differently sized ones.
CUDA_ALLOC_CONF = "expandable_segments:True"


def use_expandable_segments() -> None:
    """`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`, unless the user set an allocator, before CUDA is used.

    torch 2.9 reads the variable when its caching allocator first needs its settings (the first
    CUDA use), so setting it here, after the CLI imported torch, is in time; a torch that read it
    at import is handed the setting directly. The variable `PYTORCH_ALLOC_CONF`, torch 2.9's new
    name, also counts as the user's choice.
    """
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = CUDA_ALLOC_CONF
    if torch.cuda.is_available():
        torch.cuda.memory._set_allocator_settings(CUDA_ALLOC_CONF)
