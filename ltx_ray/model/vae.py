"""Batch encoders and decoders: frames, waveforms and captions to latents, and latents back to media.

Each function runs the ltx-core module in eval mode under `torch.inference_mode()`,
on the module's own device and dtype, and takes or returns a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ltx_ray.config.resolution import AUDIO_SAMPLE_RATE
from ltx_ray.model.loader import TextEncoder


@dataclass(frozen=True)
class TextContext:
    """Encoded captions: per-token context for the video and audio branches and the token mask.

    `video_context` `[B, T, Dv]`, `audio_context` `[B, T, Da]` (Dv, Da: the
    transformer's inner dims; T: the tokenizer's `max_length`), `attention_mask`
    `[B, T]` int64 as ltx-core's connectors return it: they replace padding by
    learnable registers, so with LTX-2.3 every position is valid (all ones).
    """

    video_context: torch.Tensor
    audio_context: torch.Tensor
    attention_mask: torch.Tensor


def video_to_latents(encoder, frames: torch.Tensor) -> torch.Tensor:
    """Frames uint8 `[B, F, H, W, 3]` (F % 8 == 1; H, W multiples of 32) to latents `[B, C, (F-1)/8+1, H/32, W/32]`.

    C is the checkpoint's latent channel count (128 for LTX-2.3, 16 for the tiny bundle).
    """
    _check_frames(frames)
    param = next(encoder.parameters())
    encoder.eval()
    with torch.inference_mode():
        pixels = frames.to(param.device).permute(0, 4, 1, 2, 3).to(param.dtype) / 127.5 - 1.0
        return encoder(pixels)


def validation_tiling():
    """The official validation's tiling (ltx-trainer's `TiledDecodingConfig` defaults) as an ltx-core `TilingConfig`.

    Tiles of 192 px overlapping by 64 px, and of 48 frames overlapping by 24: small enough that
    decoding a 960x960x121 clip fits beside the 22B base on a training GPU.
    """
    from ltx_core.model.video_vae import SpatialTilingConfig, TemporalTilingConfig, TilingConfig

    return TilingConfig(spatial_config=SpatialTilingConfig(tile_size_in_pixels=192, tile_overlap_in_pixels=64),
                        temporal_config=TemporalTilingConfig(tile_size_in_frames=48, tile_overlap_in_frames=24))


def latents_to_video(decoder, latents: torch.Tensor, generator: torch.Generator | None = None,
                     tiling=None) -> torch.Tensor:
    """Latents `[B, C, f, h, w]` to frames uint8 `[B, 8(f-1)+1, 32h, 32w, 3]`.

    A clip larger than one tile of `tiling` (an ltx-core `TilingConfig`; None: `validation_tiling()`)
    is decoded tile by tile by ltx-core's `VideoDecoder.tiled_decode`, which blends overlapping
    tiles: near the seams the pixels differ from one whole-clip call's, since each tile's
    convolutions see only that tile. A clip that fits in one tile (or `TilingConfig()`, no tiling)
    is decoded in one call.
    """
    from dataclasses import replace

    from ltx_core.model.video_vae import TemporalTilingConfig

    param = next(decoder.parameters())
    decoder.eval()
    tiling = validation_tiling() if tiling is None else tiling
    if tiling.temporal_config is None:  # ltx-core 1.0.0's tiled_decode needs one: a tile as long as the clip
        tiling = replace(tiling, temporal_config=TemporalTilingConfig(max(16, 8 * latents.shape[2]), 0))
    with torch.inference_mode():
        latents = latents.to(param.device, param.dtype)
        if _fits_one_tile(decoder, latents, tiling):
            chunks = [decoder(latents, generator=generator)]
        else:  # chunks of frames, in order; each becomes uint8 as it comes, so the float clip is never whole
            chunks = decoder.tiled_decode(latents, tiling, generator=generator)
        frames = torch.cat([((c.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8) for c in chunks], 2)
        return frames.permute(0, 2, 3, 4, 1).contiguous()


def _fits_one_tile(decoder, latents: torch.Tensor, tiling) -> bool:
    """Whether ltx-core's tiling would cut these latents at all (its `VideoDecoder._prepare_tiles` rule).

    A spatial tile spans `tile_size_in_pixels` on the longer side (the shorter side's tile is scaled
    to the clip's aspect), so nothing is cut when the longer side fits; a temporal tile spans
    `tile_size_in_frames` / 8 latent frames.
    """
    factors = decoder.video_downscale_factors
    _, _, frames, height, width = latents.shape
    spatial, temporal = tiling.spatial_config, tiling.temporal_config
    return ((spatial is None or max(height, width) <= spatial.tile_size_in_pixels // factors.height)
            and (temporal is None or frames <= temporal.tile_size_in_frames // factors.time))


def audio_to_latents(audio_encoder, waveform: torch.Tensor, sample_rate: int = AUDIO_SAMPLE_RATE) -> torch.Tensor:
    """Stereo waveform float32 `[B, 2, S]` in [-1, 1] to audio latents `[B, C, T, M]` via ltx-core's mel front end.

    T = 25 latent frames per second of audio (16 kHz, mel hop 160, 4x); for
    LTX-2.3 C = 8 channels and M = 16 mel bins (tiny bundle: C = 2).
    Other sample rates are resampled by ltx-core's `AudioProcessor`.
    Pass the waveform as decoded, whatever the encoder's dtype: a bf16 or fp16
    waveform is refused (ValueError), since its 8- or 11-bit mantissa has already
    put a noise floor (~-48 dB for bf16) into every mel bin.
    """
    from ltx_core.model.audio_vae import encode_audio as ltx_encode_audio
    from ltx_core.types import Audio

    if waveform.ndim != 3 or waveform.shape[1] != 2:
        raise ValueError(f"waveform must be [B, 2, S] stereo, got {tuple(waveform.shape)}")
    if waveform.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"waveform must be float32 (cast the encoder, not the audio), got {waveform.dtype}")
    param = next(audio_encoder.parameters())
    audio_encoder.eval()
    with torch.inference_mode():
        # The mel front end runs in float32 whatever the encoder's dtype; only the log-mel is cast to it.
        audio = Audio(waveform=waveform.to(param.device, torch.float32), sampling_rate=sample_rate)
        return ltx_encode_audio(audio, audio_encoder)


def latents_to_audio(audio_decoder, vocoder, latents: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Audio latents `[B, C, T, M]` to (stereo waveform float32 `[B, 2, S]`, its sample rate)."""
    param = next(audio_decoder.parameters())
    audio_decoder.eval()
    vocoder.eval()
    with torch.inference_mode():
        mel = audio_decoder(latents.to(param.device, param.dtype))
        vocoder_param = next(vocoder.parameters())
        waveform = vocoder(mel.to(vocoder_param.device, vocoder_param.dtype)).float()
    return waveform, int(vocoder.output_sampling_rate)


def encode_text(text_encoder: TextEncoder, captions: list[str]) -> TextContext:
    """Captions to video/audio context and mask, with the job's Gemma (Gemma-3 for 2.3, Gemma-4 for
    2.5) and ltx-core's embedding connectors.

    Captions are encoded one at a time: ltx-core's tokenizer wrapper and the
    connectors' register substitution handle a single sequence.
    """
    text_encoder.eval()
    video, audio, masks = [], [], []
    with torch.inference_mode():
        for caption in captions:
            hidden_states, mask = text_encoder.gemma.encode(caption)
            out = text_encoder.embeddings.process_hidden_states(hidden_states, mask)
            video.append(out.video_encoding)
            audio.append(out.audio_encoding)
            masks.append(out.attention_mask.to(torch.int64))
    return TextContext(torch.cat(video), torch.cat(audio), torch.cat(masks))


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [B, F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    _, f, h, w, _ = frames.shape
    if f % 8 != 1 or h % 32 or w % 32:
        raise ValueError(f"frames need F % 8 == 1 and H, W multiples of 32, got F={f}, H={h}, W={w}")
