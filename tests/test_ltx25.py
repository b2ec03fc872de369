"""LTX-2.5 beside LTX-2.3: split files, a packed Gemma-4, its version read from the files, a set that does not
belong together refused, and the job trained, previewed and generated on it (the tiny 2.5 bundle)."""

import pytest
import torch
from safetensors import safe_open

from ltx_ray.cli import main
from ltx_ray.errors import ModelError
from ltx_ray.model import loader
from ltx_ray.model.files import LTX23, LTX25, model_files


def test_the_generation_is_read_from_the_files_and_every_25_component_loads(tiny_bundle_25, tiny_bundle):
    files = tiny_bundle_25.files
    assert (files.generation, files.model_version, files.text_encoder_version) == (LTX25, "2.5.0-tiny",
                                                                                  "gemma4-12b-ltx-v1")
    assert tiny_bundle.files.generation == LTX23
    transformer = loader.load_transformer(files.transformer)
    block = transformer.transformer_blocks[0]
    # ff_bias: false (video feed-forward without biases, audio's keeps them); the learned keyframe marker.
    assert block.ff.net[0].proj.bias is None and block.ff.net[2].bias is None
    assert block.audio_ff.net[2].bias is not None
    assert transformer.keyframes_abs_pos_embedding.shape == (1, transformer.inner_dim)
    for load in (loader.load_video_encoder, loader.load_video_decoder):
        load(files.video_vae)
    for load in (loader.load_audio_encoder, loader.load_audio_decoder, loader.load_vocoder):
        load(files.audio_vae)
    text = loader.load_text_encoder(files, max_length=128)
    assert type(text.gemma.model).__name__ == "Gemma4UnifiedForConditionalGeneration"


def test_gemma4_captions_get_a_bos_and_left_padding_and_every_hidden_state(tiny_bundle_25):
    from ltx_ray.model.vae import encode_text

    text = loader.load_text_encoder(tiny_bundle_25.files, max_length=128)
    tok = text.gemma.tokenizer
    ids, mask = text.gemma.token_ids("  a red square  ")
    assert len(ids) == len(mask) == 128
    assert sum(mask) == 4 and mask[:124] == [0] * 124  # BOS + 3 words, padded on the left
    assert ids[124] == tok.bos_token_id and ids[0] == tok.pad_token_id
    hidden, _ = text.gemma.encode("a red square")
    assert len(hidden) == text.gemma.model.config.text_config.num_hidden_layers + 1
    ctx = encode_text(text, ["av_st9le a bright square", "quiet rain"])
    assert ctx.video_context.shape == (2, 128, 32) and torch.isfinite(ctx.video_context).all()


def test_the_packed_gemma4_computes_what_the_model_it_was_packed_from_computes(tiny_bundle_25):
    """Weights mapped back from the flat names, the embedding scale and the per-layer-type rotary frequencies
    (full-attention layers with the wider global_head_dim) made on load: every hidden state equals the
    transformers model's the file was written from."""
    from ltx_ray.model.tiny import _tiny_gemma4

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as write_tiny_bundle_25(seed=0) draws it, first
        reference, _, _ = _tiny_gemma4()
    for param in reference.parameters():  # the file holds bf16 weights (buffers are made on load, in fp32)
        param.data = param.data.to(torch.bfloat16).to(torch.float32)
    text = loader.load_text_encoder(tiny_bundle_25.files, max_length=128)
    ids, mask = text.gemma.token_ids("av_st9le a bright square over a dark street")
    with torch.no_grad():
        expected = reference.model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]),
                                   output_hidden_states=True).hidden_states
        got, _ = text.gemma.encode("av_st9le a bright square over a dark street")
    assert len(got) == len(expected) == 4
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine[0, -sum(mask):], theirs[0, -sum(mask):], rtol=0, atol=0)


def _resaved(src, dst, config=None, **metadata):
    """A copy of the safetensors file `src` at `dst` with its metadata changed (a value None drops the key)."""
    import json

    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if config is not None:
        meta["config"] = json.dumps(config(json.loads(meta["config"])))
    meta.update(metadata)
    save_file(load_file(str(src)), str(dst), {k: v for k, v in meta.items() if v is not None})
    return dst


