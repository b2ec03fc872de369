"""Batch encoders and decoders on the tiny bundle: shapes, dtypes, no autograd."""

import pytest
import torch

from ltx_ray.model import loader
from ltx_ray.model.encode import decode_audio, decode_video, encode_audio, encode_text, encode_video


@pytest.fixture(scope="module")
def video_vae(tiny_bundle):
    return loader.load_video_encoder(tiny_bundle.checkpoint), loader.load_video_decoder(tiny_bundle.checkpoint)


def test_encode_video_maps_a_batch_of_frames_to_32x_8x_latents(video_vae):
    encoder, _ = video_vae
    frames = torch.randint(0, 256, (2, 9, 64, 96, 3), dtype=torch.uint8)
    latents = encode_video(encoder, frames)
    assert latents.shape == (2, 16, 2, 2, 3)
    assert not latents.requires_grad and torch.isfinite(latents).all()


def test_encode_video_rejects_frame_counts_that_are_not_8k_plus_1(video_vae):
    encoder, _ = video_vae
    with pytest.raises(ValueError, match="F % 8 == 1"):
        encode_video(encoder, torch.zeros(1, 8, 32, 32, 3, dtype=torch.uint8))


def test_decode_video_returns_uint8_frames_of_the_pixel_size(video_vae):
    _, decoder = video_vae
    frames = decode_video(decoder, torch.randn(1, 16, 2, 1, 2))
    assert frames.shape == (1, 9, 32, 64, 3) and frames.dtype == torch.uint8


def test_encode_audio_gives_25_latent_frames_per_second(tiny_bundle):
    encoder = loader.load_audio_encoder(tiny_bundle.checkpoint)
    waveform = torch.rand(2, 2, 16000) * 2 - 1
    latents = encode_audio(encoder, waveform)
    assert latents.shape[:2] == (2, 2) and latents.shape[3] == 16
    assert abs(latents.shape[2] - 25) <= 1


def test_decode_audio_returns_a_stereo_waveform_and_its_rate(tiny_bundle):
    decoder = loader.load_audio_decoder(tiny_bundle.checkpoint)
    vocoder = loader.load_vocoder(tiny_bundle.checkpoint)
    waveform, rate = decode_audio(decoder, vocoder, torch.randn(1, 2, 4, 16))
    assert rate == 48000
    assert waveform.shape[:2] == (1, 2) and waveform.shape[2] > 0 and waveform.abs().max() <= 1


def test_encode_text_gives_video_and_audio_context_per_caption(tiny_bundle):
    text = loader.load_text_encoder(tiny_bundle.gemma_dir, tiny_bundle.checkpoint, max_length=128)
    ctx = encode_text(text, ["av_st9le a bright square", "quiet rain"])
    assert ctx.video_context.shape == (2, 128, 32)
    assert ctx.audio_context.shape == (2, 128, 32)
    assert ctx.attention_mask.shape == (2, 128)
    assert not torch.equal(ctx.video_context[0], ctx.video_context[1])
