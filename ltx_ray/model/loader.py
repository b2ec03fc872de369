"""Build LTX components via ltx-core: from LTX-2.3's single file and Gemma-3 directory, or LTX-2.5's files.

Each loader takes the file its component is in (`ltx_ray.model.files.ModelFiles` says which: for 2.3
the single file every time; for 2.5 the transformer's, the video VAE's, the audio VAE's, the packed
Gemma-4's). Every component goes through ltx-core's own configurator (model from the JSON
config in the safetensors metadata) and `SingleGPUModelBuilder` (model built on
the meta device, then the checkpoint's tensors, views of the memory-mapped file,
assigned in place: no second copy of the weights when the requested dtype is
the checkpoint's; a converted copy otherwise). Under DeepSpeed ZeRO-3 the
transformer is instead built partitioned (`ltx_ray.train.zero3`, from
`transformer_blueprint` and `transformer_tensors`): each rank only ever holds its
own slice of each weight. Components load independently, so a
rank that only trains holds the transformer, and the text encoder can live on
another device or process.

ltx-core's builder silently returns a half-built model on the meta device when
keys are missing; we check the keys first and raise `ModelError` naming them.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from ltx_ray.errors import ModelError, Problem
from ltx_ray.model.header import config_of, header_identity

log = logging.getLogger(__name__)

# How many missing keys an error message lists before summarising.
_MAX_LISTED_KEYS = 12


def resolve_model_path(uri: str | Path) -> Path:
    """A local path for a checkpoint file or directory: local paths as they are, remote ones fetched.

    `s3://`, `gs://` and `http(s)://` locations are downloaded once per node into
    `$LTX_RAY_MODEL_CACHE` (default: a folder in the temp dir); ranks on the
    same node wait on a file lock and share the copy, which safetensors then
    memory-maps. Credentials and endpoint come from the environment
    (`AWS_*`, `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`).
    """
    text = str(uri)
    if "://" not in text or text.startswith("file://"):
        return Path(text.removeprefix("file://")).expanduser()
    import fcntl
    import os
    import tempfile

    from ltx_ray.fetch import fetch

    root = Path(os.environ.get("LTX_RAY_MODEL_CACHE", Path(tempfile.gettempdir()) / "ltx-ray-models"))
    target = root / hashlib.sha256(text.encode()).hexdigest()[:16]
    target.mkdir(parents=True, exist_ok=True)
    done = target / ".complete"
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return Path(done.read_text())
        local = fetch(text, target)
        done.write_text(str(local))
        return local


def checkpoint_identity(checkpoint: str | Path, storage=None) -> str:
    """A cheap, stable id of a safetensors file (`header.header_identity`: its header and size), for cache keys.

    Remote files are identified by ranged reads of their header, without a download.
    """
    return header_identity(checkpoint, storage)


def model_identity(files, storage=None) -> str:
    """What latents and validation encodings depend on, for cache keys: the model's files and their generation.

    LTX-2.3: the single file's `checkpoint_identity` (as before 2.5, so existing caches stay valid). LTX-2.5:
    its `model_version` and the identity of each component file whose weights encode (the transformer's
    connectors, the VAEs, the packed Gemma-4 with its projection).
    """
    if files.generation == "2.3":
        return checkpoint_identity(files.transformer, storage)
    parts = [files.generation, files.model_version]
    for uri in dict.fromkeys((files.transformer, files.video_vae, files.audio_vae, files.text_projection)):
        parts.append(checkpoint_identity(uri, storage))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def read_checkpoint_config(checkpoint: str | Path) -> dict[str, Any]:
    """The JSON model config stored in the checkpoint's safetensors metadata (key `config`)."""
    path = _existing_file(checkpoint)
    with _open(path) as f:  # the whole file is checked (a truncated one is refused here), not only its header
        return config_of(f.metadata() or {}, str(path))


