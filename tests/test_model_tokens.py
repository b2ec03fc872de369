"""Reference positions map onto the target's coordinates; σ follows the shifted logit-normal mixture;
an all-ones text mask reaches the transformer as no mask."""

from dataclasses import replace

import torch

from ltx_ray.model import loader
from ltx_ray.model.objective import av2av_inputs
from ltx_ray.model.tokens import (
    audio_positions,
    patchify_audio,
    patchify_video,
    reference_conditioned_modality,
    reference_video_positions,
    sample_sigmas,
    sigma_shift,
    unpatchify_audio,
    unpatchify_video,
    video_positions,
)

FPS = 24.0


def test_reference_positions_equal_target_positions_for_factor_1():
    target = video_positions(1, 3, 4, 6, FPS)
    reference = reference_video_positions(1, 3, 4, 6, FPS)
    assert torch.equal(reference, target)
    assert target.shape == (1, 3, 3 * 4 * 6, 2)


def test_reference_downscaled_by_2_spans_the_targets_frame():
    target = video_positions(1, 3, 4, 6, FPS)
    reference = reference_video_positions(1, 3, 2, 3, FPS, downscale_factor=2)
    plain = video_positions(1, 3, 2, 3, FPS)
    assert torch.equal(reference[:, 1:], plain[:, 1:] * 2)
    assert torch.equal(reference[:, 0], plain[:, 0])
    # Same origin, same extent: pixel bounds [0, 128) x [0, 192) for both.
    for axis in (1, 2):
        assert reference[:, axis].min() == target[:, axis].min() == 0
        assert reference[:, axis].max() == target[:, axis].max()


def test_reference_at_temporal_factor_2_keeps_frame_0_and_ends_with_the_target():
    # 33 target frames (5 latent frames); keeping frame 0 and every 2nd frame leaves 17 (3 latent frames).
    target = video_positions(1, 5, 1, 1, FPS)[0, 0]
    reference = reference_video_positions(1, 3, 1, 1, FPS, temporal_scale_factor=2)[0, 0]
    assert torch.allclose(reference[0], target[0])  # the first (causal) frame is the same instant
    assert torch.allclose(reference[-1, 1], target[-1, 1])  # both clips end together
    # Reference latent frames are twice as far apart as the target's.
    assert torch.allclose(reference[2, 0] - reference[1, 0], 2 * (target[2, 0] - target[1, 0]))


def test_audio_positions_run_at_25_latent_frames_per_second():
    pos = audio_positions(2, 50)
    assert pos.shape == (2, 1, 50, 2)
    assert torch.allclose(pos[0, 0, -1, 1], torch.tensor(2.0), atol=0.05)
    assert torch.all(pos[0, 0, 1:, 0] > pos[0, 0, :-1, 0])


def test_patchify_round_trips_video_and_audio_latents():
    video = torch.randn(2, 16, 3, 4, 5)
    tokens = patchify_video(video)
    assert tokens.shape == (2, 60, 16)
    assert torch.equal(unpatchify_video(tokens, 3, 4, 5), video)
    audio = torch.randn(2, 8, 7, 16)
    assert patchify_audio(audio).shape == (2, 7, 128)
    assert torch.equal(unpatchify_audio(patchify_audio(audio), 8, 16), audio)


def test_sigma_mean_shifts_up_with_the_target_token_count():
    means = [sample_sigmas(20000, n, torch.Generator().manual_seed(0)).mean() for n in (256, 1024, 4096, 8192)]
    assert all(a < b for a, b in zip(means, means[1:]))
    assert abs(sigma_shift(1024) - 0.95) < 1e-9 and abs(sigma_shift(4096) - 2.05) < 1e-9


def test_sigma_uniform_share_is_ten_percent():
    # With the same generator, the mixture replaces exactly the uniform draws: the
    # CDF gap to the pure logit-normal at q is p * (q - F(q)) for a p-uniform mixture.
    n, q = 200_000, 0.5
    mixed = sample_sigmas(n, 4096, torch.Generator().manual_seed(1))
    pure = sample_sigmas(n, 4096, torch.Generator().manual_seed(1), uniform_prob=0.0)
    f_mixed, f_pure = (mixed < q).float().mean(), (pure < q).float().mean()
    share = (f_mixed - f_pure) / (q - f_pure)
    assert abs(share - 0.10) < 0.01
    assert 0 < mixed.min() and mixed.max() <= 1


def _modality(context_mask: torch.Tensor):
    b, length = context_mask.shape
    return reference_conditioned_modality(
        torch.randn(b, 4, 16), torch.randn(b, 6, 16), video_positions(b, 10, 1, 1, FPS), torch.full((b,), 0.5),
        torch.randn(b, length, 32), context_mask,
    )


def test_an_all_ones_context_mask_reaches_the_modality_as_none():
    # None lets SDPA use its flash kernel on a GPU; any mask tensor, even all ones, rules it out.
    assert _modality(torch.ones(2, 8, dtype=torch.int64)).context_mask is None


def test_a_context_mask_with_a_zero_is_kept_in_the_modality():
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    assert torch.equal(_modality(mask).context_mask, mask)


def test_a_context_mask_without_values_is_kept_as_the_memory_estimator_needs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    # The estimator runs the step on fake tensors: no value to test, so no host sync may be asked for.
    with FakeTensorMode():
        modality = _modality(torch.ones(2, 8, dtype=torch.int64))
    assert modality.context_mask is not None and modality.context_mask.shape == (2, 8)


def _av2av_batch(context_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    b, length = context_mask.shape
    return {
        "ref_video": torch.randn(b, 16, 1, 2, 2, generator=g), "video": torch.randn(b, 16, 1, 2, 2, generator=g),
        "ref_audio": torch.randn(b, 2, 4, 16, generator=g), "audio": torch.randn(b, 2, 4, 16, generator=g),
        "video_context": torch.randn(b, length, 32, generator=g),
        "audio_context": torch.randn(b, length, 32, generator=g),
        "context_mask": context_mask,
    }


def test_the_training_step_gives_the_transformer_no_mask_for_an_all_ones_context_mask():
    video_in, audio_in = av2av_inputs(_av2av_batch(torch.ones(2, 128, dtype=torch.int64)), torch.Generator())
    assert video_in.modality.context_mask is None and audio_in.modality.context_mask is None


def test_dropping_an_all_ones_context_mask_leaves_the_transformer_output_unchanged(tiny_bundle):
    model = loader.load_transformer(tiny_bundle.checkpoint).eval()
    ones = torch.ones(2, 128, dtype=torch.int64)
    video_in, audio_in = av2av_inputs(_av2av_batch(ones), torch.Generator().manual_seed(0))

    def predict(mask):
        video, audio = (replace(m.modality, context_mask=mask) for m in (video_in, audio_in))
        with torch.no_grad():
            return model(video=video, audio=audio, perturbations=None)

    unmasked, all_ones = predict(None), predict(ones)
    half_masked = ones.clone()
    half_masked[:, 64:] = 0
    for none_out, ones_out, half_out in zip(unmasked, all_ones, predict(half_masked)):
        assert torch.allclose(none_out, ones_out, rtol=1e-5, atol=1e-6)
        # The comparison can tell masks apart: masking half the text tokens does change the output.
        assert not torch.allclose(none_out, half_out, rtol=1e-3, atol=1e-4)
