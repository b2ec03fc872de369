"""The av2av validation sampler and its inputs, on the tiny bundle (CPU, no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ltx_core.components.guiders import MultiModalGuiderParams
from ltx_core.guidance.perturbations import PerturbationType

from jobs import ROOT, tiny_job
from ltx_ray.errors import DatasetError
from ltx_ray.model.av2av import ReferenceScaling
from ltx_ray.model.loader import load_transformer
from ltx_ray.model.objective import av2av_inputs
from ltx_ray.sample.conditioning import build_validation_set, check_validation_inputs, load_validation_set
from ltx_ray.sample.sampler import (
    Clip,
    Guidance,
    SamplerSettings,
    TargetShape,
    guidance_from_config,
    sample_av2av,
    stg_block,
)


class Recorder(torch.nn.Module):
    """Calls the real transformer and keeps the inputs of each call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, video, audio, perturbations):
        self.calls.append((video, audio, perturbations))
        return self.model(video=video, audio=audio, perturbations=perturbations)


@pytest.fixture(scope="module")
def validation_set(tmp_path_factory, tiny_bundle, sample_dataset):
    """The sample's validation clip, fitted and encoded as training would (factors 2 and 2, 17 frames, 512x512)."""
    job = tiny_job(
        tiny_bundle, sample_dataset, str(tmp_path_factory.mktemp("runs")), "sampler", validation=True,
        *("request.reference_downscale_factor=2", "request.reference_temporal_scale_factor=2",
          "request.validation_number_of_frames=17", "request.number_of_frames=17", "request.validation_frame_rate=16",
          "request.aspect_ratio=1:1", "request.validation_aspect_ratio=1:1"),
    )
    path = build_validation_set(job, tmp_path_factory.mktemp("val") / "validation.safetensors")
    return job, load_validation_set(path)


@pytest.fixture(scope="module")
def transformer(tiny_bundle):
    return load_transformer(tiny_bundle.checkpoint).eval()


def _shape(cond) -> TargetShape:
    # validation: low 1:1 = 512x512, 17 frames -> 3 latent frames of 16x16
    return TargetShape(cond.ref_video.shape[1], 3, 16, 16, cond.ref_audio.shape[1], cond.ref_audio.shape[2],
                       cond.ref_audio.shape[3])


def _guidance(stg_scale=1.0, batched=True, **kw) -> Guidance:
    video = dict(cfg_scale=3.0, stg_scale=stg_scale, stg_blocks=[1], rescale_scale=0.7, modality_scale=3.0)
    audio = {**video, "cfg_scale": 7.0}
    return Guidance(MultiModalGuiderParams(**{**video, **kw}), MultiModalGuiderParams(**{**audio, **kw}),
                    batched=batched)


# The validation set's scaling: reference downscaled 2x and subsampled 2x, clips at 16 fps.
SCALING = ReferenceScaling(downscale=2, temporal=2, frame_rate=16.0)


def _sample(model, cond, seed=0, steps=3, **guidance):
    return sample_av2av(model, Clip(cond, _shape(cond), seed), SamplerSettings(SCALING, steps, _guidance(**guidance)))


