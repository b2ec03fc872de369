"""A tiny LTX-2.3 bundle in the real format: one random single-file checkpoint and a Gemma-3 directory.

The checkpoint has the key prefixes and the `config` metadata sections of
`ltx-2.3-22b-dev.safetensors` (transformer, vae, audio_vae, vocoder), only with
tiny widths, so tests and the demo load it through exactly the code path of the
real model (`ltx_ray.model.loader`). Every component is built by ltx-core's own
configurators, so the keys and shapes are by construction the ones its loader
expects. Weights are stored in bf16, like the real checkpoint (ltx-core's LoRA
fusion only fuses into bf16 or fp8 weights).

Tiny sizes differ from the real model where a test would otherwise be slow:
video latents have 16 channels (real: 128), audio latents 2 channels x 16 mel
bins (real: 8 x 16), the transformer is 2 layers of 2 heads. The compression
factors are the real ones: 32x spatial / 8x temporal for video, 4x temporal
(25 latent frames per second at 16 kHz) for audio; the vocoder keeps 64 mel
bins per channel because ltx-core hard-codes its 128 input channels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ltx_ray.model.ltx23 import LTX25_TRANSFORMER_FLAGS, TRANSFORMER_FLAGS

CHECKPOINT_NAME = "ltx-2.3-tiny.safetensors"
GEMMA_DIR_NAME = "gemma-3-tiny"

# Text-token budget of the tiny encoder; the connectors' 128 learnable registers need a multiple of 128.
TINY_TEXT_MAX_LENGTH = 128

_TRANSFORMER = {
    # Architecture flags: the values of the real LTX-2.3 config (ltx-core checks several of them).
    **TRANSFORMER_FLAGS,
    # Tiny sizes. Heads are equal for video and audio; context dims equal the inner dims
    # because the text projection happens before the connectors (caption_proj_before_connector).
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "in_channels": 16,
    "out_channels": 16,
    "audio_num_attention_heads": 2,
    "audio_attention_head_dim": 16,
    "audio_cross_attention_dim": 32,
    "audio_in_channels": 32,
    "audio_out_channels": 32,
    "connector_num_attention_heads": 2,
    "connector_attention_head_dim": 16,
    "connector_num_layers": 1,
    "audio_connector_num_attention_heads": 2,
    "audio_connector_attention_head_dim": 16,
}

_VAE = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    # The real block sequence without its res_x stacks: 4x patchify, then 2x space, 2x time,
    # and two 2x all-axes stages = 32x spatial, 8x temporal.
    "encoder_blocks": [
        ["compress_space_res", {"multiplier": 2}],
        ["compress_time_res", {"multiplier": 2}],
        ["compress_all_res", {"multiplier": 2}],
        ["compress_all_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}],
    ],
    "decoder_blocks": [
        ["compress_space", {"multiplier": 2}],
        ["compress_time", {"multiplier": 2}],
        ["compress_all", {"multiplier": 1}],
        ["compress_all", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
    ],
    "scaling_factor": 1.0,
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "latent_log_var": "uniform",
    "use_quant_conv": False,
    "causal_decoder": False,
    "timestep_conditioning": False,
    "normalize_latent_channels": False,
    "encoder_base_channels": 16,
    "decoder_base_channels": 8,
    "spatial_padding_mode": "zeros",
}

_AUDIO_VAE = {
    "model": {
        "params": {
            "ddconfig": {
                "double_z": True,
                "mel_bins": 64,
                # z_channels x (64 mel bins / 4) must equal ch: ltx-core normalises the
                # patchified latent with per-channel statistics of width `ch`.
                "z_channels": 2,
                "resolution": 256,
                "downsample_time": False,
                "in_channels": 2,
                "out_ch": 2,
                "ch": 32,
                "ch_mult": [1, 1, 1],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
                "mid_block_add_attention": False,
                "norm_type": "pixel",
                "causality_axis": "height",
            },
            "sampling_rate": 16000,
        }
    },
    "preprocessing": {
        "audio": {"sampling_rate": 16000, "max_wav_value": 32768.0, "duration": 5.12, "stereo": True, "causal_padding": 3},
        "stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True},
        "mel": {"n_mel_channels": 64, "mel_fmin": 0, "mel_fmax": 8000},
    },
}

# Upsampling products are the real ones: 160 (mel hop at 16 kHz) and 240 (BWE hop 80 x 3 for 48 kHz),
# in two stages instead of five or six: ltx-core's anti-aliased activations dominate CPU time.
_GENERATOR = {
    "resblock": "AMP1",
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "stereo": True,
    "use_tanh_at_final": False,
    "activation": "snakebeta",
    "use_bias_at_final": False,
}
_VOCODER = {
    "vocoder": {**_GENERATOR, "upsample_initial_channel": 32, "upsample_rates": [16, 10],
                "upsample_kernel_sizes": [32, 20]},
    "bwe": {**_GENERATOR, "upsample_initial_channel": 32, "upsample_rates": [16, 15],
            "upsample_kernel_sizes": [32, 31], "apply_final_activation": False,
            "input_sampling_rate": 16000, "output_sampling_rate": 48000, "hop_length": 80,
            "n_fft": 512, "win_size": 512, "num_mels": 64},
}

TINY_CONFIG = {
    "transformer": _TRANSFORMER,
    "vae": _VAE,
    "scheduler": {"_class_name": "RectifiedFlowScheduler", "num_train_timesteps": 1000, "sampler": "LinearQuadratic"},
    "audio_vae": _AUDIO_VAE,
    "vocoder": _VOCODER,
}

# A tiny Gemma-3 (the real text encoder is Gemma3ForConditionalGeneration, 48 layers of 3840).
_GEMMA_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": 64,
    "max_position_embeddings": 2048,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
}
_GEMMA_VISION = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
}
_WORDS = (
    "a an the of in on over under with and or to from by at is are bright dark square circle moving "
    "background foreground red green blue yellow white black sound music noise voice street neon city "
    "night day slow fast loud quiet soft drum piano guitar rain wind water fire light shadow camera "
    "man woman cat dog bird car train walking running talking singing av_st9le style"
).split()


def write_tiny_bundle(out_dir: str | Path, seed: int = 0, *, transformer: dict | None = None) -> tuple[Path, Path]:
    """Write `<out_dir>/ltx-2.3-tiny.safetensors` and `<out_dir>/gemma-3-tiny/`; return both paths.

    `transformer` overrides entries of the transformer config (e.g. `num_layers`,
    `attention_head_dim`) for a larger CPU-sized bundle in the same format.
    Deterministic for a given seed; takes a few seconds on a CPU.
    """
    config = {**TINY_CONFIG, "transformer": {**TINY_CONFIG["transformer"], **(transformer or {})}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    gemma_dir = out / GEMMA_DIR_NAME
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gemma_hidden, gemma_layers = _write_tiny_gemma(gemma_dir)
        state = _tiny_checkpoint_state(config, gemma_hidden, gemma_layers)
    metadata = {"config": json.dumps(config), "model_version": "2.3.0-tiny"}
    # bf16 like the real file; contiguous because safetensors refuses views.
    save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()}, str(checkpoint), metadata)
    return checkpoint, gemma_dir


def _tiny_checkpoint_state(config: dict, gemma_hidden: int, gemma_layers: int) -> dict[str, torch.Tensor]:
    """Every component built by ltx-core's configurators, initialised, under the real key prefixes."""
    from ltx_core.model.audio_vae import (
        AudioDecoderConfigurator,
        AudioEncoderConfigurator,
        VocoderConfigurator,
    )
    from ltx_core.model.video_vae import VideoDecoderConfigurator, VideoEncoderConfigurator

    from ltx_ray.model.loader import build_embeddings_processor
    from ltx_ray.model.transformer import TransformerConfigurator

    state: dict[str, torch.Tensor] = {}
    transformer = initialised(TransformerConfigurator.from_config(config))
    state.update(_prefixed(transformer.state_dict(), "model.diffusion_model."))

    embeddings = initialised(build_embeddings_processor(config, gemma_hidden, gemma_layers))
    for key, value in embeddings.state_dict().items():
        key = key.replace("feature_extractor.", "text_embedding_projection.", 1)
        key = key.replace("video_connector.", "model.diffusion_model.video_embeddings_connector.", 1)
        key = key.replace("audio_connector.", "model.diffusion_model.audio_embeddings_connector.", 1)
        state[key] = value

    # The encoder and decoder of a VAE share one set of latent statistics in the real file.
    encoder = initialised(VideoEncoderConfigurator.from_config(config))
    decoder = initialised(VideoDecoderConfigurator.from_config(config))
    _add_vae(state, "vae", encoder.state_dict(), decoder.state_dict())
    audio_encoder = initialised(AudioEncoderConfigurator.from_config(config))
    audio_decoder = initialised(AudioDecoderConfigurator.from_config(config))
    _add_vae(state, "audio_vae", audio_encoder.state_dict(), audio_decoder.state_dict())

    vocoder = initialised(VocoderConfigurator.from_config(config))
    _set_stft_buffers(vocoder.mel_stft, config["vocoder"]["bwe"])
    state.update(_prefixed(vocoder.state_dict(), "vocoder."))
    return state


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _add_vae(state: dict, prefix: str, encoder_sd: dict, decoder_sd: dict) -> None:
    stats = "per_channel_statistics."
    for key, value in encoder_sd.items():
        state[f"{prefix}.{key}" if key.startswith(stats) else f"{prefix}.encoder.{key}"] = value
    for key, value in decoder_sd.items():
        if not key.startswith(stats):
            state[f"{prefix}.decoder.{key}"] = value


