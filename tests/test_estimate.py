"""`ltx-ray estimate`: the architecture from a checkpoint header, a step measured on fake tensors, ZeRO's layout."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from jobs import ROOT, tiny_job
from ltx_ray.estimate import memory
from ltx_ray.estimate.architecture import (
    BUILTIN_SOURCE,
    architecture_for,
    audio_latent_frames,
    read_architecture,
    step_shapes,
)
from ltx_ray.estimate.estimate import GIB, at_depth, estimate, with_depth, zero_layout
from ltx_ray.estimate.preflight import fitting_settings, preflight
from ltx_ray.estimate.tracker import StorageTracker
from ltx_ray.estimate.zero_settings import zero_settings
from ltx_ray.errors import ModelError
from ltx_ray.model.av2av import LoraSettings, ReferenceScaling
from ltx_ray.model.loader import read_checkpoint_config

# A larger CPU-sized bundle in the same format: 4 blocks of 4 heads x 32 (128 wide), video and audio.
LARGER = {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32, "cross_attention_dim": 128,
          "audio_num_attention_heads": 4, "audio_attention_head_dim": 32, "audio_cross_attention_dim": 128,
          "connector_num_attention_heads": 4, "connector_attention_head_dim": 32,
          "audio_connector_num_attention_heads": 4, "audio_connector_attention_head_dim": 32}


@pytest.fixture(scope="module")
def larger_bundle(tmp_path_factory):
    from ltx_ray.model.tiny import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("larger-bundle"), seed=1, transformer=LARGER)[0]


def test_tiny_bundle_header_goes_through_the_estimators_reader_locally_over_http_and_s3(
        tiny_bundle, http_server, s3_server, s3_bucket):
    from ltx_ray.config.schema import StorageConfig
    from ltx_ray.storage import upload

    expected = read_checkpoint_config(tiny_bundle.checkpoint)
    assert read_architecture(tiny_bundle.checkpoint).config == expected
    body = tiny_bundle.checkpoint.read_bytes()
    http_server.files["/ltx.safetensors"] = body
    remote = read_architecture(http_server.url("/ltx.safetensors"))
    assert remote.config == expected
    header = 8 + int.from_bytes(body[:8], "little")
    assert http_server.served["/ltx.safetensors"] == header < len(body)  # the header only, never the body
    storage = StorageConfig(endpoint_override=s3_server, region="us-east-1")
    uri = upload(tiny_bundle.checkpoint, f"s3://{s3_bucket}/models/ltx.safetensors", storage)
    assert read_architecture(uri, storage).config == expected
    # The cache keys' identity of a model file is read the same way: equal wherever the file is, no download.
    from ltx_ray.model.loader import checkpoint_identity

    local = checkpoint_identity(tiny_bundle.checkpoint)
    assert checkpoint_identity(http_server.url("/ltx.safetensors")) == local == checkpoint_identity(uri, storage)
    assert http_server.served["/ltx.safetensors"] == 2 * header


def test_unreachable_checkpoint_falls_back_to_the_builtin_22b_and_a_bad_file_is_refused(tmp_path, tiny_bundle,
                                                                                      sample_dataset):
    job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "arch", f"model.checkpoint={tmp_path / 'none'}")
    arch, reason = architecture_for(job)
    assert arch.source == BUILTIN_SOURCE and "no such file" in reason
    assert arch.transformer["num_layers"] == 48
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelError, match="bad.safetensors"):
        architecture_for(tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "arch", f"model.checkpoint={bad}"))


def test_audio_latent_frames_match_the_audio_encoder(tiny_bundle):
    from ltx_ray.clips.media import audio_samples
    from ltx_ray.model.vae import audio_to_latents
    from ltx_ray.model.loader import load_audio_encoder

    encoder = load_audio_encoder(tiny_bundle.checkpoint)
    for frames, fps in ((9, 8), (89, 24), (121, 24), (33, 30)):
        latents = audio_to_latents(encoder, torch.zeros(1, 2, audio_samples(frames, fps)))
        assert latents.shape[2] == audio_latent_frames(frames, fps), (frames, fps)


@pytest.mark.parametrize("which", ["tiny", "larger"])
@pytest.mark.parametrize("gradient_checkpointing", [True, False], ids=["checkpointed", "plain"])
def test_fake_step_peak_is_within_10_percent_of_the_same_step_run_for_real(which, gradient_checkpointing,
                                                                           tiny_bundle, larger_bundle):
    arch = read_architecture(tiny_bundle.checkpoint if which == "tiny" else larger_bundle)
    shapes = step_shapes(arch, resolution="low", aspect_ratio="1:1", frames=9,
                         scaling=ReferenceScaling(downscale=2, frame_rate=8))
    setup = memory.StepSetup(arch, shapes, LoraSettings(rank=8), torch.float32,
                             gradient_checkpointing=gradient_checkpointing)
    real = memory.training_step(setup, fake=False, gpu_attention=False)  # real first: nothing fake cached yet
    fake = memory.training_step(setup, fake=True, gpu_attention=False)
    assert abs(fake.peak / real.peak - 1) <= 0.10, (fake.peak, real.peak)
    assert fake.trainable == real.trainable > 0
    assert fake.kinds["parameters"] == real.kinds["parameters"] > 0
    # AdamW's two fp32 moments per trainable element and a float32 step count per tensor (A and B per layer).
    assert fake.kinds["optimizer state"] == 2 * 4 * fake.trainable + 4 * 2 * fake.lora_layers


def test_a_fake_step_leaves_no_fake_tensor_behind(tiny_bundle):
    """ltx-core caches RoPE grids; one made under fake mode must not reach a later real forward."""
    from torch._subclasses.fake_tensor import FakeTensor

    from ltx_ray.model.objective import av2av_loss

    arch = read_architecture(tiny_bundle.checkpoint)
    shapes = step_shapes(arch, resolution="low", aspect_ratio="1:1", frames=9, scaling=ReferenceScaling(frame_rate=8))
    memory.training_step(memory.StepSetup(arch, shapes, LoraSettings(rank=8)), fake=True)
    model = memory.build_transformer(arch, dtype=torch.float32, lora=LoraSettings(rank=8))
    loss, _ = av2av_loss(model, memory.random_batch(arch, shapes, 1, torch.float32), torch.Generator().manual_seed(0),
                         shapes.scaling)
    assert type(loss) is torch.Tensor and not isinstance(loss, FakeTensor)


def test_two_probe_depths_extend_to_the_full_depth_as_running_every_block_does(larger_bundle):
    arch = with_depth(read_architecture(larger_bundle), 12)
    shapes = step_shapes(arch, resolution="low", aspect_ratio="1:1", frames=9, scaling=ReferenceScaling(frame_rate=8))
    for checkpointing in (True, False):
        setup = memory.StepSetup(arch, shapes, LoraSettings(rank=8), gradient_checkpointing=checkpointing)
        run = lambda a: memory.training_step(replace(setup, arch=a))  # noqa: E731
        extended, exact = at_depth(run, arch, 12), at_depth(run, arch, 12, exact=True)
        assert "extended to 12" in extended.notes[0]
        assert abs(extended.peak / exact.peak - 1) <= 0.02, (checkpointing, extended.kinds, exact.kinds)


def test_fused_attention_footprint_never_holds_the_attention_matrix():
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = StorageTracker()
    with FakeTensorMode(), memory._gpu_attention(True):
        q, k, v = (torch.randn(1, 8, 4096, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        for t in (q, k, v):
            tracker.add(t, "inputs")
        with tracker:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            out.sum().backward()
    qkv = 3 * 8 * 4096 * 64 * 2
    matrix = 8 * 4096 * 4096 * 2
    assert tracker.peak < qkv * 4 < matrix  # inputs, output, grads and fp32 row terms; no L x S matrix


def test_zero3_splits_parameters_zero2_keeps_them_whole():
    counts = {"base_parameters": 8_000_000_000, "trainable_parameters": 200_000_000, "block_parameters": 100_000_000,
              "largest_parameter": 50_000_000, "smallest_adapted_weight": 4_000_000, "small_parameters": 210_000_000}
    settings = {stage: zero_settings(counts, stage=stage, overlap_comm=True) for stage in (2, 3)}
    two = zero_layout(counts, settings[2], world=8, element_bytes=2)
    three = zero_layout(counts, settings[3], world=8, element_bytes=2)
    assert two["parameters"] == 8_200_000_000 * 2
    # Shards, the small tensors whole on every rank, and a block plus the prefetch bucket (2 x 50 M) gathered.
    assert three["parameters"] == (8_200_000_000 // 8 + 210_000_000 + 100_000_000 + 100_000_000) * 2
    assert two["optimizer state"] == three["optimizer state"] == 200_000_000 // 8 * 12
    wider = zero_layout(counts, settings[3], world=16, element_bytes=2)
    assert wider["parameters"] < three["parameters"] and wider["optimizer state"] < three["optimizer state"]


def test_zero2_buffers_follow_the_bucket_size_and_overlap_comm():
    counts = {"base_parameters": 8_000_000_000, "trainable_parameters": 200_000_000}
    overlapped = zero_settings(counts, stage=2, overlap_comm=True)
    bucket = overlapped["zero_optimization"]["reduce_bucket_size"]
    assert bucket == 25_000_000
    # Two bf16 buckets with overlap_comm, one without; the bucket being reduced is also cast to fp32.
    assert zero_layout(counts, overlapped, world=8, element_bytes=2)["ZeRO buffers"] == (2 * 2 + 2 + 4) * bucket
    single = zero_settings(counts, stage=2, overlap_comm=False)
    assert zero_layout(counts, single, world=8, element_bytes=2)["ZeRO buffers"] == (2 + 2 + 4) * bucket
    # Between steps (a preview) ZeRO-2 has freed its buckets and its gradient partition.
    between = zero_layout(counts, overlapped, world=8, element_bytes=2, between_steps=True)
    assert between["ZeRO buffers"] == between["gradients"] == 0
    # DeepSpeed's defaults (5e8-element buckets, bf16 reduction and accumulation) as the old config had them.
    default = {"zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                     "reduce_bucket_size": 500_000_000}}
    old = zero_layout(counts, default, world=8, element_bytes=2)
    assert old["ZeRO buffers"] == 2 * 500_000_000 * 2 + 200_000_000 * 2
    assert old["gradients"] == 25_000_000 * (2 + 4)  # bf16 partition, cast to fp32 for the step


def test_estimate_cli_prints_the_table_and_the_same_numbers_as_json(tiny_bundle, sample_dataset, tmp_path):
    base = [sys.executable, "-m", "ltx_ray", "estimate", str(ROOT / "conf" / "demo.yaml"),
            f"model.checkpoint={tiny_bundle.checkpoint}", f"model.text_encoder={tiny_bundle.gemma_dir}"]
    table = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    as_json = subprocess.run([*base, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    data = json.loads(as_json.stdout)
    assert data["architecture"] == str(tiny_bundle.checkpoint)
    for use in data["uses"]:
        assert use["name"] in table.stdout
        assert f"{use['total'] / GIB:.2f}" in table.stdout
    assert f"peak per GPU: {data['peak'] / GIB:.2f} GiB" in table.stdout
    assert data["counts"]["lora_layers"] == 2 * 6 * 4  # 2 blocks x 6 attentions x q, k, v, out
    bad = subprocess.run([*base, "request.rank=7"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "request.rank" in bad.stderr


def test_preflight_warns_with_the_figure_and_a_setting_that_fits(tiny_bundle, sample_dataset, tmp_path):
    job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "preflight", "cluster.gradient_checkpointing=false")
    assert preflight(job) == []  # a CPU job with no GPU memory given: nothing to check against
    est = estimate(job)
    current = est.use("training worker").total
    best = min(est.alternatives, key=lambda a: a["peak"])
    assert best["gradient_checkpointing"] and best["peak"] < current
    job.cluster.gpu_memory_gb = (best["peak"] + current) / 2 / GIB
    warnings = preflight(job)
    training = [w for w in warnings if "training worker" in w]
    assert len(training) == 1
    assert f"{current / GIB:.1f} GiB per GPU" in training[0]
    assert "cluster.gradient_checkpointing=true" in training[0]
    for setting in fitting_settings(est, job, int(job.cluster.gpu_memory_gb * GIB)):
        assert setting in training[0]
    job.cluster.gpu_memory_gb = 10_000
    assert preflight(job) == []
