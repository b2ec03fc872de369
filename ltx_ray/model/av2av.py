"""What training, sampling and the memory estimate share about an av2av IC-LoRA, in one place.

- the latent geometry: the video VAE's 8x time / 32x space compression, the audio's 16 kHz, mel hop
  160 and 4x compression (25 latent frames a second); defined beside the resolution buckets
  (`ltx_ray.config.resolution`, which clip fitting, earlier in the data path, needs too);
- `ReferenceScaling`: how the reference is scaled against its target (downscale, temporal factor,
  frame rate), as one value, from the request (`from_request`) or a LoRA's metadata
  (`from_lora_metadata`, `lora.IcLoraFile.scaling`); defined in `ltx_ray.config.scaling` for the
  same reason;
- the sequence positions: each modality's tokens are [clean reference, noised target], their RoPE
  positions built here from the latent shapes and the scaling (`video_sequence_positions`,
  `audio_sequence_positions`, on `ltx_ray.model.tokens`' per-grid positions);
- the model: the transformer with its LoRA as training steps it (`lora.trainable_lora_model`, with
  `lora.LoraSettings`), and the dtype every model of a job is built in (`precision_dtype`).

The training step (`ltx_ray.model.objective`), the sampler (`ltx_ray.sample.sampler`) and the
estimator (`ltx_ray.estimate.memory`) take these values rather than restating them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ltx_ray.config.resolution import (
    AUDIO_HOP_LENGTH,
    AUDIO_LATENT_DOWNSAMPLE,
    AUDIO_LATENTS_PER_SECOND,
    AUDIO_SAMPLE_RATE,
    SPATIAL_COMPRESSION,
    TEMPORAL_COMPRESSION,
    audio_latent_frames,
)
from ltx_ray.config.scaling import ReferenceScaling
from ltx_ray.model.lora import LoraSettings, trainable_lora_model
from ltx_ray.model.tokens import audio_positions, reference_video_positions, video_positions

__all__ = [
    "AUDIO_HOP_LENGTH", "AUDIO_LATENT_DOWNSAMPLE", "AUDIO_LATENTS_PER_SECOND", "AUDIO_SAMPLE_RATE",
    "SPATIAL_COMPRESSION", "TEMPORAL_COMPRESSION", "LoraSettings", "ReferenceScaling", "audio_latent_frames",
    "audio_sequence_positions", "precision_dtype", "trainable_lora_model", "video_sequence_positions",
]


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a `cluster.precision` ("bf16" or "fp32"): what every model of the job is built in."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def video_sequence_positions(reference: Sequence[int], target: Sequence[int], scaling: ReferenceScaling,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """Positions `[B, 3, T_ref + T, 2]` of the video sequence [reference tokens, target tokens].

    `reference` and `target` are the latent shapes `[B, C, F, H, W]` (B from the target). The target
    sits on its own grid at `scaling.frame_rate`; the reference is mapped onto the target's
    coordinates by `scaling` (`tokens.reference_video_positions`).
    """
    b, _, frames, height, width = target
    _, _, ref_frames, ref_height, ref_width = reference
    ref = reference_video_positions(b, ref_frames, ref_height, ref_width, scaling.frame_rate,
                                    downscale_factor=scaling.downscale, temporal_scale_factor=scaling.temporal,
                                    device=device)
    return torch.cat([ref, video_positions(b, frames, height, width, scaling.frame_rate, device=device)], dim=2)


def audio_sequence_positions(reference_frames: int, target_frames: int, batch: int,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """Positions `[B, 1, T_ref + T, 2]` of the audio sequence [reference tokens, target tokens]: both from 0 s."""
    return torch.cat([audio_positions(batch, reference_frames, device=device),
                      audio_positions(batch, target_frames, device=device)], dim=2)
