"""What training, sampling and estimation share: the reference scaling as one value, the LoRA file's metadata."""

from __future__ import annotations

import pytest
import torch

from jobs import ROOT
from ltx_ray.config import load_config
from ltx_ray.errors import ModelError
from ltx_ray.model.av2av import AUDIO_LATENTS_PER_SECOND, ReferenceScaling, audio_latent_frames
from ltx_ray.model.lora import TRAINING_TYPE, LoraMetadata, export_lora, read_lora_metadata

DEMO = ROOT / "conf" / "demo.yaml"
# Two LoRA layers' A and B: enough for a file `export_lora` accepts.
STATE = {f"diffusion_model.transformer_blocks.0.attn1.to_q.lora_{ab}.weight": torch.ones(4, 4) for ab in "AB"}


def _job(*overrides: str):
    job, _ = load_config(DEMO, list(overrides), training=False)
    return job


def test_reference_scaling_from_the_request_and_from_the_loras_metadata_agree(tmp_path):
    job = _job("request.reference_downscale_factor=2", "request.reference_temporal_scale_factor=2",
               "request.number_of_frames=17", "request.validation_number_of_frames=17", "request.frame_rate=16",
               "request.aspect_ratio=1:1", "request.validation_aspect_ratio=1:1")
    r = job.request
    path = export_lora(STATE, tmp_path / "lora.safetensors", LoraMetadata.from_job(job))
    from_file = ReferenceScaling.from_lora_metadata(read_lora_metadata(path), frame_rate=r.frame_rate)
    assert from_file == ReferenceScaling.from_request(r) == ReferenceScaling(2, 2, float(r.frame_rate))
    validation = ReferenceScaling.from_lora_metadata(read_lora_metadata(path), frame_rate=r.validation_frame_rate)
    assert validation == ReferenceScaling.from_request(r, validation=True)


def test_the_lora_files_metadata_is_the_jobs_as_strings(tmp_path):
    job = _job("request.rank=8", "request.trigger_phrase=av_st9le")
    meta = read_lora_metadata(export_lora(STATE, tmp_path / "lora.safetensors", LoraMetadata.from_job(job)))
    assert meta["training_type"] == TRAINING_TYPE == "av2av_ic_lora"
    assert meta["rank"] == meta["alpha"] == "8" and meta["trigger_phrase"] == "av_st9le"
    assert meta["base_model"] == job.model.checkpoint.rsplit("/", 1)[-1]
    assert (meta["reference_downscale_factor"], meta["reference_temporal_scale_factor"]) == ("1", "1")


def test_a_lora_without_reference_factors_is_read_as_ltx_core_reads_it():
    """The official trainer's files may carry no factors: a missing one means 1."""
    assert ReferenceScaling.from_lora_metadata({}, frame_rate=25) == ReferenceScaling(1, 1, 25.0)


@pytest.mark.parametrize("value, says", [("9", "outside 1..8"), ("two", "is not an integer")])
def test_a_reference_factor_outside_1_to_8_is_refused_naming_the_file(value, says):
    with pytest.raises(ModelError) as info:
        ReferenceScaling.from_lora_metadata({"reference_downscale_factor": value}, frame_rate=25, name="x.safetensors")
    assert "x.safetensors" in str(info.value) and "reference_downscale_factor" in str(info.value)
    assert says in str(info.value)


def test_reference_scaling_gives_the_references_size_and_frames():
    scaling = ReferenceScaling(downscale=2, temporal=4, frame_rate=24.0)
    assert scaling.size(512, 288) == (256, 144)
    assert scaling.frames(17) == 5  # frames 0, 1, 5, 9, 13


def test_audio_latents_run_at_25_a_second():
    assert AUDIO_LATENTS_PER_SECOND == 25
    assert audio_latent_frames(25, 25.0) == 26  # one second: 101 mel frames (hop 160, one more) / 4, rounded up