def test_sampler_is_deterministic_for_a_fixed_seed(validation_set, transformer):
    _, samples = validation_set
    cond = samples[0][1]
    first, second, other = _sample(transformer, cond, 0), _sample(transformer, cond, 0), _sample(transformer, cond, 1)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_reference_is_scaled_at_inference_exactly_as_in_training(validation_set, transformer):
    _, samples = validation_set
    cond = samples[0][1]
    # The reference was downscaled 2x and subsampled 2x before encoding: half the latent size.
    assert cond.ref_video.shape[2:] == (2, 8, 8)
    recorder = Recorder(transformer)
    _sample(recorder, cond)
    video, audio, _ = recorder.calls[0]
    n_ref_video, n_ref_audio = cond.ref_video[0, 0].numel(), cond.ref_audio.shape[2]
    shape = _shape(cond)
    batch = {
        "ref_video": cond.ref_video, "video": torch.zeros(1, shape.video_channels, 3, 16, 16),
        "ref_audio": cond.ref_audio, "audio": torch.zeros_like(cond.ref_audio),
        "video_context": cond.video_context, "audio_context": cond.audio_context, "context_mask": cond.context_mask,
    }
    train_video, train_audio = av2av_inputs(batch, torch.Generator().manual_seed(0), SCALING)
    assert torch.equal(video.positions[:1], train_video.modality.positions)
    assert torch.equal(audio.positions[:1], train_audio.modality.positions)
    # Reference tokens are clean: timestep 0 at inference as in training.
    assert torch.all(video.timesteps[:, :n_ref_video] == 0) and torch.all(video.timesteps[:, n_ref_video:] > 0)
    assert torch.all(audio.timesteps[:, :n_ref_audio] == 0)


def test_preview_guidance_uses_per_modality_cfg_and_rescale(validation_set, transformer):
    job, _ = validation_set
    g = guidance_from_config(job, transformer)
    assert (g.video.cfg_scale, g.audio.cfg_scale) == (3.0, 7.0)
    assert g.video.rescale_scale == g.audio.rescale_scale == 0.7
    assert g.video.modality_scale == g.audio.modality_scale == 3.0
    # The spec's stg_scale sets both STG scales.
    assert g.video.stg_scale == g.audio.stg_scale == job.request.stg_scale
    assert g.passes == ("positive", "negative", "stg", "modality")
    # Block 28 of 48, at the same depth of the tiny model's 2 blocks.
    assert g.video.stg_blocks == g.audio.stg_blocks == [1]


def test_stg_block_is_the_officials_28_of_48_at_the_models_depth():
    assert stg_block(28, 48) == 28
    assert [stg_block(28, d) for d in (2, 12, 24, 47)] == [1, 7, 14, 27]


def test_each_step_batches_the_four_official_passes_with_ltx_cores_perturbations(validation_set, transformer):
    _, samples = validation_set
    cond = samples[0][1]
    recorder = Recorder(transformer)
    _sample(recorder, cond, steps=2)
    assert len(recorder.calls) == 2  # one batched call per step
    video, _, perturbations = recorder.calls[0]
    assert video.latent.shape[0] == 4
    # positive and negative prompt, then STG and modality isolation, both on the prompt.
    assert torch.equal(video.context[0], video.context[2]) and torch.equal(video.context[0], video.context[3])
    assert not torch.equal(video.context[0], video.context[1])
    configs = perturbations.perturbations
    assert configs[0].perturbations == [] and configs[1].perturbations == []
    assert {(p.type, tuple(p.blocks)) for p in configs[2].perturbations} == {
        (PerturbationType.SKIP_VIDEO_SELF_ATTN, (1,)), (PerturbationType.SKIP_AUDIO_SELF_ATTN, (1,))}
    assert {(p.type, p.blocks) for p in configs[3].perturbations} == {
        (PerturbationType.SKIP_A2V_CROSS_ATTN, None), (PerturbationType.SKIP_V2A_CROSS_ATTN, None)}


def test_batched_and_one_by_one_guidance_passes_give_the_same_clip(validation_set, transformer):
    _, samples = validation_set
    cond = samples[0][1]
    recorder = Recorder(transformer)
    batched = _sample(transformer, cond, batched=True)
    single = _sample(recorder, cond, batched=False)
    assert len(recorder.calls) == 3 * 4 and all(v.latent.shape[0] == 1 for v, _, _ in recorder.calls)
    for a, b in zip(batched, single):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_schedule_is_ltx2_schedulers_default_ladder(validation_set, transformer):
    from ltx_core.components.schedulers import LTX2Scheduler

    _, samples = validation_set
    recorder = Recorder(transformer)
    _sample(recorder, samples[0][1], steps=4)
    seen = [float(v.sigma[0]) for v, _, _ in recorder.calls]
    assert seen == LTX2Scheduler().execute(4)[:-1].tolist()


