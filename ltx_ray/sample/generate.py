"""`ltx-ray generate`: run a trained av2av IC-LoRA on a new reference clip, picture and sound.

What a user does next with the LoRA. The reference is fitted and scaled by the
code training and validation use (`fit_reference`, with the factors the LoRA's
metadata records), encoded by the model's VAEs and Gemma (`model.*`, 2.3 or 2.5), the LoRA is
fused into the transformer by ltx-core's own loader at `strength`, and the clip
is sampled by the validation previews' sampler. Every input is checked before
any model is loaded, the LoRA's generation against the model's among them; a refusal is a `UserError`
(exit 2) naming the input.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ltx_ray import tempdirs
from ltx_ray.config.resolution import bucket_size
from ltx_ray.config.schema import JobConfig
from ltx_ray.errors import ConfigError, DatasetError, Problem
from ltx_ray.fetch import fetch
from ltx_ray.model.av2av import ReferenceScaling, precision_dtype
from ltx_ray.sample.conditioning import ConditioningEncoder
from ltx_ray.sample.render import ClipRenderer, release_cached_memory
from ltx_ray.sample.sampler import Clip, sample_av2av, sampler_settings, target_shape
from ltx_ray.storage import is_local, local_path, upload

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
    from ltx_ray.model.files import model_files
    from ltx_ray.model.lora import check_ic_lora

    r = job.request
    tmp = tempdirs.make("generate")
    try:
        # Every refusal comes before any model is loaded.
        files = model_files(job.model, job.storage)
        lora = check_ic_lora(fetch(req.lora, tmp, storage=job.storage), files)
        scaling = lora.scaling(frame_rate=r.validation_frame_rate)
        _check_scaling(job, req.lora, scaling)
        scaled, shown = prepare_reference(job, req, scaling, tmp)
        width, height = bucket_size(r.validation_resolution, r.validation_aspect_ratio)

        # --- models: encoders, then the fused transformer, then the decoders ---------------------
        use_expandable_segments()  # before anything is allocated on the GPU
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        from ltx_ray.model.loader import load_transformer

        dtype = precision_dtype(job.cluster.precision)
        started = time.perf_counter()
        negative = req.negative_prompt if req.negative_prompt is not None else r.validation_negative_prompt
        with ConditioningEncoder(job, device) as encoder:
            cond = encoder.encode(scaled, req.prompt, negative)
        release_cached_memory(device)
        model = load_transformer(job.model.checkpoint, dtype=dtype, device=device,
                                 lora=(lora.path, req.strength)).eval()
        settings = sampler_settings(job, scaling, model)
        clip = Clip(cond, target_shape(r, cond), job.seed if req.seed is None else req.seed)
        log.info("sampling %d steps at %dx%d, %d frames (reference factors %d, %d; LoRA strength %g) on %s",
                 settings.steps, width, height, r.validation_number_of_frames, scaling.downscale, scaling.temporal,
                 req.strength, device)
        video_lat, audio_lat = sample_av2av(model, clip, settings, progress=True)
        del model
        if req.latents_out:
            _save_latents(job, req.latents_out, video_lat, audio_lat, tmp)
        local = local_path(req.out) if is_local(req.out) else tmp / Path(req.out).name
        # The transformer's memory goes back to CUDA before the decoders load.
        release_cached_memory(device)
        ClipRenderer(files, r.validation_frame_rate, device, dtype).write(
            local, [(video_lat, audio_lat)], [shown])
        out = str(local) if is_local(req.out) else upload(local, req.out, job.storage)
        log.info("wrote %s in %.0f s", out, time.perf_counter() - started)
        return out
    finally:
        tempdirs.remove(tmp)


def prepare_reference(job: JobConfig, req: GenerateRequest, scaling: ReferenceScaling, workdir: Path):
    """(the reference fitted and scaled by the LoRA's `scaling`, the unscaled fit's frames for --side-by-side or None).

    The same `fit_reference` as validation, so the reference is cut, resized,
    downscaled and subsampled (frames 0, 1, 1+k, ...) exactly as in training.
    """
    from ltx_ray.clips.ingest import ReferenceFit, fit_reference
    from ltx_ray.clips.media import has_audio, probe

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
    fit = ReferenceFit.validation(job.request)
    scaled = fit_reference(video_path, audio_path, fit, scaling)
    shown = fit_reference(video_path, audio_path, fit).video if req.side_by_side else None
    return scaled, shown


def _save_latents(job: JobConfig, uri: str, video: torch.Tensor, audio: torch.Tensor, tmp: Path) -> str:
    from safetensors.torch import save_file

    local = local_path(uri) if is_local(uri) else tmp / Path(uri).name
    local.parent.mkdir(parents=True, exist_ok=True)
    save_file({"video": video.float().cpu().contiguous(), "audio": audio.float().cpu().contiguous()}, str(local))
    return str(local) if is_local(uri) else upload(local, uri, job.storage)


def _check_scaling(job: JobConfig, name: str, scaling: ReferenceScaling) -> None:
    """Refuse a clip size the LoRA's reference factors cannot scale (the spec's rules, on the validation size)."""
    from ltx_ray.config.schema import downscale_problems, temporal_problems

    r = job.request
    problems = temporal_problems(
        f"{name} (reference_temporal_scale_factor={scaling.temporal})",
        scaling.temporal, {"request.validation_number_of_frames": r.validation_number_of_frames},
    ) + downscale_problems(
        f"{name} (reference_downscale_factor={scaling.downscale})",
        scaling.downscale, {"output": (r.validation_resolution, r.validation_aspect_ratio)},
    )
    if problems:
        raise ConfigError(problems)


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