@pytest.mark.parametrize("case, message", [
    ("2.3 single file as video_vae", "model.video_vae: .* is not an LTX-2.5 file"),
    ("no audio_vae", "model.audio_vae: .* published without its VAEs"),
    ("Gemma-3 directory", "model.text_encoder: .* is a Gemma-3"),
    ("VAEs swapped", "model.video_vae: .* has no vae config"),
    ("diffusion-decoder video VAE", "model.video_vae: .* is the diffusion-decoder video VAE"),
    ("a Gemma-4 without the named gemma_version", "model.text_encoder: .* is Gemma version None"),
    ("an unreadable transformer with VAE files", "model-missing.safetensors: file not found"),
])
def test_a_set_that_does_not_belong_together_is_refused_naming_the_field(tiny_bundle_25, tiny_bundle, tmp_path,
                                                                       case, message):
    b = tiny_bundle_25
    changes = {
        "2.3 single file as video_vae": {"video_vae": str(tiny_bundle.checkpoint)},
        "no audio_vae": {"audio_vae": ""},
        "Gemma-3 directory": {"text_encoder": str(tiny_bundle.gemma_dir)},
        "VAEs swapped": {"video_vae": str(b.audio_vae), "audio_vae": str(b.video_vae)},
        "diffusion-decoder video VAE": {"video_vae": str(_resaved(
            b.video_vae, tmp_path / "diffusion-vae.safetensors",
            config=lambda c: {"vae": {**c["vae"], "_class_name": "CausalDiffusionVAE"}}))},
        "a Gemma-4 without the named gemma_version": {"text_encoder": str(_resaved(
            b.text_encoder, tmp_path / "stock-gemma4.safetensors",
            gemma_config=_without_gemma_version(b.text_encoder)))},
        "an unreadable transformer with VAE files": {"checkpoint": str(tmp_path / "model-missing.safetensors")},
    }[case]
    with pytest.raises(ModelError, match=message):
        model_files(b.model_config(**changes))


def _without_gemma_version(packed) -> str:
    import json

    with safe_open(str(packed), framework="pt") as f:
        config = json.loads(f.metadata()["gemma_config"])
    config.pop("gemma_version")
    return json.dumps(config)


def test_vae_files_that_state_no_version_are_accepted(tiny_bundle_25, tmp_path):
    """Whether the published 2.5 VAE files carry a model_version is not known: one without it is taken."""
    video = _resaved(tiny_bundle_25.video_vae, tmp_path / "video.safetensors", model_version=None)
    audio = _resaved(tiny_bundle_25.audio_vae, tmp_path / "audio.safetensors", model_version=None)
    files = model_files(tiny_bundle_25.model_config(video_vae=str(video), audio_vae=str(audio)))
    assert (files.generation, files.video_vae, files.audio_vae) == (LTX25, str(video), str(audio))
    loader.load_video_encoder(files.video_vae)
    loader.load_vocoder(files.audio_vae)


def test_a_gemma4_text_encoder_with_the_23_transformer_is_refused(tiny_bundle, tiny_bundle_25):
    from ltx_ray.config.schema import ModelConfig

    with pytest.raises(ModelError, match="model.text_encoder: .* is a gemma4 text encoder"):
        model_files(ModelConfig(checkpoint=str(tiny_bundle.checkpoint), text_encoder=str(tiny_bundle_25.text_encoder)))


def test_the_estimate_sizes_25_from_its_headers(tiny_bundle_25):
    from ltx_ray.config import load_config
    from ltx_ray.estimate.estimate import as_json, estimate
    from jobs import ROOT

    job, _ = load_config(ROOT / "conf" / "demo.yaml", ["request.training_data_url=unused.zip",
                                                        *tiny_bundle_25.overrides], training=False)
    est = estimate(job)
    out = as_json(est)
    # The architecture is the transformer file's, with the VAE files' own sections (not 2.3's stand-ins), and
    # the encoder actor holds the packed Gemma-4 the header describes.
    assert est.architecture == str(tiny_bundle_25.transformer)
    assert "Gemma-4 sizes from" in out and "gemma_config" in out
    from ltx_ray.estimate.architecture import architecture_for
    from ltx_ray.estimate.text_encoder import gemma_config, gemma_parameters

    arch, _ = architecture_for(job)
    assert arch.config["vae"]["latent_channels"] == 16 and arch.config["audio_vae"]["model"]["params"]["ddconfig"]["ch"] == 32
    config, _ = gemma_config(str(tiny_bundle_25.text_encoder))
    loaded = loader.load_text_encoder(tiny_bundle_25.files, max_length=128).gemma.model
    assert gemma_parameters(config) == sum(p.numel() for p in loaded.parameters())


