"""The LoRA file: LTX naming, bf16, metadata, and fused by ltx-core's own loader into the same model."""

import pytest
import torch
from safetensors import safe_open

from ltx_ray.model import loader
from ltx_ray.model.lora import (
    LoraMetadata,
    apply_lora,
    export_lora,
    lora_state_dict,
    read_lora_metadata,
)
from ltx_ray.model.objective import av2av_inputs


def _batch():
    g = torch.Generator().manual_seed(7)
    return {
        "ref_video": torch.randn(1, 16, 2, 2, 3, generator=g),
        "video": torch.randn(1, 16, 2, 2, 3, generator=g),
        "ref_audio": torch.randn(1, 2, 6, 16, generator=g),
        "audio": torch.randn(1, 2, 6, 16, generator=g),
        "video_context": torch.randn(1, 128, 32, generator=g),
        "audio_context": torch.randn(1, 128, 32, generator=g),
        "context_mask": torch.ones(1, 128, dtype=torch.int64),
    }


@pytest.fixture
def trained_lora(tiny_bundle):
    """A PEFT model whose LoRA weights are non-zero (as after training), feed-forward included."""
    torch.manual_seed(0)
    model = apply_lora(loader.load_transformer(tiny_bundle.checkpoint), 8, include_feed_forward=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.2)
    return model.eval()


def _metadata() -> LoraMetadata:
    return LoraMetadata(rank=8, trigger_phrase="av_st9le", reference_downscale_factor=2,
                        reference_temporal_scale_factor=1, base_model="ltx-2.3-tiny")


def _lora_layers(model) -> set[str]:
    return {k.removeprefix("diffusion_model.").rsplit(".lora_", 1)[0] for k in lora_state_dict(model)}


def test_default_lora_covers_cross_modal_attention(tiny_bundle):
    model = apply_lora(loader.load_transformer(tiny_bundle.checkpoint), 4)
    expected = {f"transformer_blocks.{i}.{a}.{p}" for i in range(2)
                for a in ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
                for p in ("to_q", "to_k", "to_v", "to_out.0")}
    assert _lora_layers(model) == expected


def test_default_lora_layers_are_the_official_recipes(tiny_bundle):
    """ltx-trainer's av2av target_modules [to_k, to_q, to_v, to_out.0] under PEFT's rule: a Linear whose name ends so."""
    transformer = loader.load_transformer(tiny_bundle.checkpoint)
    official = {n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
                and any(n == t or n.endswith("." + t) for t in ("to_k", "to_q", "to_v", "to_out.0"))}
    assert _lora_layers(apply_lora(transformer, 4)) == official


def test_lora_targets_can_narrow_the_default(tiny_bundle):
    model = apply_lora(loader.load_transformer(tiny_bundle.checkpoint), 4, targets=["attn1"])
    assert _lora_layers(model) == {f"transformer_blocks.{i}.attn1.{p}" for i in range(2)
                                   for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_lora_file_has_ltx_keys_in_bf16(trained_lora, tmp_path):
    path = export_lora(lora_state_dict(trained_lora), tmp_path / "lora.safetensors", _metadata())
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.bfloat16}
    assert all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert "diffusion_model.transformer_blocks.0.ff.net.0.proj.lora_A.weight" in keys
    assert "diffusion_model.transformer_blocks.1.video_to_audio_attn.to_out.0.lora_B.weight" in keys


def test_lora_metadata_round_trips(trained_lora, tmp_path):
    path = export_lora(lora_state_dict(trained_lora), tmp_path / "lora.safetensors", _metadata())
    meta = read_lora_metadata(path)
    assert meta == _metadata().strings()
    assert meta["training_type"] == "av2av_ic_lora" and meta["rank"] == meta["alpha"] == "8"
    assert meta["reference_downscale_factor"] == "2" and meta["trigger_phrase"] == "av_st9le"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_lora_file_fused_by_ltx_core_matches_the_peft_model(trained_lora, tiny_bundle, tmp_path, dtype):
    """`load_transformer(lora=...)` (ltx-core's own LoRA fusion, as `ltx-ray generate` uses it) in either dtype."""
    path = export_lora(lora_state_dict(trained_lora), tmp_path / "lora.safetensors", _metadata())
    fused = loader.load_transformer(tiny_bundle.checkpoint, dtype=dtype, lora=(path, 1.0)).eval()
    assert {p.dtype for p in fused.parameters()} == {dtype}
    base = loader.load_transformer(tiny_bundle.checkpoint).eval()
    video_in, audio_in = av2av_inputs(_batch(), torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = {name: m(video=video_in.modality, audio=audio_in.modality, perturbations=None)
                   for name, m in (("peft", trained_lora), ("fused", fused.float()), ("base", base))}
    for i in (0, 1):
        peft, fused_out, base_out = outputs["peft"][i], outputs["fused"][i], outputs["base"][i]
        lora_effect = (peft - base_out).abs().mean()
        scale = peft.abs().mean()
        assert lora_effect > 0.05 * scale  # the LoRA really changes the output
        assert (peft - fused_out).abs().mean() < 2e-2 * scale  # bf16 rounding only (file weights are bf16)
        assert (peft - fused_out).abs().mean() < 0.1 * lora_effect


def test_lora_strength_scales_the_fused_delta(trained_lora, tiny_bundle, tmp_path):
    path = export_lora(lora_state_dict(trained_lora), tmp_path / "lora.safetensors", _metadata())
    base = loader.load_transformer(tiny_bundle.checkpoint)
    half = loader.load_transformer(tiny_bundle.checkpoint, lora=(path, 0.5))
    full = loader.load_transformer(tiny_bundle.checkpoint, lora=(path, 1.0))
    name = "transformer_blocks.0.attn1.to_q.weight"
    w0, w_half, w_full = (dict(m.named_parameters())[name] for m in (base, half, full))
    torch.testing.assert_close(w_half - w0, 0.5 * (w_full - w0), atol=1e-6, rtol=1e-4)
    assert (w_full - w0).abs().max() > 0


_ZERO3_EXPORT = r'''
import os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
import deepspeed
from ltx_ray.model import loader
from ltx_ray.model.lora import apply_lora, lora_state_dict
from ltx_ray.train import zero3

torch.manual_seed(0)
model = apply_lora(loader.load_transformer(sys.argv[1]), 4)
with torch.no_grad():
    for p in model.parameters():
        if p.requires_grad:
            p.normal_(std=0.1)
expected = lora_state_dict(model)
deepspeed.init_distributed(dist_backend="gloo")
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
engine, *_ = deepspeed.initialize(model=model, config=config,
                                  model_parameters=[p for p in model.parameters() if p.requires_grad])
sharded = next(p for n, p in engine.module.named_parameters() if "lora_A" in n)
assert hasattr(sharded, "ds_id") and sharded.numel() == 0, "LoRA parameters are not partitioned"
got = zero3.lora_state_dict(engine)
assert got.keys() == expected.keys()
assert all(torch.equal(got[k], expected[k]) for k in got)
print("exported", len(got))
'''


def test_lora_export_gathers_zero3_sharded_parameters(tiny_bundle):
    # Its own process: DeepSpeed initialises torch.distributed, which must not leak into other tests.
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run([sys.executable, "-c", _ZERO3_EXPORT, str(tiny_bundle.checkpoint), port],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported 96" in result.stdout  # 2 blocks x 6 attentions x 4 projections x (A, B)
