"""Latents to transformer tokens: patchify, RoPE positions of target and reference tokens, the sigma sampler.

Shared by the training step and the validation sampler. Positions follow
ltx-core's conventions: video `[B, 3, T, 2]` holds `[start, end)` bounds of
time (seconds), height (pixels) and width (pixels) per token, with the causal
first-frame fix of the video VAE; audio `[B, 1, T, 2]` holds time bounds in
seconds. Reference tokens share the target's coordinate origin, so the model
sees reference and target as overlapping views of the same clip.
"""

from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import is_fake

from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier, get_pixel_coords
from ltx_core.model.transformer.modality import Modality
from ltx_core.types import VIDEO_SCALE_FACTORS, AudioLatentShape, VideoLatentShape

from ltx_ray.config.resolution import (
    AUDIO_HOP_LENGTH,
    AUDIO_LATENT_DOWNSAMPLE,
    AUDIO_SAMPLE_RATE,
    SPATIAL_COMPRESSION,
    TEMPORAL_COMPRESSION,
)

# ltx-core's own video VAE factors (time, height, width) are the ones our geometry assumes.
assert tuple(VIDEO_SCALE_FACTORS) == (TEMPORAL_COMPRESSION, SPATIAL_COMPRESSION, SPATIAL_COMPRESSION)

_VIDEO_PATCHIFIER = VideoLatentPatchifier(patch_size=1)
_AUDIO_PATCHIFIER = AudioPatchifier(
    patch_size=1,
    sample_rate=AUDIO_SAMPLE_RATE,
    hop_length=AUDIO_HOP_LENGTH,
    audio_latent_downsample_factor=AUDIO_LATENT_DOWNSAMPLE,
    is_causal=True,
)


def patchify_video(latents: torch.Tensor) -> torch.Tensor:
    """Video latents `[B, C, F, H, W]` to tokens `[B, F*H*W, C]` (frame-major, then rows, then columns)."""
    return _VIDEO_PATCHIFIER.patchify(latents)


