"""PEFT LoRA on the LTX transformer, and the LoRA file that ltx-core's own loader fuses.

The file (`export_lora` writes it, into every checkpoint; the job's output is the final checkpoint's
copy): safetensors, bf16, keys `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` (LTX/ComfyUI
naming: PEFT's `base_model.model.` prefix and adapter name removed), and the string metadata of
`LoraMetadata`. LTX LoRA files carry no alpha and are fused as W += strength·B·A, so alpha == rank here
(PEFT scale 1).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ltx_ray import __version__
from ltx_ray.config.scaling import ReferenceScaling
from ltx_ray.config.schema import JobConfig
from ltx_ray.errors import ModelError, Problem

# Every attention of a block: video and audio self- and text-attention, and the audio<->video
# cross-attention that ties sound to picture. The official av2av recipe (ltx-trainer's
# configs/av2av_ic_lora.yaml, target_modules to_q/to_k/to_v/to_out.0) trains all of them.
DEFAULT_TARGETS = ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
FEED_FORWARD_TARGETS = ("ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2")
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
# What an av2av IC-LoRA file says it is (`training_type` in its metadata and in the job's config file).
TRAINING_TYPE = "av2av_ic_lora"
KEY_PREFIX = "diffusion_model."
_ADAPTER = "default"


@dataclass(frozen=True)
class LoraSettings:
    """Which LoRA the transformer gets: its rank (alpha = rank), the attention it adapts, and the feed-forward too?"""

    rank: int
    targets: tuple[str, ...] = DEFAULT_TARGETS
    include_feed_forward: bool = False

    @classmethod
    def from_job(cls, job: JobConfig) -> "LoraSettings":
        """`request.rank`, `model.lora_targets` and `model.lora_include_feed_forward`."""
        m = job.model
        return cls(job.request.rank, tuple(m.lora_targets or DEFAULT_TARGETS), m.lora_include_feed_forward)


def lora_target_modules(
    transformer: torch.nn.Module,
    targets: Iterable[str] = DEFAULT_TARGETS,
    *,
    include_feed_forward: bool = False,
) -> list[str]:
    """Full names of the Linear layers that get a LoRA: attention projections of `targets` in every block (+ options)."""
    wanted = [rf"{re.escape(a)}\.{re.escape(p)}" for a in targets for p in ATTENTION_PROJECTIONS]
    if include_feed_forward:
        wanted += [re.escape(f) for f in FEED_FORWARD_TARGETS]
    pattern = re.compile(rf"transformer_blocks\.\d+\.(?:{'|'.join(wanted)})")
    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    if not names:
        raise ModelError(Problem("model.lora_targets", f"no transformer Linear layer matches {list(targets)}"))
    return names


def apply_lora(transformer: torch.nn.Module, rank: int, *, targets: Iterable[str] = DEFAULT_TARGETS,
               include_feed_forward: bool = False) -> PeftModel:
    """Wrap `transformer` in a PEFT LoRA (rank `rank`, alpha = rank, no dropout); only LoRA params train.

    B starts at zero, so the wrapped model initially computes exactly the base model.
    """
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=lora_target_modules(transformer, targets, include_feed_forward=include_feed_forward),
        init_lora_weights=True,
    )
    model = get_peft_model(transformer, config)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return model


def trainable_lora_model(transformer: torch.nn.Module, lora: LoraSettings, *, gradient_checkpointing: bool = False,
                         dtype: torch.dtype, device: torch.device | str | None = None) -> PeftModel:
    """The transformer as training steps it: ltx-core's gradient checkpointing set as asked, our LoRA
    (`apply_lora`), the adapters in the base's `dtype` (on `device`, default: where they are), in train mode.

    Train mode matters: ltx-core recomputes a block only `if self._enable_gradient_checkpointing and
    self.training`, and its loaders return eval-mode modules. The training engine
    (`ltx_ray.train.engine.build_engine`) and the memory estimator both build their model here.
    """
    if gradient_checkpointing:
        transformer.set_gradient_checkpointing(True)
    model = apply_lora(transformer, lora.rank, targets=lora.targets, include_feed_forward=lora.include_feed_forward)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(device=device if device is not None else p.device, dtype=dtype)
    return model.train()


def set_gradient_checkpointing(model: torch.nn.Module, enable: bool = True) -> None:
    """Turn on ltx-core's per-block gradient checkpointing (`LTXModel.set_gradient_checkpointing`) under any wrapper."""
    _ltx_model(model).set_gradient_checkpointing(enable)