def load_transformer(
    checkpoint: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    lora: tuple[str | Path, float] | None = None,
):
    """The audio+video `LTXModel` (velocity prediction), weights under `model.diffusion_model.`.

    `lora` = (LoRA file, strength): fused into the weights by ltx-core's own LoRA
    loader (W += strength·B·A), as LTX pipelines apply a LoRA at inference.
    """
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP

    from ltx_ray.model.transformer import TransformerConfigurator

    path = _check_checkpoint(checkpoint, "transformer")
    builder = SingleGPUModelBuilder(model_class_configurator=TransformerConfigurator, model_path=str(path),
                                    model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP)
    if lora is None:
        return _build_with(builder, path, dtype, torch.device(device), "transformer")
    builder = builder.lora(str(lora[0]), float(lora[1]), LTXV_LORA_COMFY_RENAMING_MAP)
    # ltx-core 1.0.0 fuses the adapted weights into `dtype` but leaves the others in the file's dtype.
    return _build_with(builder, path, dtype, torch.device(device), "transformer").to(dtype)


def transformer_linear_shapes(checkpoint: str | Path) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear of the checkpoint's transformer, by module name; built on the meta device."""
    from ltx_core.loader import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP

    from ltx_ray.model.transformer import TransformerConfigurator

    path = _check_checkpoint(checkpoint, "transformer")
    builder = SingleGPUModelBuilder(model_class_configurator=TransformerConfigurator, model_path=str(path),
                                    model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP)
    model = builder.meta_model(builder.model_config(), ())
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def transformer_blueprint(checkpoint: str | Path) -> tuple[Path, Any, dict[str, tuple[int, ...]]]:
    """The checked checkpoint file, its transformer config and every parameter's shape (built on meta).

    For loaders that build the transformer elsewhere than on one device (`ltx_ray.train.zero3`).
    """
    from ltx_core.loader import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP

    from ltx_ray.model.transformer import TransformerConfigurator

    path = _check_checkpoint(checkpoint, "transformer")
    builder = SingleGPUModelBuilder(model_class_configurator=TransformerConfigurator, model_path=str(path),
                                    model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP)
    config = builder.model_config()
    return path, config, {name: tuple(p.shape) for name, p in builder.meta_model(config, ()).named_parameters()}


def transformer_from_config(config: Any) -> torch.nn.Module:
    """An `LTXModel` with freshly initialised weights, built wherever the caller's context puts it."""
    from ltx_ray.model.transformer import TransformerConfigurator

    return TransformerConfigurator.from_config(config)


def transformer_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's transformer tensors under the model's own names: zero-copy views of the mapped file.

    The text connectors' weights share the prefix and come along; callers skip names the model lacks.
    """
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP as sd_ops

    with _open(path) as f:
        for key in f.keys():
            renamed = sd_ops.apply_to_key(key)
            if renamed is not None:
                for item in sd_ops.apply_to_key_value(renamed, f.get_tensor(key)):
                    yield item.new_key, item.new_value


def load_video_encoder(checkpoint: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The video VAE `VideoEncoder`: pixels in [-1, 1] `[B, 3, F, H, W]` to normalised latents."""
    from ltx_core.model.video_vae import VideoEncoderConfigurator

    return _build(checkpoint, VideoEncoderConfigurator, _video_vae_keys("encoder"), "vae", dtype, device)