def unpatchify_video(tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """Tokens `[B, F*H*W, C]` back to video latents `[B, C, F, H, W]`."""
    b, _, c = tokens.shape
    return _VIDEO_PATCHIFIER.unpatchify(tokens, VideoLatentShape(b, c, frames, height, width))


def patchify_audio(latents: torch.Tensor) -> torch.Tensor:
    """Audio latents `[B, C, T, M]` to tokens `[B, T, C*M]` (one token per latent frame)."""
    return _AUDIO_PATCHIFIER.patchify(latents)


def unpatchify_audio(tokens: torch.Tensor, channels: int, mel_bins: int) -> torch.Tensor:
    """Tokens `[B, T, C*M]` back to audio latents `[B, C, T, M]`."""
    b, t, _ = tokens.shape
    return _AUDIO_PATCHIFIER.unpatchify(tokens, AudioLatentShape(b, channels, t, mel_bins))


def video_positions(
    batch: int, frames: int, height: int, width: int, fps: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Positions `[B, 3, F*H*W, 2]` of a target video latent grid (time in seconds, space in pixels)."""
    coords = _VIDEO_PATCHIFIER.get_patch_grid_bounds(VideoLatentShape(batch, 1, frames, height, width), device=device)
    pixels = get_pixel_coords(coords, VIDEO_SCALE_FACTORS, causal_fix=True).float()
    pixels[:, 0] = pixels[:, 0] / fps
    return pixels


def reference_video_positions(
    batch: int,
    frames: int,
    height: int,
    width: int,
    fps: float,
    *,
    downscale_factor: int = 1,
    temporal_scale_factor: int = 1,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Positions `[B, 3, F*H*W, 2]` of a reference latent grid, mapped onto the target's coordinates.

    Spatial: a reference downscaled by `s` has its pixel h, w bounds multiplied
    by `s`, so it spans the target's full frame. Temporal: a reference that kept
    frame 0 and every `k`-th target frame lives at fps / k; its time bounds are
    then shifted back by (k - 1) / fps (clamped at 0) so that its first and
    last latent frames end where the target's do. This is the mapping of
    ltx-core's `VideoConditionByReferenceLatent(temporal_scale_factor=k)` in
    later ltx-core releases, so LoRAs trained here condition the same way there.
    """
    positions = video_positions(batch, frames, height, width, fps / temporal_scale_factor, device=device)
    if temporal_scale_factor != 1:
        positions[:, 0] = (positions[:, 0] - (temporal_scale_factor - 1) / fps).clamp(min=0)
    if downscale_factor != 1:
        positions[:, 1:] = positions[:, 1:] * downscale_factor
    return positions


def audio_positions(batch: int, frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Positions `[B, 1, T, 2]` of T audio latent frames: time bounds in seconds (25 frames per second)."""
    return _AUDIO_PATCHIFIER.get_patch_grid_bounds(AudioLatentShape(batch, 1, frames, 1), device=device)


def reference_conditioned_modality(
    reference: torch.Tensor,
    target: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor | None,
) -> Modality:
    """One modality's transformer input: [clean reference tokens, target tokens at noise level σ].

    `reference` `[B, T_ref, C]`, `target` `[B, T, C]` (already noised), `positions` for
    both, `sigma` `[B]`. Reference tokens get timestep 0, target tokens σ. Training
    and the validation sampler both build their inputs here, so they cannot drift apart.

    σ and the timesteps stay float32 whatever the latents' dtype, as in the official
    trainer and pipelines: in bf16, σ = 0.5789 would become 0.5781, and the network
    would learn a noise-level embedding out of step with the noise it sees.
    ltx-core embeds them in float32 and casts the embedding to the latents' dtype.

    `context_mask` `[B, L]` is 1 on text tokens to attend to, 0 on masked ones, or None
    for none masked. A mask with no 0 is passed on as None: ltx-core then gives the text cross-attention no
    mask at all, which attends to every token as the all-ones mask does, and lets
    PyTorch's SDPA pick its flash kernel on a GPU (any mask, even all ones, rules it out).
    """
    b, n_ref = reference.shape[:2]
    n_target = target.shape[1]
    dtype, device = target.dtype, target.device
    sigma = sigma.to(device, torch.float32)
    timesteps = torch.cat(
        [torch.zeros(b, n_ref, device=device, dtype=torch.float32), sigma[:, None].expand(b, n_target)], dim=1
    )
    return Modality(
        latent=torch.cat([reference.to(dtype), target], dim=1),
        sigma=sigma,
        timesteps=timesteps,
        positions=positions,
        context=context.to(device, dtype),
        enabled=True,
        context_mask=None if _masks_nothing(context_mask) else context_mask.to(device),
    )


def _masks_nothing(context_mask: torch.Tensor | None) -> bool:
    """True when the mask attends to every text token (None, or no 0 anywhere in a mask on the host).

    Only a CPU mask is read: reading one on the GPU is a host sync that stalls its queue at every
    micro-step, so callers hand it over from the host (`train.batches.collate` does). A mask that
    holds no values (the memory estimator's fake tensors, meta tensors) is kept.
    """
    if context_mask is None:
        return True
    if context_mask.device.type != "cpu" or context_mask.is_meta or is_fake(context_mask):
        return False
    return context_mask.all().tolist()  # a CPU tensor: no device sync


# --- noise levels --------------------------------------------------------------------------------

# A shift that grows linearly with the target token count (0.95 at 1,024 tokens, 2.05 at 4,096, extrapolated).
_SHIFT_TOKENS = (1024, 4096)
_SHIFT_VALUES = (0.95, 2.05)
# Standard-normal quantiles (0.5 % and 99.9 %) the logit-normal is stretched between, so it covers [0, 1].
_LOW_QUANTILE, _HIGH_QUANTILE = -2.5758, 3.0902
_EPS = 1e-3


def sigma_shift(num_tokens: int) -> float:
    """The logit-normal mean for a target of `num_tokens` tokens: more tokens, noisier training."""
    (n0, n1), (s0, s1) = _SHIFT_TOKENS, _SHIFT_VALUES
    return s0 + (s1 - s0) * (num_tokens - n0) / (n1 - n0)


def sample_sigmas(
    batch_size: int,
    num_tokens: int,
    generator: torch.Generator | None = None,
    *,
    std: float = 1.0,
    uniform_prob: float = 0.1,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """σ `[batch_size]` in (0, 1]: a shifted, stretched logit-normal mixed with `uniform_prob` uniform draws.

    The logit-normal mean is `sigma_shift(num_tokens)` (the *target* token
    count); samples are stretched between its 0.5 % and 99.9 % quantiles and
    reflected away from 0. The uniform share keeps every noise level trained.
    """
    mu = sigma_shift(num_tokens)
    normal = torch.randn(batch_size, generator=generator, device=device) * std + mu
    low = 1.0 / (1.0 + math.exp(-(mu + _LOW_QUANTILE * std)))
    high = 1.0 / (1.0 + math.exp(-(mu + _HIGH_QUANTILE * std)))
    stretched = (torch.sigmoid(normal) - low) / (high - low)
    stretched = torch.where(stretched >= _EPS, stretched, 2 * _EPS - stretched).clamp(0.0, 1.0)
    uniform = _EPS + (1.0 - _EPS) * torch.rand(batch_size, generator=generator, device=device)
    pick_uniform = torch.rand(batch_size, generator=generator, device=device) < uniform_prob
    return torch.where(pick_uniform, uniform, stretched)
