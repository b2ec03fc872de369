"""The transformer computes as Lightricks' current ltx-core (1.2.0) does, not as the installed 1.0.0.

What `scripts/parity_official.py` measures against the official source, pinned here on the semantics:
the audio<->video cross-attention's AdaLN scale/shift of a token comes from its own timestep, the
gate from the other modality's σ (`ltx_ray.model.transformer`).
"""

import torch

from ltx_ray.model.loader import load_transformer
from ltx_ray.model.tokens import reference_conditioned_modality


def _modalities(model, sigma_video: float, sigma_audio: float):
    """av2av inputs: 3 reference tokens (timestep 0) then 4 target tokens per modality."""
    from ltx_ray.model.av2av import ReferenceScaling, audio_sequence_positions, video_sequence_positions

    g = torch.Generator().manual_seed(0)
    cv, ca = model.patchify_proj.in_features, model.audio_patchify_proj.in_features
    dv = model.transformer_blocks[0].attn2.to_k.in_features
    da = model.transformer_blocks[0].audio_attn2.to_k.in_features
    v_pos = video_sequence_positions((1, cv, 1, 1, 3), (1, cv, 1, 2, 2), ReferenceScaling())
    a_pos = audio_sequence_positions(3, 4, 1)
    video = reference_conditioned_modality(torch.randn(1, 3, cv, generator=g), torch.randn(1, 4, cv, generator=g),
                                           v_pos, torch.tensor([sigma_video]), torch.randn(1, 5, dv, generator=g), None)
    audio = reference_conditioned_modality(torch.randn(1, 3, ca, generator=g), torch.randn(1, 4, ca, generator=g),
                                           a_pos, torch.tensor([sigma_audio]), torch.randn(1, 5, da, generator=g), None)
    return video, audio


def _adaln(module, t: float, multiplier: int) -> torch.Tensor:
    out, _ = module(torch.tensor([t * multiplier]), hidden_dtype=torch.float32)
    return out[0]


def test_cross_attention_scale_shift_follows_each_tokens_own_timestep_and_the_gate_the_other_modalitys_sigma(tiny_bundle):
    model = load_transformer(tiny_bundle.checkpoint)
    pre = model.video_args_preprocessor
    multiplier = pre.simple_preprocessor.timestep_scale_multiplier
    factor = pre.av_ca_timestep_scale_multiplier / multiplier
    video, audio = _modalities(model, sigma_video=0.6, sigma_audio=0.3)
    with torch.no_grad():
        args = pre.prepare(video, audio)
        scale_shift, gate = args.cross_scale_shift_timestep[0], args.cross_gate_timestep[0]
        assert scale_shift.shape[0] == 7  # one per token, not one per sample as in ltx-core 1.0.0
        at_zero = _adaln(pre.cross_scale_shift_adaln, 0.0, multiplier)
        at_sigma = _adaln(pre.cross_scale_shift_adaln, 0.6, multiplier)
        for token in range(3):  # reference tokens: their own timestep, 0
            torch.testing.assert_close(scale_shift[token], at_zero)
        for token in range(3, 7):  # target tokens: σ of their own modality
            torch.testing.assert_close(scale_shift[token], at_sigma)
        # The gate comes from the *other* modality's σ (audio's 0.3), as in both versions.
        torch.testing.assert_close(gate[-1], _adaln(pre.cross_gate_adaln, 0.3 * factor, multiplier))
        assert (at_zero - at_sigma).abs().max() > 1e-3  # so the checks above tell the two apart


def test_reference_tokens_modulation_does_not_move_with_the_other_modalitys_sigma(tiny_bundle):
    """Changing audio's σ moves the video tokens' gate only, not any token's scale/shift."""
    model = load_transformer(tiny_bundle.checkpoint)
    pre = model.video_args_preprocessor
    with torch.no_grad():
        a = pre.prepare(*_modalities(model, sigma_video=0.6, sigma_audio=0.3))
        b = pre.prepare(*_modalities(model, sigma_video=0.6, sigma_audio=0.9))
    torch.testing.assert_close(a.cross_scale_shift_timestep, b.cross_scale_shift_timestep, rtol=0, atol=0)
    assert not torch.allclose(a.cross_gate_timestep, b.cross_gate_timestep)


def test_with_one_timestep_everywhere_the_forward_is_ltx_core_1_0_0s(tiny_bundle):
    """Where every token has the same timestep the two versions agree: the override changes nothing else."""
    from ltx_core.loader import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator

    ours = load_transformer(tiny_bundle.checkpoint)
    plain = SingleGPUModelBuilder(model_class_configurator=LTXModelConfigurator, model_path=str(tiny_bundle.checkpoint),
                                  model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP).build(device=torch.device("cpu"),
                                                                                    dtype=torch.float32)
    video, audio = _modalities(ours, sigma_video=0.6, sigma_audio=0.6)
    uniform = [m.__class__(**{**m.__dict__, "timesteps": torch.full_like(m.timesteps, 0.6)}) for m in (video, audio)]
    av2av = (video, audio)
    with torch.no_grad():
        same = [torch.testing.assert_close(x, y) for x, y in zip(ours(*uniform, None), plain(*uniform, None))]
        differs = [not torch.allclose(x, y) for x, y in zip(ours(*av2av, None), plain(*av2av, None))]
    assert len(same) == 2 and all(differs)
