"""The loader builds every LTX-2.3 component from a single-file checkpoint, or says exactly what is wrong."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ltx_ray.errors import ModelError
from ltx_ray.model import loader


def test_loader_builds_every_component_from_the_tiny_checkpoint(tiny_bundle):
    from ltx_core.model.audio_vae import AudioDecoder, AudioEncoder, VocoderWithBWE
    from ltx_core.model.transformer.model import LTXModel
    from ltx_core.model.video_vae import VideoDecoder, VideoEncoder

    ckpt = tiny_bundle.checkpoint
    built = {
        LTXModel: loader.load_transformer(ckpt),
        VideoEncoder: loader.load_video_encoder(ckpt),
        VideoDecoder: loader.load_video_decoder(ckpt),
        AudioEncoder: loader.load_audio_encoder(ckpt),
        AudioDecoder: loader.load_audio_decoder(ckpt),
        VocoderWithBWE: loader.load_vocoder(ckpt),
    }
    text = loader.load_text_encoder(tiny_bundle.files, max_length=128)
    for cls, model in built.items():
        assert isinstance(model, cls)
    for model in [*built.values(), text]:
        for name, tensor in model.state_dict().items():
            assert tensor.device.type == "cpu", name
            assert torch.isfinite(tensor).all(), name


def test_loader_loads_in_the_requested_dtype(tiny_bundle):
    model = loader.load_transformer(tiny_bundle.checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_checkpoint_missing_keys_is_refused_naming_them(tiny_bundle, tmp_path):
    with safe_open(str(tiny_bundle.checkpoint), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    dropped = ["model.diffusion_model.transformer_blocks.1.attn1.to_q.weight", "model.diffusion_model.proj_out.bias"]
    for key in dropped:
        del tensors[key]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)

    with pytest.raises(ModelError) as err:
        loader.load_transformer(broken)
    message = str(err.value)
    assert str(broken) in message
    assert "transformer_blocks.1.attn1.to_q.weight" in message and "proj_out.bias" in message
    # The VAE lives under other prefixes and still loads from the same file.
    assert loader.load_video_encoder(broken) is not None


def test_truncated_checkpoint_file_is_refused_naming_the_file(tiny_bundle, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_bundle.checkpoint.read_bytes()[:100_000])
    with pytest.raises(ModelError, match="truncated.safetensors"):
        loader.load_transformer(truncated)


def test_checkpoint_without_config_metadata_is_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelError, match="no 'config'"):
        loader.load_video_encoder(plain)


def test_missing_checkpoint_file_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        loader.load_transformer(tmp_path / "nowhere.safetensors")


def test_checkpoint_identity_is_stable_and_tracks_the_header(tiny_bundle, tmp_path):
    first = loader.checkpoint_identity(tiny_bundle.checkpoint)
    assert first == loader.checkpoint_identity(str(tiny_bundle.checkpoint))
    other = tmp_path / "other.safetensors"
    config = json.dumps({"transformer": {}})
    save_file({"x": torch.zeros(2)}, str(other), metadata={"config": config})
    assert loader.checkpoint_identity(other) != first


def test_tiny_checkpoint_has_the_real_key_prefixes_and_config_sections(tiny_bundle):
    with safe_open(str(tiny_bundle.checkpoint), framework="pt") as f:
        keys = list(f.keys())
        config = json.loads(f.metadata()["config"])
        dtypes = {f.get_tensor(k).dtype for k in keys[:20]}
    prefixes = {
        "model.diffusion_model.", "vae.encoder.", "vae.decoder.", "vae.per_channel_statistics.",
        "audio_vae.encoder.", "audio_vae.decoder.", "audio_vae.per_channel_statistics.", "vocoder.",
        "text_embedding_projection.",
    }
    assert all(any(k.startswith(p) for k in keys) for p in prefixes)
    assert all(any(k.startswith(p) for p in prefixes) for k in keys)
    assert {"transformer", "vae", "audio_vae", "vocoder"} <= set(config)
    assert dtypes == {torch.bfloat16}


def test_text_encoder_without_a_gemma_directory_is_refused(tiny_bundle, tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        loader.load_text_encoder(replace(tiny_bundle.files, text_encoder=str(tmp_path)), max_length=128)


def test_text_encoder_checks_the_checkpoint_before_loading_gemma(tiny_bundle, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        loader.load_text_encoder(replace(tiny_bundle.files, transformer=str(tmp_path / "missing.safetensors")))


def test_tiny_bundle_gives_real_values_to_tensors_ltx_core_leaves_empty(tiny_bundle):
    transformer = loader.load_transformer(tiny_bundle.checkpoint)
    tables = {n: p for n, p in transformer.named_parameters() if "scale_shift_table" in n}
    assert len(tables) >= 2 + 6 * 2  # output tables plus six tables per block
    for name, table in tables.items():
        assert 0.01 < table.std() < 1.0, name
    for load in (loader.load_video_encoder, loader.load_audio_encoder):
        stats = load(tiny_bundle.checkpoint).per_channel_statistics
        assert (stats.get_buffer("std-of-means") > 0.5).all()
        assert stats.get_buffer("mean-of-means").abs().max() < 1.0