def initialised(module: torch.nn.Module) -> torch.nn.Module:
    """Give real values to the tensors ltx-core creates with `torch.empty` (tables and latent statistics)."""
    for name, param in module.named_parameters():
        if "scale_shift_table" in name:
            # AdaLN tables are added to timestep embeddings; the reference init is randn / sqrt(dim).
            with torch.no_grad():
                param.copy_(torch.randn_like(param) / math.sqrt(param.shape[-1]))
        elif name == "keyframes_abs_pos_embedding":
            # LTX-2.5's learned keyframe marker (zeros as built): non-zero, as a trained one is, so that tests
            # and the parity script see whether it reaches the right tokens.
            with torch.no_grad():
                param.copy_(torch.randn_like(param))
        elif name in ("proj_out.weight", "audio_proj_out.weight"):
            # A trained LTX model predicts velocities of unit scale. PyTorch's default init
            # after the output LayerNorm reaches only ~0.5 of that, and a LoRA on the blocks
            # cannot rescale the frozen output layer, so give it unit gain.
            with torch.no_grad():
                param.copy_(torch.randn_like(param) * (2.0 / math.sqrt(param.shape[1])))
    for name, buffer in module.named_buffers():
        if name.endswith("std-of-means"):
            buffer.copy_(torch.rand_like(buffer) * 0.5 + 0.75)
        elif name.endswith("mean-of-means"):
            buffer.copy_(torch.randn_like(buffer) * 0.05)
    for name, tensor in list(module.state_dict().items()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"random model: {name} is not initialised")
    return module