def load_video_decoder(checkpoint: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The video VAE `VideoDecoder`: normalised latents to pixels in [-1, 1]."""
    from ltx_core.model.video_vae import VideoDecoderConfigurator

    return _build(checkpoint, VideoDecoderConfigurator, _video_vae_keys("decoder"), "vae", dtype, device)


def _video_vae_keys(part: str):
    """The video VAE `part`'s ("encoder"/"decoder") keys as ltx-core 1.2.0 reads them: `vae.<part>.*` (LTX-2.3's
    single file) or, in a standalone VAE file, bare `<part>.*` (`VAE_ENCODER_COMFY_KEYS_FILTER`,
    `VAE_DECODER_COMFY_KEYS_FILTER` of 1.2.0's video_vae/model_configurator.py; 1.0.0 reads only the first)."""
    from ltx_core.loader.sd_ops import SDOps

    return (SDOps(f"VAE_{part.upper()}_KEYS")
            .with_matching(prefix=f"vae.{part}.").with_matching(prefix="vae.per_channel_statistics.")
            .with_matching(prefix=f"{part}.").with_matching(prefix="per_channel_statistics.")
            .with_replacement(f"vae.{part}.", "").with_replacement("vae.per_channel_statistics.", "per_channel_statistics.")
            .with_replacement(f"{part}.", ""))


def load_audio_encoder(checkpoint: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The audio VAE `AudioEncoder`: log-mel spectrograms `[B, 2, T, mel]` to latents `[B, C, T/4, mel/4]`."""
    from ltx_core.model.audio_vae import AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER, AudioEncoderConfigurator

    return _build(checkpoint, AudioEncoderConfigurator, AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER, "audio_vae", dtype, device)


def load_audio_decoder(checkpoint: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The audio VAE `AudioDecoder`: latents to log-mel spectrograms."""
    from ltx_core.model.audio_vae import AUDIO_VAE_DECODER_COMFY_KEYS_FILTER, AudioDecoderConfigurator

    return _build(checkpoint, AudioDecoderConfigurator, AUDIO_VAE_DECODER_COMFY_KEYS_FILTER, "audio_vae", dtype, device)


def load_vocoder(checkpoint: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The vocoder (LTX-2.3: `VocoderWithBWE`, mel at 16 kHz to a 48 kHz stereo waveform)."""
    from ltx_core.model.audio_vae import VOCODER_COMFY_KEYS_FILTER, VocoderConfigurator

    return _build(checkpoint, VocoderConfigurator, VOCODER_COMFY_KEYS_FILTER, "vocoder", dtype, device)


class TextEncoder(torch.nn.Module):
    """Gemma (ltx-core's `GemmaTextEncoder` for Gemma-3, `gemma4.Gemma4Encoder` for Gemma-4) plus ltx-core's
    feature extractor and embedding connectors."""

    def __init__(self, gemma, embeddings):
        """Hold `gemma` (its `encode(caption)` gives every hidden state and the mask) and `embeddings`
        (`EmbeddingsProcessor`) as submodules."""
        super().__init__()
        self.gemma = gemma
        self.embeddings = embeddings


def load_text_encoder(
    files,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_length: int = 1024,
) -> TextEncoder:
    """The text encoder of a model's files (`ltx_ray.model.files.ModelFiles`) on `device`.

    LTX-2.3: Gemma-3 from its directory, the feature projection and connectors from the single
    checkpoint. LTX-2.5: Gemma-4 and the feature projection from the packed file (`ltx_ray.model.gemma4`),
    the connectors from the transformer file. ltx-core's `GemmaTextEncoderConfigurator` hard-codes the 12B
    Gemma sizes, so the sizes come from Gemma's own config instead (for the real models, the same numbers).
    `max_length` is the padded token count per caption (a multiple of 128, the connectors' register count).
    """
    if max_length % 128:
        raise ModelError(Problem("max_length", f"{max_length} is not a multiple of 128 (the connectors' registers)"))
    # Check the small file first: loading a 12B Gemma only to fail on the checkpoint wastes minutes.
    path = _check_checkpoint(files.transformer, "transformer")
    device = torch.device(device)
    if files.generation == "2.5":
        from ltx_ray.model.gemma4 import load_gemma4, read_gemma_config, text_sizes

        packed = resolve_model_path(files.text_encoder)
        hidden, layers = text_sizes(read_gemma_config(packed))
        gemma = load_gemma4(packed, dtype=dtype, device=device, max_length=max_length)
        projection = packed
    else:
        gemma, hidden, layers = _load_gemma3(files.text_encoder, dtype, device, max_length)
        projection = path
    embeddings = _load_embeddings(read_checkpoint_config(path), hidden, layers, (path, projection), dtype, device)
    return TextEncoder(gemma, embeddings).eval()


def _load_gemma3(text_encoder_dir, dtype: torch.dtype, device: torch.device, max_length: int):
    """ltx-core's `GemmaTextEncoder` on a Gemma-3 directory, and its text sizes (hidden, layers)."""
    from ltx_core.text_encoders.gemma import GemmaTextEncoder
    from ltx_core.text_encoders.gemma.tokenizer import LTXVGemmaTokenizer
    from transformers import AutoConfig, Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    directory = resolve_model_path(text_encoder_dir)
    if not (directory / "config.json").is_file():
        raise ModelError(Problem(str(directory), "not a Gemma-3 directory (no config.json)"))
    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    text_config = getattr(config, "text_config", config)
    model_class = Gemma3ForConditionalGeneration if config.model_type == "gemma3" else Gemma3ForCausalLM
    try:
        # transformers builds on the meta device and assigns the weights (no double allocation).
        gemma = model_class.from_pretrained(
            str(directory), dtype=dtype, local_files_only=True, low_cpu_mem_usage=True,
            device_map={"": device} if device.type != "cpu" else None,
        )
        tokenizer = LTXVGemmaTokenizer(str(directory), max_length)
    except (OSError, ValueError) as exc:
        raise ModelError(Problem(str(directory), f"cannot load Gemma-3: {exc}")) from None
    encoder = GemmaTextEncoder(model=gemma.eval(), tokenizer=tokenizer, dtype=dtype)
    return encoder, text_config.hidden_size, text_config.num_hidden_layers


def _load_embeddings(model_config: dict, hidden: int, layers: int, sources: tuple, dtype: torch.dtype,
                     device: torch.device):
    """The feature extractor and connectors, their weights from `sources` (the transformer file, and the file holding
    `text_embedding_projection.*`: the same for 2.3, the packed Gemma-4 for 2.5) under ltx-core's
    `EMBEDDINGS_PROCESSOR_KEY_OPS`. Only the matching tensors are read."""
    from ltx_core.text_encoders.gemma import EMBEDDINGS_PROCESSOR_KEY_OPS as sd_ops

    with torch.device("meta"):
        embeddings = build_embeddings_processor(model_config, hidden, layers)
    expected = set(embeddings.state_dict())
    state: dict[str, torch.Tensor] = {}
    files = list(dict.fromkeys(Path(s) for s in sources))
    for file in files:
        with _open(file) as f:
            for key in f.keys():
                renamed = sd_ops.apply_to_key(key)
                if renamed is None:
                    continue
                for item in sd_ops.apply_to_key_value(renamed, f.get_tensor(key)):
                    if item.new_key in expected:
                        state[item.new_key] = item.new_value.to(device=device, dtype=dtype)
    raise_if_missing(Path(" + ".join(str(f) for f in files)), "text embeddings (feature extractor and connectors)",
                     expected - set(state))
    embeddings.load_state_dict(state, strict=True, assign=True)
    log.info("loaded text embeddings from %s (%d tensors, %s on %s)", ", ".join(f.name for f in files), len(state),
             dtype, device)
    return embeddings.eval()


def build_embeddings_processor(model_config: dict, gemma_hidden: int, gemma_layers: int):
    """ltx-core's `EmbeddingsProcessor` (V2 feature extractor + video/audio connectors) for a Gemma of these sizes.

    Same construction as ltx-core's `EmbeddingsProcessorConfigurator`, whose
    feature extractor is fixed to the 12B Gemma; here the Gemma sizes are given.
    """
    from ltx_core.text_encoders.gemma import EmbeddingsProcessor
    from ltx_core.text_encoders.gemma.embeddings_connector import (
        AudioEmbeddings1DConnectorConfigurator,
        Embeddings1DConnectorConfigurator,
    )
    from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV2

    # rope_type: ltx-core 1.2.0's default for the connectors is "split" (1.0.0's "interleaved").
    t = {"rope_type": "split", **model_config.get("transformer", {})}
    model_config = {**model_config, "transformer": t}
    if not t.get("caption_proj_before_connector", False):
        raise ModelError(Problem("config.transformer", "only LTX-2.3 and LTX-2.5 checkpoints (caption_proj_before_connector) "
                                                       "are supported"))
    flat = gemma_hidden * (gemma_layers + 1)  # every hidden state, the embedding layer included
    video_dim = t["num_attention_heads"] * t["attention_head_dim"]
    audio_dim = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
    video_connector = Embeddings1DConnectorConfigurator.from_config(model_config)
    audio_connector = AudioEmbeddings1DConnectorConfigurator.from_config(model_config)
    if not t.get("connector_ff_bias", True):  # ltx-core 1.2.0's connector flag (embeddings_connector.py)
        from ltx_ray.model.transformer import drop_feed_forward_biases

        for connector in (video_connector, audio_connector):
            drop_feed_forward_biases(block.ff for block in connector.transformer_1d_blocks)
    return EmbeddingsProcessor(
        feature_extractor=FeatureExtractorV2(
            video_aggregate_embed=torch.nn.Linear(flat, video_dim, bias=True),
            embedding_dim=gemma_hidden,
            audio_aggregate_embed=torch.nn.Linear(flat, audio_dim, bias=True),
        ),
        video_connector=video_connector,
        audio_connector=audio_connector,
    )


# --- internals -----------------------------------------------------------------------------------


def _build(checkpoint, configurator, sd_ops, section: str, dtype, device):
    from ltx_core.loader import SingleGPUModelBuilder

    path = _check_checkpoint(checkpoint, section)
    builder = SingleGPUModelBuilder(model_class_configurator=configurator, model_path=str(path), model_sd_ops=sd_ops)
    return _build_with(builder, path, dtype, torch.device(device), section)


def _build_with(builder, path: Path, dtype, device: torch.device, what: str):
    config = builder.model_config()
    try:
        expected = set(builder.meta_model(config, ()).state_dict())
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(Problem(str(path), f"the {what} config cannot be built: {exc!r}")) from None
    with _open(path) as f:
        available = _mapped_keys(builder.model_sd_ops, f.keys())
    raise_if_missing(path, what, expected - available)
    try:
        model = builder.build(device=device, dtype=dtype)
    except (RuntimeError, SafetensorError) as exc:
        raise ModelError(Problem(str(path), f"cannot load the {what} weights: {exc}")) from None
    log.info("loaded %s from %s (%d tensors, %s on %s)", what, path.name, len(expected), dtype, device)
    return model.eval()


def raise_if_missing(path: Path, what: str, missing: set[str]) -> None:
    if missing:
        missing = sorted(missing)
        listed = ", ".join(missing[:_MAX_LISTED_KEYS])
        more = f" and {len(missing) - _MAX_LISTED_KEYS} more" if len(missing) > _MAX_LISTED_KEYS else ""
        raise ModelError(Problem(str(path), f"{len(missing)} {what} weights missing: {listed}{more}"))


def _mapped_keys(sd_ops, keys) -> set[str]:
    """The model keys the checkpoint's `keys` become under `sd_ops`, without reading any tensor."""
    placeholder = torch.empty(0)
    mapped = set()
    for key in keys:
        renamed = sd_ops.apply_to_key(key)
        if renamed is not None:
            mapped.update(r.new_key for r in sd_ops.apply_to_key_value(renamed, placeholder))
    return mapped


def _check_checkpoint(checkpoint, section: str) -> Path:
    path = _existing_file(checkpoint)
    config = read_checkpoint_config(path)
    if section not in config:
        raise ModelError(Problem(str(path), f"the checkpoint config has no '{section}' section (has: {sorted(config)})"))
    return path


def _existing_file(checkpoint) -> Path:
    path = resolve_model_path(checkpoint)
    if not path.is_file():
        raise ModelError(Problem(str(path), "checkpoint file not found"))
    return path


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise ModelError(Problem(str(path), f"not a readable safetensors file (truncated or wrong format): {exc}")) from None
