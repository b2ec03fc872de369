"""The av2av validation sampler and its inputs, on the tiny bundle (CPU, no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs import ROOT, tiny_job
from ltx_ray.errors import DatasetError
from ltx_ray.model.loader import load_transformer
from ltx_ray.model.objective import av2av_inputs
from ltx_ray.sample.conditioning import build_validation_set, check_validation_inputs, load_validation_set
from ltx_ray.sample.sampler import TargetShape, sample_av2av


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


def _sample(model, cond, seed=0, stg_scale=1.0):
    return sample_av2av(
        model, cond, _shape(cond), torch.Generator().manual_seed(seed), frame_rate=16.0,
        reference_downscale_factor=2, reference_temporal_scale_factor=2, steps=3, cfg_scale=3.0,
        stg_scale=stg_scale, stg_blocks=[1],
    )


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
    train_video, train_audio = av2av_inputs(batch, torch.Generator().manual_seed(0), reference_downscale_factor=2,
                                            reference_temporal_scale_factor=2, frame_rate=16.0)
    assert torch.equal(video.positions, train_video.modality.positions)
    assert torch.equal(audio.positions, train_audio.modality.positions)
    # Reference tokens are clean: timestep 0 at inference as in training.
    assert torch.all(video.timesteps[:, :n_ref_video] == 0) and torch.all(video.timesteps[:, n_ref_video:] > 0)
    assert torch.all(audio.timesteps[:, :n_ref_audio] == 0)


def test_stg_scale_zero_and_positive_both_run_and_differ(validation_set, transformer):
    _, samples = validation_set
    cond = samples[0][1]
    recorder = Recorder(transformer)
    without = _sample(recorder, cond, stg_scale=0.0)
    passes_without = len(recorder.calls)
    with_stg = _sample(recorder, cond, stg_scale=1.0)
    # STG adds one perturbed pass per step (3 steps), with ltx-core's perturbation config.
    assert len(recorder.calls) - passes_without == passes_without + 3
    assert any(p is not None for _, _, p in recorder.calls[passes_without:])
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