def test_guidance_is_computed_on_x0_with_rescale_over_the_whole_sequence():
    """The official step: x0 per pass, c + (cfg-1)(c-u) + stg(c-p) + (mod-1)(c-m), rescaled by
    0.7·std(c)/std(pred) + 0.3 over reference and target tokens, then an Euler step of the target."""
    from ltx_ray.sample.sampler import _guided_euler_step
    from ltx_core.components.guiders import MultiModalGuider

    g = torch.Generator().manual_seed(0)
    n_ref, n, c = 3, 5, 4
    x0 = {k: torch.randn(1, n_ref + n, c, generator=g) for k in ("positive", "negative", "stg", "modality")}
    ref = x0["positive"][:, :n_ref]
    for k in x0:
        x0[k][:, :n_ref] = ref  # every pass sees the same clean reference
    x = torch.randn(1, n, c, generator=g)
    params = MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, stg_blocks=[1], rescale_scale=0.7,
                                    modality_scale=3.0)
    got = _guided_euler_step(MultiModalGuider(params), x0, x, n_ref, 0.8, 0.6)
    cnd, u, p, m = x0["positive"], x0["negative"], x0["stg"], x0["modality"]
    pred = cnd + 2.0 * (cnd - u) + 1.0 * (cnd - p) + 2.0 * (cnd - m)
    pred = pred * (0.7 * cnd.std() / pred.std() + 0.3)
    expected = x + (x - pred[:, n_ref:]) / 0.8 * (0.6 - 0.8)
    torch.testing.assert_close(got, expected)


def test_stg_scale_zero_drops_the_stg_pass_and_changes_the_clip(validation_set, transformer):
    _, samples = validation_set
    cond = samples[0][1]
    recorder = Recorder(transformer)
    without = _sample(recorder, cond, stg_scale=0.0)
    assert all(v.latent.shape[0] == 3 for v, _, _ in recorder.calls)  # positive, negative, modality
    with_stg = _sample(transformer, cond, stg_scale=1.0)
    assert torch.isfinite(with_stg[0]).all() and not torch.equal(without[0], with_stg[0])


def test_silent_validation_video_without_reference_audio_is_refused(tmp_path, tiny_bundle, sample_dataset,
                                                                    make_clip):
    silent = make_clip(audio=None)
    job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "silent",
                   f"request.validation=[{{prompt: p, reference_video_url: '{silent}'}}]")
    with pytest.raises(DatasetError) as info:
        check_validation_inputs(job)
    assert info.value.problems[0].where == "request.validation[0].reference_video_url"


def test_silent_validation_video_with_a_reference_audio_is_accepted(tmp_path, tiny_bundle, sample_dataset,
                                                                    make_clip):
    silent, voiced = make_clip(audio=None), make_clip()
    job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "voiced",
                   f"request.validation=[{{prompt: p, reference_video_url: '{silent}', reference_audio_url: '{voiced}'}}]")
    check_validation_inputs(job)  # raises on refusal


def test_train_command_refuses_a_silent_validation_video_with_exit_2_before_ray_starts(
    tmp_path, tiny_bundle, sample_dataset, make_clip
):
    silent = make_clip(audio=None)
    res = subprocess.run(
        [sys.executable, "-m", "ltx_ray", "train", str(ROOT / "conf" / "demo.yaml"),
         f"request.training_data_url={sample_dataset.archive}", f"model.checkpoint={tiny_bundle.checkpoint}",
         f"storage.storage_path={tmp_path}",
         f"request.validation=[{{prompt: p, reference_video_url: '{silent}'}}]"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert res.returncode == 2
    assert "request.validation[0].reference_video_url" in res.stderr and "no audio" in res.stderr
    assert list(Path(tmp_path).iterdir()) == []  # nothing was preprocessed or trained
