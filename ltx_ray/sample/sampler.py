"""av2av sampling: denoise a target video and its audio together, conditioned on a clean reference.

Per modality the sequence is [reference tokens (clean, timestep 0), target
tokens (noised)], with the positions of training (`ltx_ray.model.tokens`), so
the reference is scaled at inference exactly as it was in training. The
schedule is ltx-core's `LTX2Scheduler` (a token-count-shifted sigma ladder
from 1 to 0, stretched to a terminal of 0.1 before the last step) with
`steps` first-order Euler steps on the velocity. Guidance is ltx-core's
`MultiModalGuider`: classifier-free guidance against the negative prompt and,
when `stg_scale > 0`, spatio-temporal guidance against a pass with the video
and audio self-attention of `stg_blocks` skipped (ltx-core's perturbations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)

from ltx_ray.model.tokens import (
    audio_positions,
    patchify_audio,
    patchify_video,
    reference_conditioned_modality,
    reference_video_positions,
    unpatchify_audio,
    unpatchify_video,
    video_positions,
)

@dataclass
class Conditioning:
    """One validation sample's encoded inputs (batch of 1)."""

    ref_video: torch.Tensor  # [1, C, f_ref, h_ref, w_ref] reference video latents
    ref_audio: torch.Tensor  # [1, C, T_ref, M] reference audio latents
    video_context: torch.Tensor
    audio_context: torch.Tensor
    context_mask: torch.Tensor
    negative_video_context: torch.Tensor
    negative_audio_context: torch.Tensor
    negative_context_mask: torch.Tensor


@dataclass(frozen=True)
class TargetShape:
    """Latent shape of the clip to generate."""

    video_channels: int
    frames: int
    height: int
    width: int
    audio_channels: int
    audio_frames: int
    mel_bins: int


@torch.no_grad()
def sample_av2av(
    model,
    cond: Conditioning,
    shape: TargetShape,
    generator: torch.Generator,
    *,
    frame_rate: float,
    reference_downscale_factor: int = 1,
    reference_temporal_scale_factor: int = 1,
    steps: int,
    cfg_scale: float,
    stg_scale: float,
    stg_blocks: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate (video latents `[1, C, f, h, w]`, audio latents `[1, C, T, M]`) for one reference."""
    param = next(p for p in model.parameters())
    device, dtype = param.device, param.dtype
    ref_v = patchify_video(cond.ref_video.to(device, dtype))
    ref_a = patchify_audio(cond.ref_audio.to(device, dtype))
    _, _, rf, rh, rw = cond.ref_video.shape
    v_pos = torch.cat(
        [
            reference_video_positions(
                1, rf, rh, rw, frame_rate,
                downscale_factor=reference_downscale_factor,
                temporal_scale_factor=reference_temporal_scale_factor,
                device=device,
            ),
            video_positions(1, shape.frames, shape.height, shape.width, frame_rate, device=device),
        ],
        dim=2,
    )
    a_pos = torch.cat(
        [audio_positions(1, cond.ref_audio.shape[2], device=device), audio_positions(1, shape.audio_frames, device=device)],
        dim=2,
    )
    n_video = shape.frames * shape.height * shape.width
    x_v = torch.randn((1, n_video, shape.video_channels), generator=generator, device=device, dtype=torch.float32)
    x_a = torch.randn(
        (1, shape.audio_frames, shape.audio_channels * shape.mel_bins), generator=generator, device=device,
        dtype=torch.float32,
    )
    sigmas = LTX2Scheduler().execute(steps, default_number_of_tokens=n_video).to(device)
    guider = MultiModalGuider(
        MultiModalGuiderParams(cfg_scale=cfg_scale, stg_scale=stg_scale, stg_blocks=stg_blocks)
    )
    skip = _stg_perturbation(stg_blocks)

    def velocity(context_v, context_a, mask, perturbations, sigma):
        sig = sigma.reshape(1)
        v_mod = reference_conditioned_modality(ref_v, x_v.to(dtype), v_pos, sig, context_v, mask)
        a_mod = reference_conditioned_modality(ref_a, x_a.to(dtype), a_pos, sig, context_a, mask)
        v, a = model(video=v_mod, audio=a_mod, perturbations=perturbations)
        return v[:, ref_v.shape[1]:].float(), a[:, ref_a.shape[1]:].float()

    for i in range(steps):
        sigma = sigmas[i]
        cond_v, cond_a = velocity(cond.video_context, cond.audio_context, cond.context_mask, None, sigma)
        uncond_v, uncond_a = cond_v, cond_a
        if guider.do_unconditional_generation():
            uncond_v, uncond_a = velocity(
                cond.negative_video_context, cond.negative_audio_context, cond.negative_context_mask, None, sigma
            )
        pert_v, pert_a = cond_v, cond_a
        if guider.do_perturbed_generation():
            pert_v, pert_a = velocity(cond.video_context, cond.audio_context, cond.context_mask, skip, sigma)
        v = guider.calculate(cond_v, uncond_v, pert_v, 0.0)
        a = guider.calculate(cond_a, uncond_a, pert_a, 0.0)
        dt = sigmas[i + 1] - sigma
        x_v = x_v + dt * v
        x_a = x_a + dt * a

    video = unpatchify_video(x_v, shape.frames, shape.height, shape.width)
    audio = unpatchify_audio(x_a, shape.audio_channels, shape.mel_bins)
    return video, audio


def _stg_perturbation(blocks: list[int] | None) -> BatchedPerturbationConfig:
    return BatchedPerturbationConfig(
        [
            PerturbationConfig(
                [
                    Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, blocks),
                    Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, blocks),
                ]
            )
        ]
    )