def _set_stft_buffers(mel_stft: torch.nn.Module, bwe: dict) -> None:
    """A real causal STFT basis (DFT rows x Hann window) and a real Slaney mel filterbank."""
    import torchaudio

    n_fft, n_mels, rate = bwe["n_fft"], bwe["num_mels"], bwe["output_sampling_rate"] // 3
    n_freqs = n_fft // 2 + 1
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    t = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * k * t / n_fft
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    mel_stft.stft_fn.forward_basis.copy_(basis[:, None, :].float())
    mel_stft.stft_fn.inverse_basis.copy_(torch.linalg.pinv(basis).T[:, None, :].float())
    fbanks = torchaudio.functional.melscale_fbanks(
        n_freqs, f_min=0.0, f_max=rate / 2, n_mels=n_mels, sample_rate=rate, norm="slaney", mel_scale="slaney"
    )
    mel_stft.mel_basis.copy_(fbanks.T.float())


def _write_tiny_gemma(gemma_dir: Path) -> tuple[int, int]:
    """Save a tiny `Gemma3ForConditionalGeneration` and a locally built fast tokenizer; return its text sizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="left", model_max_length=TINY_TEXT_MAX_LENGTH,
    )
    tokenizer.save_pretrained(str(gemma_dir))

    config = Gemma3Config(
        text_config={**_GEMMA_TEXT, "vocab_size": len(vocab)},
        vision_config=_GEMMA_VISION,
        mm_tokens_per_image=4,
        boi_token_index=vocab["<start_of_image>"],
        eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"],
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<eos>"],
        bos_token_id=vocab["<bos>"],
    )
    model = Gemma3ForConditionalGeneration(config)
    model.save_pretrained(str(gemma_dir), safe_serialization=True)
    return _GEMMA_TEXT["hidden_size"], _GEMMA_TEXT["num_hidden_layers"]


# --- LTX-2.5 ---------------------------------------------------------------------------------------

# A 2.5 transformer is 2.3's with LTX25_TRANSFORMER_FLAGS (ltx_ray.model.ltx23): a bias-free video feed-forward
# and the learned keyframe marker.
GEMMA4_VERSION = "gemma4-12b-ltx-v1"
LTX25_MODEL_VERSION = "2.5.0-tiny"


@dataclass(frozen=True)
class Ltx25Files:
    """The tiny LTX-2.5 bundle: one file per component, as Lightricks publishes LTX-2.5."""

    transformer: Path  # config {transformer, scheduler}, model.diffusion_model.* (with the text connectors)
    video_vae: Path  # config {vae}, vae.*
    audio_vae: Path  # config {audio_vae, vocoder}, audio_vae.* and vocoder.*
    text_encoder: Path  # a packed Gemma-4 with text_embedding_projection.*


# A tiny gemma4_unified: 3 layers (2 sliding with head_dim 16, 1 full-attention with the wider global_head_dim 32
# and proportional RoPE), as Gemma-4 12B mixes them; tiny vision and audio towers (unused by LTX, but in the file).
_GEMMA4_TEXT = {
    "model_type": "gemma4_unified_text", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "global_head_dim": 32,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"], "sliding_window": 32,
    "max_position_embeddings": 4096,
    "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
    },
    "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 1,
    "bos_token_id": 2, "tie_word_embeddings": True, "use_bidirectional_attention": "vision",
    "attention_k_eq_v": False, "num_kv_shared_layers": 0,
}


def write_tiny_bundle_25(out_dir: str | Path, seed: int = 0) -> Ltx25Files:
    """Write the tiny LTX-2.5 bundle's four files into `out_dir` (a few seconds on a CPU)."""
    config = {**TINY_CONFIG, "transformer": {**TINY_CONFIG["transformer"], **LTX25_TRANSFORMER_FLAGS}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = Ltx25Files(out / "ltx-2.5-tiny-transformer.safetensors", out / "ltx-2.5-tiny-video-vae.safetensors",
                       out / "ltx-2.5-tiny-audio-vae.safetensors", out / "gemma4-tiny-with-proj-ltx-2.5.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gemma, tokenizer_json, side_files = _tiny_gemma4()
        state = _tiny_checkpoint_state(config, _GEMMA4_TEXT["hidden_size"], _GEMMA4_TEXT["num_hidden_layers"])
    bf16 = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()}

    def part(*prefixes: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in bf16.items() if k.startswith(prefixes)}

    version = {"model_version": LTX25_MODEL_VERSION}
    save_file(part("model.diffusion_model."), str(files.transformer), {
        "config": json.dumps({"transformer": config["transformer"], "scheduler": config["scheduler"]}), **version,
        "gemma_source_checkpoint": json.dumps({"gemma_version": GEMMA4_VERSION})})
    save_file(part("vae."), str(files.video_vae), {"config": json.dumps({"vae": config["vae"]}), **version})
    save_file(part("audio_vae.", "vocoder."), str(files.audio_vae),
              {"config": json.dumps({"audio_vae": config["audio_vae"], "vocoder": config["vocoder"]}), **version})
    from ltx_ray.model.gemma4 import PROJECTION_PREFIX, pack_gemma4

    projection = {k.removeprefix(PROJECTION_PREFIX): v for k, v in part(PROJECTION_PREFIX).items()}
    pack_gemma4(gemma.to(torch.bfloat16), tokenizer_json, side_files, projection, files.text_encoder)
    return files


def _tiny_gemma4():
    """A tiny random Gemma-4 (`Gemma4UnifiedForConditionalGeneration`), its tokenizer.json bytes and side files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForImageTextToText
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # no post-processor: like Gemma-4's, it adds no BOS
    config = CONFIG_MAPPING["gemma4_unified"].from_dict({
        "architectures": ["Gemma4UnifiedForConditionalGeneration"], "model_type": "gemma4_unified",
        "gemma_version": GEMMA4_VERSION, "tie_word_embeddings": True,
        "text_config": {**_GEMMA4_TEXT, "vocab_size": len(vocab)},
        "vision_config": {"model_type": "gemma4_unified_vision", "patch_size": 2, "pooling_kernel_size": 2,
                          "mm_embed_dim": 24, "mm_posemb_size": 8, "output_proj_dims": 24},
        "audio_config": {"model_type": "gemma4_unified_audio", "audio_embed_dim": 16},
    })
    model = AutoModelForImageTextToText.from_config(config).eval()
    side_files = {
        "tokenizer_config.json": json.dumps({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                             "unk_token": "<unk>", "padding_side": "left"}).encode(),
        "processor_config.json": json.dumps({"processor_class": "Gemma4UnifiedProcessor"}).encode(),
    }
    return model, backend.to_str().encode(), side_files