@pytest.fixture(scope="module")
def run_25(tmp_path_factory, tiny_bundle, tiny_bundle_25, sample_dataset, ray_cluster):
    """A 4-step run of the real job on the tiny LTX-2.5 bundle, with a preview at its last step."""
    from jobs import tiny_job
    from ltx_ray.train.driver import run_job

    runs = tmp_path_factory.mktemp("runs-25")
    job = tiny_job(tiny_bundle, sample_dataset, str(runs), "named-below", *tiny_bundle_25.overrides, "checkpoint.every=4",
                   "storage.run_name=''",  # the derived name, which says the generation
                   validation=True, steps=4)
    return job, run_job(job)


def test_a_25_run_trains_previews_and_writes_a_lora_that_names_25_and_generate_runs_it(run_25, tiny_bundle_25,
                                                                                      sample_dataset, tmp_path):
    from ltx_ray.model.lora import read_lora_metadata

    job, result = run_25
    assert result["run_name"].startswith("av2av-ltx25-")
    meta = read_lora_metadata(result["lora_file"])
    assert (meta["base_model_version"], meta["base_model_model_version"], meta["text_encoder"]) == (
        LTX25, "2.5.0-tiny", "gemma4-12b-ltx-v1")
    assert result["video"] and result["video"].endswith(".mp4")  # the preview reel
    out = tmp_path / "gen.mp4"
    code = main(["generate", str(_demo()), "--lora", result["lora_file"], "--reference-video",
                 str(sample_dataset.validation_ref), "--prompt", "av_st9le a square", "--out", str(out),
                 "request.validation_number_of_frames=9", *tiny_bundle_25.overrides])
    assert code == 0 and out.stat().st_size > 0


def test_a_23_lora_given_to_the_25_model_is_refused_with_exit_2(run_25, reference_run, tiny_bundle_25, tiny_bundle,
                                                               sample_dataset, tmp_path, capsys):
    lora_23 = reference_run[1]["lora_file"]
    code = main(["generate", str(_demo()), "--lora", lora_23, "--reference-video", str(sample_dataset.validation_ref),
                 "--prompt", "p", "--out", str(tmp_path / "x.mp4"), *tiny_bundle_25.overrides])
    err = capsys.readouterr().err
    assert code == 2 and "was trained on LTX-2.3" in err and "is LTX-2.5" in err, err
    # ... and the other way round.
    code = main(["generate", str(_demo()), "--lora", run_25[1]["lora_file"], "--reference-video",
                 str(sample_dataset.validation_ref), "--prompt", "p", "--out", str(tmp_path / "y.mp4"),
                 f"model.checkpoint={tiny_bundle.checkpoint}", f"model.text_encoder={tiny_bundle.gemma_dir}"])
    assert code == 2 and "was trained on LTX-2.5" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "y.mp4").exists()


