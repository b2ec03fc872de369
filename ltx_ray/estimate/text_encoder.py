"""The text encoder's sizes for the estimate: a Gemma-3 directory's `config.json`, a packed Gemma-4's `gemma_config`
header metadata (LTX-2.5), or ltx-core's copy of the Gemma-3 12B config."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def gemma_config(text_encoder: str, storage=None):
    """(transformers config, where it came from): `<dir>/config.json` read locally or from s3://, gs://
    (that one file only), else ltx-core's `GEMMA3_CONFIG_FOR_LTX` (the 12B Gemma-3 LTX-2.3 uses)."""
    from transformers import AutoConfig, Gemma3Config

    text = str(text_encoder)
    if text.endswith(".safetensors"):  # a packed Gemma-4 (LTX-2.5): its HF config is in the header
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        from ltx_ray.model.files import gemma_config_of

        config = gemma_config_of(text, storage)
        if config is not None and config.get("model_type") in CONFIG_MAPPING:
            return CONFIG_MAPPING[config["model_type"]].from_dict(config), f"{text} (gemma_config)"
    try:
        if "://" in text and not text.startswith("file://"):
            from ltx_ray.storage import resolve_filesystem

            fs, path = resolve_filesystem(text.rstrip("/") + "/config.json")
            with fs.open_input_file(path) as f, tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "config.json").write_bytes(f.read())
                return AutoConfig.from_pretrained(tmp, local_files_only=True), f"{text}/config.json"
        directory = Path(text.removeprefix("file://")).expanduser()
        if (directory / "config.json").is_file():
            return AutoConfig.from_pretrained(str(directory), local_files_only=True), str(directory / "config.json")
    except (OSError, ValueError):
        pass
    from ltx_core.text_encoders.gemma.config import GEMMA3_CONFIG_FOR_LTX

    why = ("the packed Gemma-4 was not readable, and Lightricks' source does not state its sizes: Gemma-3 12B "
           "stands in" if text.endswith(".safetensors") else "the text_encoder directory was not readable")
    return Gemma3Config.from_dict(GEMMA3_CONFIG_FOR_LTX.to_dict()), f"ltx-core's GEMMA3_CONFIG_FOR_LTX (Gemma-3 12B; {why})"


def gemma_parameters(config) -> int:
    """Parameter count of the Gemma model `config` describes, built on the meta device."""
    from transformers import AutoModelForImageTextToText, Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    if config.model_type.startswith("gemma4"):
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        return sum(p.numel() for p in model.parameters())
    model_class = Gemma3ForConditionalGeneration if config.model_type == "gemma3" else Gemma3ForCausalLM
    with torch.device("meta"):
        model = model_class._from_config(config)
    return sum(p.numel() for p in model.parameters())
