"""LTX-2.5's text encoder: a Gemma-4 (`gemma4_unified`) packed in one safetensors file, run as ltx-core 1.2.0 runs it.

ltx-core 1.0.0 (PyPI) knows only Gemma-3; this follows the official 1.2.0 code (paths under
`packages/ltx-core/src/ltx_core/text_encoders/gemma/`), written anew:

- **The packed file** (`gemma_assets.py`, `GemmaAssets.from_single_file`): metadata `gemma_config`
  (the HF config JSON, with the `gemma_version` at its top level), the tokenizer's `tokenizer.json`
  as a uint8 tensor `tokenizer_json`, HF side files as `hf_asset__<name>` tensors, Gemma's weights
  under ComfyUI's flat names (`model.layers.*`, `model.embed_tokens.*`, `model.norm.*`, `vision_model.*`,
  `multi_modal_projector.*`, `audio_projector.*`; `_flatten_gemma4_unified_keys_for_comfy`), and the
  projection of Gemma's features, `text_embedding_projection.{video,audio}_aggregate_embed.*` (in 2.3's
  single checkpoint instead).
- **The model** (`encoder_configurator.py`, `GemmaTextEncoderConfigurator`, `get_gemma_ops`): transformers'
  `AutoModelForImageTextToText` for the config (`Gemma4UnifiedForConditionalGeneration`), built on the meta
  device and given the file's tensors (flat names mapped back, `_build_gemma4_unified_llm_key_ops`). Its
  non-persistent buffers are then made on the device: the embedding scale (√hidden) and the rotary
  frequencies. The official `_populate_rotary_v5` reads one `head_dim` for every layer, which is why it pins
  transformers < 5.15; Gemma-4's full-attention layers use a wider `global_head_dim`, so here the rotary
  module is built by transformers itself, per layer type (`config.per_layer_config`).
- **Tokenizing** (`gemma_assets.py`, `build_gemma_hf_tokenizer`: a fast tokenizer from the bytes and
  `tokenizer_config.json`'s settings; `tokenizer.py`, `LTXGemmaTokenizer.tokenize_with_weights`): the stripped caption,
  truncated to `max_length`, BOS prepended when the tokenizer did not add one (Gemma-4's does not), left
  padding to exactly `max_length` (1,024 for the real model) with its attention mask.
- **Encoding** (`base_encoder.py`, `LTXGemmaTextEncoder.encode`): the inner model (`model.model`, no LM
  head) with `output_hidden_states=True`; every hidden state is kept (embeddings + each layer), for the V2
  feature extractor and the connectors, as for 2.3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ltx_ray.errors import ModelError, Problem

GEMMA_CONFIG_KEY = "gemma_config"
TOKENIZER_TENSOR = "tokenizer_json"
ASSET_PREFIX = "hf_asset__"
PROJECTION_PREFIX = "text_embedding_projection."
# tokenizer_config.json entries the official builder leaves out (`gemma_assets.py`, `_TOKENIZER_CONFIG_SKIP`).
_TOKENIZER_SKIP = frozenset({"tokenizer_class", "auto_map", "model_max_length", "backend", "is_local",
                             "local_files_only", "processor_class", "added_tokens_decoder", "padding_side"})
# ComfyUI's flat names of the packed file -> the names in transformers' Gemma4UnifiedForConditionalGeneration.
_FLAT_TO_HF = (
    ("model.layers.", "model.language_model.layers."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.norm.", "model.language_model.norm."),
    ("vision_model.", "model.vision_embedder."),
    ("multi_modal_projector.", "model.embed_vision."),
    ("audio_projector.", "model.embed_audio."),
)


class Gemma4Encoder(torch.nn.Module):
    """A Gemma-4 and its tokenizer: `encode(caption)` -> (every hidden state, attention mask), as ltx-core's
    `GemmaTextEncoder.encode` returns them for Gemma-3."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def token_ids(self, text: str) -> tuple[list[int], list[int]]:
        """(ids, mask) of one caption: BOS first, left-padded to `max_length` (`tokenize_with_weights`)."""
        tok = self.tokenizer
        ids = tok(text.strip(), add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]
        if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
            ids = [tok.bos_token_id, *ids][: self.max_length]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        padding = self.max_length - len(ids)
        return [pad] * padding + ids, [0] * padding + [1] * len(ids)

    def encode(self, text: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Every hidden state `[1, max_length, hidden]` of the inner model (no LM head), and the mask."""
        ids, mask = self.token_ids(text)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        attention_mask = torch.tensor([mask], device=device)
        out = self.model.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states, attention_mask


def read_gemma_config(path: str | Path) -> dict[str, Any]:
    """The HF config of a packed file (its `gemma_config` metadata); `ModelError` naming the file without one."""
    from ltx_ray.model.files import gemma_config_of

    config = gemma_config_of(str(path))
    if config is None:
        raise ModelError(Problem(str(path), f"no readable '{GEMMA_CONFIG_KEY}' metadata: not a packed Gemma-4 text "
                                            "encoder (gemma4-12b-with-proj-ltx-2.5-bf16.safetensors)"))
    return config


def text_sizes(config: dict[str, Any]) -> tuple[int, int]:
    """(hidden size, number of layers) of a Gemma HF config (the text config's, for multimodal ones)."""
    text = config.get("text_config", config)
    return int(text["hidden_size"]), int(text["num_hidden_layers"])


def load_gemma4(path: str | Path, *, dtype: torch.dtype, device: torch.device, max_length: int) -> Gemma4Encoder:
    """The Gemma-4 of a packed file on `device` in `dtype`, with its tokenizer."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    config_dict = read_gemma_config(path)
    model_type = str(config_dict.get("model_type", ""))
    if not model_type.startswith("gemma4") or model_type not in CONFIG_MAPPING:
        raise ModelError(Problem(str(path), f"model_type {model_type!r}: not a Gemma-4 this transformers "
                                            "release knows (LTX-2.5's is gemma4_unified)"))
    tokenizer_json, side_files, tensors = _read_assets(path)
    if "tokenizer_config.json" not in side_files:
        raise ModelError(Problem(str(path), f"no {ASSET_PREFIX}tokenizer_config.json: the packed file's tokenizer "
                                            "settings are missing"))
    config = CONFIG_MAPPING[model_type].from_dict(dict(config_dict))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    expected = set(model.state_dict())
    state = {}
    for key, tensor in tensors():
        name = _hf_name(key)
        if name in expected:
            state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    tied = {"lm_head.weight"} - set(state)  # the LM head is the embedding (tie_word_embeddings); no copy in the file
    missing = sorted(expected - set(state) - tied)
    if missing:
        raise ModelError(Problem(str(path), f"{len(missing)} Gemma-4 weights missing: {', '.join(missing[:8])}"))
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    _make_buffers(model, device)
    settings = {k: v for k, v in json.loads(side_files["tokenizer_config.json"]).items() if k not in _TOKENIZER_SKIP}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json.decode()),
                                        **{**settings, "model_max_length": max_length, "padding_side": "left"})
    return Gemma4Encoder(model.eval(), tokenizer, max_length)


def pack_gemma4(model: torch.nn.Module, tokenizer_json: bytes, side_files: dict[str, bytes], projection: dict[str, torch.Tensor],
                out: Path) -> Path:
    """Write a packed Gemma-4 text-encoder file as the official packer does (`build_text_encoder_tensors_from_gemma_root`)."""
    from safetensors.torch import save_file

    tensors = {_flat_name(k): v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tensors.update({PROJECTION_PREFIX + k: v.detach().contiguous() for k, v in projection.items()})
    tensors[TOKENIZER_TENSOR] = torch.from_numpy(np.frombuffer(tokenizer_json, dtype=np.uint8).copy())
    for name, data in side_files.items():
        tensors[ASSET_PREFIX + name] = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    save_file(tensors, str(out), metadata={"format": "pt", GEMMA_CONFIG_KEY: json.dumps(model.config.to_dict())})
    return out


# --- internals -----------------------------------------------------------------------------------


def _hf_name(key: str) -> str:
    for flat, hf in _FLAT_TO_HF:
        if key.startswith(flat):
            return hf + key.removeprefix(flat)
    return key


def _flat_name(key: str) -> str:
    for flat, hf in _FLAT_TO_HF:
        if key.startswith(hf):
            return flat + key.removeprefix(hf)
    return key


def _read_assets(path: Path):
    """(tokenizer.json bytes, side files, a function yielding the weights' (key, tensor)) of a packed file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if TOKENIZER_TENSOR not in keys:
                raise ModelError(Problem(str(path), f"no '{TOKENIZER_TENSOR}' tensor: the packed file has no tokenizer"))
            tokenizer = _bytes(f.get_tensor(TOKENIZER_TENSOR))
            side = {k.removeprefix(ASSET_PREFIX): _bytes(f.get_tensor(k)) for k in keys if k.startswith(ASSET_PREFIX)}
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise ModelError(Problem(str(path), f"not a readable safetensors file: {exc}")) from None
    for name in ("tokenizer_config.json", "processor_config.json"):  # older packs: small JSON as metadata
        if name not in side and name in meta:
            side[name] = meta[name].encode()

    def tensors():
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key != TOKENIZER_TENSOR and not key.startswith((ASSET_PREFIX, PROJECTION_PREFIX)):
                    yield key, f.get_tensor(key)

    return tokenizer, side, tensors


def _bytes(tensor: torch.Tensor) -> bytes:
    array = tensor.detach().cpu().numpy()
    return array.tobytes() if array.dtype == np.uint8 else array.astype(np.uint8).tobytes()


def _make_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """The non-persistent buffers the file does not hold: the embedding scale and the rotary frequencies; then
    refuse a model with anything left on the meta device."""
    language = model.model.language_model
    text_config = language.config
    language.rotary_emb = type(language.rotary_emb)(config=text_config, device=device)
    embed = language.embed_tokens
    if getattr(embed, "embed_scale", None) is not None and embed.embed_scale.is_meta:
        embed.register_buffer("embed_scale", torch.tensor(text_config.hidden_size ** 0.5, device=device),
                              persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(Problem("text_encoder", f"Gemma-4 tensors left unset: {', '.join(left[:5])}"))