def lora_state_dict(model: torch.nn.Module, *, gathered=None) -> dict[str, torch.Tensor]:
    """The LoRA weights in LTX naming (`diffusion_model.<module>.lora_A.weight`), float32, on the CPU.

    Accepts a PEFT model or a DeepSpeed engine wrapping one. `gathered(params)`: a context under which
    partitioned parameters hold their full values (ZeRO-3's gather, `ltx_ray.train.zero3.lora_state_dict`).
    """
    peft_model = _unwrap(model)
    named = [(n, p) for n, p in peft_model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    if not named:
        raise ModelError(Problem("model", "the model has no LoRA parameters"))
    params = [p for _, p in named]
    with gathered(params) if gathered is not None else contextlib.nullcontext():
        return {_ltx_key(name): param.detach().to("cpu", torch.float32).clone() for name, param in named}


def base_model_name(job: JobConfig) -> str:
    """The base checkpoint's file name, recorded in the LoRA's metadata and the job's config file."""
    return Path(job.model.checkpoint.split("?", 1)[0]).name


@dataclass(frozen=True)
class LoraMetadata:
    """What an av2av IC-LoRA file records about its training: stored as strings (`strings()`) in the file.

    ltx-core's readers take the reference factors from it (`read_lora_reference_*`), as
    `ltx-ray generate` does (`ReferenceScaling.from_lora_metadata`).
    """

    rank: int
    trigger_phrase: str
    reference_downscale_factor: int
    reference_temporal_scale_factor: int
    base_model: str
    base_model_version: str = "2.3"  # the generation, "2.3" or "2.5" (`ltx_ray.model.files`)
    base_model_model_version: str = ""  # the transformer file's own `model_version`, when it states one
    text_encoder: str = "gemma-3"  # "gemma-3", or the packed Gemma-4's `gemma_version`
    ltx_ray_version: str = __version__

    @classmethod
    def from_job(cls, job: JobConfig) -> "LoraMetadata":
        """The metadata of the LoRA this job trains."""
        from ltx_ray.model.files import model_files

        r = job.request
        files = model_files(job.model, job.storage)
        return cls(rank=r.rank, trigger_phrase=r.trigger_phrase,
                   reference_downscale_factor=r.reference_downscale_factor,
                   reference_temporal_scale_factor=r.reference_temporal_scale_factor,
                   base_model=base_model_name(job), base_model_version=files.generation,
                   base_model_model_version=files.model_version, text_encoder=files.text_encoder_version)

    def strings(self) -> dict[str, str]:
        """The file's metadata: `training_type`, `rank`, `alpha` (= rank) and every field, as strings."""
        return {"training_type": TRAINING_TYPE, "rank": str(self.rank), "alpha": str(self.rank),
                "trigger_phrase": self.trigger_phrase,
                "reference_downscale_factor": str(self.reference_downscale_factor),
                "reference_temporal_scale_factor": str(self.reference_temporal_scale_factor),
                "base_model": self.base_model, "base_model_version": self.base_model_version,
                "base_model_model_version": self.base_model_model_version, "text_encoder": self.text_encoder,
                "ltx_ray_version": self.ltx_ray_version}


def export_lora(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: LoraMetadata) -> Path:
    """Write the LoRA file: `state_dict` (`lora_state_dict`'s LTX keys) as bf16 safetensors with `metadata`.

    The one writer of the file users get: every checkpoint holds one (`train.checkpoint.CheckpointWriter`),
    and the job's `lora_file` output is the final checkpoint's, copied (`train.outputs.publish`).
    """
    bad = [k for k in state_dict if not (k.startswith(KEY_PREFIX) and k.endswith((".lora_A.weight", ".lora_B.weight")))]
    if bad:
        raise ValueError(f"not LTX LoRA keys: {bad[:5]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=metadata.strings())
    return path


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The metadata strings of a LoRA file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ModelError(Problem(str(path), f"not a readable LoRA file: {exc}")) from None


@dataclass(frozen=True)
class IcLoraFile:
    """An av2av IC-LoRA file checked against a checkpoint: its path and metadata."""

    path: Path
    metadata: dict[str, str]

    def scaling(self, frame_rate: float) -> ReferenceScaling:
        """The reference scaling the LoRA was trained with, for clips at `frame_rate`."""
        return ReferenceScaling.from_lora_metadata(self.metadata, frame_rate=frame_rate, name=str(self.path))


def check_ic_lora(path: str | Path, files) -> IcLoraFile:
    """Refuse, naming the file, a LoRA that is not an av2av IC-LoRA, was trained on another LTX generation
    than `files` (`ltx_ray.model.files.ModelFiles`), or adapts layers the transformer lacks.

    The generation is the LoRA's `base_model_version` (ours); a file without one (the official trainer's,
    or ours before 2.5) is checked by its layers' shapes only.

    Reads only the LoRA's header and the transformer's shapes (built on the meta
    device): no weights are loaded. The reference factors come from the metadata,
    a missing key meaning 1, as the official readers (`read_lora_reference_*`) do.
    Accepted: our files (`training_type: av2av_ic_lora`) and files without a
    training type (the official trainer writes none) that adapt video and audio layers.
    """
    from ltx_ray.model.loader import transformer_linear_shapes

    path = Path(path)
    name = str(path)
    meta = read_lora_metadata(path)
    kind = meta.get("training_type")
    if kind is not None and kind != TRAINING_TYPE:
        raise ModelError(Problem(name, f"is a {kind!r} LoRA, not an av2av IC-LoRA ({TRAINING_TYPE})"))
    trained_on = meta.get("base_model_version")
    if trained_on is not None and trained_on != files.generation:
        raise ModelError(Problem(name, f"was trained on LTX-{trained_on} ({meta.get('base_model', '?')}); "
                                       f"model.checkpoint {Path(files.transformer).name} is {files.label}"))
    checkpoint = files.transformer
    with safe_open(name, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    layers: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        match = re.fullmatch(rf"{re.escape(KEY_PREFIX)}(.+)\.(lora_[AB])\.weight", key)
        if match is None:
            raise ModelError(Problem(name, f"is not an LTX LoRA file: unexpected key {key!r}"))
        layers.setdefault(match.group(1), {})[match.group(2)] = shape
    if not layers:
        raise ModelError(Problem(name, "is not an LTX LoRA file: it holds no lora_A/lora_B weights"))
    if kind is None and not any(".audio" in n or "_audio" in n for n in layers):
        raise ModelError(Problem(name, "is not an av2av IC-LoRA: it adapts no audio layer"))
    linears = transformer_linear_shapes(checkpoint)
    misfits = []
    for layer, pair in sorted(layers.items()):
        a, b = pair.get("lora_A"), pair.get("lora_B")
        weight = linears.get(layer)
        if a is None or b is None:
            misfits.append(f"{layer} (lora_A or lora_B missing)")
        elif weight is None:
            misfits.append(f"{layer} (no such layer in the checkpoint's transformer)")
        elif len(a) != 2 or len(b) != 2 or a[0] != b[1] or (b[0], a[1]) != weight:
            misfits.append(f"{layer} (A {a}, B {b} do not fit the weight {weight})")
    if misfits:
        more = f" and {len(misfits) - 5} more" if len(misfits) > 5 else ""
        raise ModelError(Problem(name, f"does not fit the checkpoint {Path(str(checkpoint)).name}: "
                                       f"{'; '.join(misfits[:5])}{more}"))
    checked = IcLoraFile(path=path, metadata=meta)
    checked.scaling(frame_rate=1.0)  # refuses factors outside 1..8 now, before any model is loaded
    return checked


def _ltx_key(peft_name: str) -> str:
    name = peft_name.removeprefix("base_model.model.").replace(f".{_ADAPTER}.", ".")
    return KEY_PREFIX + name


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # A DeepSpeed engine (or DDP) keeps the wrapped model in `.module`.
    while not isinstance(model, PeftModel) and hasattr(model, "module"):
        model = model.module
    return model


def _ltx_model(model: torch.nn.Module) -> torch.nn.Module:
    model = _unwrap(model)
    return model.get_base_model() if isinstance(model, PeftModel) else model