def test_the_tiny_25_bundle_has_the_published_layout(tiny_bundle_25):
    import json

    with safe_open(str(tiny_bundle_25.transformer), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert set(json.loads(meta["config"])) == {"transformer", "scheduler"}
    assert all(k.startswith("model.diffusion_model.") for k in keys)
    assert json.loads(meta["gemma_source_checkpoint"]) == {"gemma_version": "gemma4-12b-ltx-v1"}
    with safe_open(str(tiny_bundle_25.text_encoder), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert set(meta) == {"format", "gemma_config"}
    assert {"tokenizer_json", "hf_asset__tokenizer_config.json", "model.embed_tokens.weight",
            "text_embedding_projection.video_aggregate_embed.weight"} <= keys


def test_the_keyframe_marker_is_added_to_the_marked_tokens_only(tiny_bundle_25):
    """ltx-core 1.2.0's apply_keyframes_absolute_embedding: right after patchify_proj, on the marked video tokens."""
    from ltx_ray.model.transformer import KeyframedModality
    from ltx_ray.model.tokens import reference_conditioned_modality
    from ltx_ray.model.av2av import ReferenceScaling, audio_sequence_positions, video_sequence_positions

    model = loader.load_transformer(tiny_bundle_25.transformer)
    g = torch.Generator().manual_seed(0)
    video = reference_conditioned_modality(
        torch.randn(1, 2, 16, generator=g), torch.randn(1, 4, 16, generator=g),
        video_sequence_positions((1, 16, 1, 1, 2), (1, 16, 1, 2, 2), ReferenceScaling()), torch.tensor([0.5]),
        torch.randn(1, 3, 32, generator=g), None)
    audio = reference_conditioned_modality(
        torch.randn(1, 2, 32, generator=g), torch.randn(1, 3, 32, generator=g), audio_sequence_positions(2, 3, 1),
        torch.tensor([0.5]), torch.randn(1, 3, 32, generator=g), None)
    mask = torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.float32)[None, :, None]
    with torch.no_grad():
        plain = model.video_args_preprocessor.prepare(video, audio).x
        marked = model.video_args_preprocessor.prepare(KeyframedModality(**vars(video), keyframes_mask=mask), audio).x
    vector = model.keyframes_abs_pos_embedding[0]
    assert vector.abs().max() > 0.1
    torch.testing.assert_close(marked - plain, mask * vector)


def _demo():
    from jobs import ROOT

    return ROOT / "conf" / "demo.yaml"


def test_previews_mark_the_targets_first_latent_frame_and_training_marks_nothing(tiny_bundle_25, tiny_bundle):
    """LTX-2.5's keyframe marker: set as official inference sets it (the target's first latent frame, reference
    tokens unmarked), never in training (as the official trainer's FlexibleStrategy); 2.3 has none."""
    from ltx_core.components.guiders import MultiModalGuiderParams

    from ltx_ray.config.scaling import ReferenceScaling
    from ltx_ray.model.objective import av2av_inputs
    from ltx_ray.sample.sampler import Conditioning, Guidance, SamplerSettings, TargetShape, _Denoising

    def denoising(model):
        params = MultiModalGuiderParams(cfg_scale=1.0)
        cond = Conditioning(torch.randn(1, 16, 2, 1, 2), torch.randn(1, 2, 5, 16), torch.randn(1, 4, 32),
                            torch.randn(1, 4, 32), torch.ones(1, 4), torch.randn(1, 4, 32), torch.randn(1, 4, 32),
                            torch.ones(1, 4))
        shape = TargetShape(16, frames=3, height=2, width=2, audio_channels=2, audio_frames=5, mel_bins=16)
        settings = SamplerSettings(ReferenceScaling(), 1, Guidance(params, params))
        return _Denoising(model, cond, shape, torch.Generator().manual_seed(0), settings)

    state = denoising(loader.load_transformer(tiny_bundle_25.transformer))
    marked = state.keyframes[0, :, 0].tolist()
    assert marked == [0.0] * 4 + [1.0] * 4 + [0.0] * 8  # 4 reference tokens (2x1x2), the target's first frame (2x2)
    assert denoising(loader.load_transformer(tiny_bundle.checkpoint)).keyframes is None
    batch = {"ref_video": torch.randn(1, 16, 2, 1, 2), "video": torch.randn(1, 16, 3, 2, 2),
             "ref_audio": torch.randn(1, 2, 5, 16), "audio": torch.randn(1, 2, 5, 16),
             "video_context": torch.randn(1, 4, 32), "audio_context": torch.randn(1, 4, 32),
             "context_mask": torch.ones(1, 4)}
    video, _ = av2av_inputs(batch, torch.Generator().manual_seed(0))
    assert getattr(video.modality, "keyframes_mask", None) is None


def test_a_standalone_video_vae_with_bare_keys_loads_as_ltx_core_1_2_0_reads_it(tiny_bundle_25, tmp_path):
    """1.2.0 reads a standalone VAE file's `encoder.*` / `decoder.*` / `per_channel_statistics.*` keys as well as
    `vae.`-prefixed ones (which the published 2.5 files use is not known): both give the same VAE."""
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_bundle_25.video_vae), framework="pt") as f:
        meta = f.metadata()
    bare = tmp_path / "bare-vae.safetensors"
    save_file({k.removeprefix("vae."): v for k, v in load_file(str(tiny_bundle_25.video_vae)).items()}, str(bare), meta)
    for load in (loader.load_video_encoder, loader.load_video_decoder):
        prefixed, stripped = load(tiny_bundle_25.video_vae).state_dict(), load(bare).state_dict()
        assert prefixed.keys() == stripped.keys()
        assert all(torch.equal(prefixed[k], stripped[k]) for k in prefixed)
