"""Batch encoders and decoders on the tiny bundle: shapes, dtypes, no autograd, audio precision."""

import math

import pytest
import torch

from ltx_ray.model import loader
from ltx_ray.model.vae import latents_to_audio, latents_to_video, audio_to_latents, encode_text, video_to_latents


@pytest.fixture(scope="module")
def video_vae(tiny_bundle):
    return loader.load_video_encoder(tiny_bundle.checkpoint), loader.load_video_decoder(tiny_bundle.checkpoint)


def test_encode_video_maps_a_batch_of_frames_to_32x_8x_latents(video_vae):
    encoder, _ = video_vae
    frames = torch.randint(0, 256, (2, 9, 64, 96, 3), dtype=torch.uint8)
    latents = video_to_latents(encoder, frames)
    assert latents.shape == (2, 16, 2, 2, 3)
    assert not latents.requires_grad and torch.isfinite(latents).all()


def test_encode_video_rejects_frame_counts_that_are_not_8k_plus_1(video_vae):
    encoder, _ = video_vae
    with pytest.raises(ValueError, match="F % 8 == 1"):
        video_to_latents(encoder, torch.zeros(1, 8, 32, 32, 3, dtype=torch.uint8))


def test_decode_video_returns_uint8_frames_of_the_pixel_size(video_vae):
    _, decoder = video_vae
    frames = latents_to_video(decoder, torch.randn(1, 16, 2, 1, 2))
    assert frames.shape == (1, 9, 32, 64, 3) and frames.dtype == torch.uint8


def test_encode_audio_gives_25_latent_frames_per_second(tiny_bundle):
    encoder = loader.load_audio_encoder(tiny_bundle.checkpoint)
    waveform = torch.rand(2, 2, 16000) * 2 - 1
    latents = audio_to_latents(encoder, waveform)
    assert latents.shape[:2] == (2, 2) and latents.shape[3] == 16
    assert abs(latents.shape[2] - 25) <= 1


# A bf16 encoder's latents stay within a few bf16 epsilons (2^-8) of the fp32 encoder's, relative to their norm.
BF16_LATENT_TOLERANCE = 4 * 2**-8


def tone(seconds: float = 1.0) -> torch.Tensor:
    """A 440 Hz stereo tone `[1, 2, S]` at 16 kHz: most mel bins hold little energy, as in real audio."""
    t = torch.arange(round(16000 * seconds)) / 16000
    return (0.8 * torch.sin(2 * math.pi * 440 * t)).expand(1, 2, -1).contiguous()


def relative_error(latents: torch.Tensor, reference: torch.Tensor) -> float:
    return ((latents.float() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_encode_audio_refuses_a_half_precision_waveform(tiny_bundle, dtype):
    encoder = loader.load_audio_encoder(tiny_bundle.checkpoint, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="must be float32"):
        audio_to_latents(encoder, tone().to(dtype))


def test_bf16_audio_encoder_on_a_float32_waveform_matches_fp32_to_bf16_error(tiny_bundle):
    reference = audio_to_latents(loader.load_audio_encoder(tiny_bundle.checkpoint), tone())
    bf16_encoder = loader.load_audio_encoder(tiny_bundle.checkpoint, dtype=torch.bfloat16)
    assert relative_error(audio_to_latents(bf16_encoder, tone()), reference) < BF16_LATENT_TOLERANCE
    # The tolerance tells the two apart: a waveform rounded to bf16 first (-48 dB floor in every mel bin) exceeds it.
    rounded_first = audio_to_latents(bf16_encoder, tone().to(torch.bfloat16).float())
    assert relative_error(rounded_first, reference) > BF16_LATENT_TOLERANCE


def test_bf16_encode_stage_gives_audio_latents_within_bf16_error_of_fp32(tiny_bundle):
    import numpy as np

    from ltx_ray.latents.blobs import pack_tensors, unpack_tensors
    from ltx_ray.latents.stages import Encode

    threads = torch.get_num_threads()
    try:  # the actor sets one thread per process; this test process keeps its own
        stage = Encode(tiny_bundle.files, use_gpu=False, precision="bf16")
    finally:
        torch.set_num_threads(threads)
    frames, audio = np.zeros((9, 32, 32, 3), np.uint8), tone()[0].numpy()
    clips = {"reference_video": frames, "target_video": frames, "reference_audio": audio, "target_audio": audio}
    batch = {"name": np.array(["pair"]), "error": np.array([""]), "caption": np.array(["a tone"]),
             "media": np.array([pack_tensors(clips)], dtype=object)}
    latents = unpack_tensors(stage(batch)["latents"][0])
    reference = audio_to_latents(loader.load_audio_encoder(tiny_bundle.checkpoint), tone())[0]
    assert latents["audio"].dtype == torch.bfloat16  # the job's dtype: the encoder did run in bf16
    assert relative_error(latents["audio"], reference) < BF16_LATENT_TOLERANCE
    assert relative_error(latents["ref_audio"], reference) < BF16_LATENT_TOLERANCE


def test_decode_audio_returns_a_stereo_waveform_and_its_rate(tiny_bundle):
    decoder = loader.load_audio_decoder(tiny_bundle.checkpoint)
    vocoder = loader.load_vocoder(tiny_bundle.checkpoint)
    waveform, rate = latents_to_audio(decoder, vocoder, torch.randn(1, 2, 4, 16))
    assert rate == 48000
    assert waveform.shape[:2] == (1, 2) and waveform.shape[2] > 0 and waveform.abs().max() <= 1


def test_encode_text_gives_video_and_audio_context_per_caption(tiny_bundle):
    text = loader.load_text_encoder(tiny_bundle.files, max_length=128)
    ctx = encode_text(text, ["av_st9le a bright square", "quiet rain"])
    assert ctx.video_context.shape == (2, 128, 32)
    assert ctx.audio_context.shape == (2, 128, 32)
    assert ctx.attention_mask.shape == (2, 128)
    assert not torch.equal(ctx.video_context[0], ctx.video_context[1])
