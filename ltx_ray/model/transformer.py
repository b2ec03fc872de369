"""The LTX transformer as Lightricks' current ltx-core computes it, built on the ltx-core 1.0.0 we install.

PyPI has ltx-core 1.0.0; Lightricks' repository (`Lightricks/LTX-2`, release 1.2.0) has moved on.
`TransformerConfigurator` builds 1.0.0's `LTXModel` from a checkpoint's config and brings it to the
1.2.0 forward, so that a LoRA trained here learns the function the official trainer and the
official IC-LoRA inference run. Every loader of the transformer goes through it
(`ltx_ray.model.loader`, ZeRO-3's partitioned build, the estimator's meta build).

What differs, each following the named official file and function (ltx-core 1.2.0):

- **Audio<->video cross-attention modulation** (`transformer_args.py`,
  `MultiModalTransformerArgsPreprocessor._prepare_cross_attention_timestep`, since ltx-core 1.1.4):
  the AdaLN scale/shift of the A2V/V2A attention comes from each token's own timestep
  (`modality.timesteps`), the gate from the other modality's σ. 1.0.0 takes both from the other
  modality's σ. They agree where every token has the same timestep, and differ exactly where
  av2av lives: the reference tokens, at timestep 0.
- **LTX-2.5's flags** (`model_configurator.py`, `LTXModelConfigurator.from_metadata`):
  `ff_bias` / `audio_ff_bias` false builds that stream's feed-forward without biases
  (`feed_forward.py`, `FeedForward(bias=)`); `use_keyframes_abs_pos_embedding` adds a learned
  `[1, inner_dim]` vector, `keyframes_abs_pos_embedding`, to the tokens a `keyframes_mask` marks,
  right after `patchify_proj` (`transformer_args.py`, `apply_keyframes_absolute_embedding`).
  1.0.0's `Modality` has no `keyframes_mask`; `KeyframedModality` carries it.
- `use_prompt_adaln_single: false` (KV-cacheable checkpoints, no published LTX model) is refused:
  1.0.0's text cross-attention needs the prompt AdaLN.

Everything else of the forward (blocks, attention, perturbations, RoPE) computes the same in both
versions; `scripts/parity_official.py` measures it against the official source, pass by pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from ltx_core.model.transformer.modality import Modality

from ltx_ray.errors import ModelError, Problem

__all__ = ["KeyframedModality", "TransformerConfigurator", "drop_feed_forward_biases", "follow_current_ltx_core"]


@dataclass(frozen=True)
class KeyframedModality(Modality):
    """1.0.0's `Modality` plus ltx-core 1.2.0's `keyframes_mask` `[B, T, 1]` (non-zero on marked tokens)."""

    keyframes_mask: torch.Tensor | None = None


class TransformerConfigurator:
    """ltx-core's `LTXModelConfigurator`, giving the model the current ltx-core forward (see the module)."""

    @classmethod
    def from_config(cls, config: dict) -> torch.nn.Module:
        """The `LTXModel` of a checkpoint config (its `transformer` section), 2.3 or 2.5."""
        from ltx_core.model.transformer.model_configurator import LTXModelConfigurator

        # rope_type: 1.2.0's default is "split" (1.0.0's "interleaved"); the published files state it anyway.
        flags = {"rope_type": "split", **config.get("transformer", {})}
        config = {**config, "transformer": flags}
        if not flags.get("use_prompt_adaln_single", True):
            raise ModelError(Problem("config.transformer.use_prompt_adaln_single",
                                     "false (a KV-cacheable checkpoint) is not supported: no published LTX model sets it"))
        return follow_current_ltx_core(LTXModelConfigurator.from_config(config), flags)


def follow_current_ltx_core(model: torch.nn.Module, flags: dict[str, Any]) -> torch.nn.Module:
    """Bring a freshly built 1.0.0 `LTXModel` to the 1.2.0 forward for the config `flags`; returns it."""
    if not flags.get("ff_bias", True):
        drop_feed_forward_biases(block.ff for block in model.transformer_blocks)
    if not flags.get("audio_ff_bias", True):
        drop_feed_forward_biases(block.audio_ff for block in model.transformer_blocks)
    if flags.get("use_keyframes_abs_pos_embedding", False):
        # Made like the official model's (zeros), then loaded from the file: a file whose config sets the flag
        # without holding the vector is refused by the loaders (its weights are checked key by key).
        like = model.patchify_proj.weight
        model.keyframes_abs_pos_embedding = torch.nn.Parameter(torch.zeros(1, model.inner_dim, dtype=like.dtype,
                                                                            device=like.device))
    model.video_args_preprocessor = _CurrentArgs(model.video_args_preprocessor, model, video=True)
    model.audio_args_preprocessor = _CurrentArgs(model.audio_args_preprocessor, model, video=False)
    return model


def drop_feed_forward_biases(feed_forwards) -> None:
    """Each feed-forward's two Linear layers without their biases (1.2.0's `FeedForward(bias=False)`)."""
    for ff in feed_forwards:
        for layer in (ff.net[0].proj, ff.net[2]):
            layer.register_parameter("bias", None)


class _CurrentArgs:
    """Wraps a 1.0.0 args preprocessor: the 1.2.0 cross-attention modulation and keyframe marker."""

    def __init__(self, inner, model: torch.nn.Module, *, video: bool):
        self.inner, self._model, self._video = inner, model, video

    def __getattr__(self, name: str):
        if name == "inner":  # not yet set (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare(self, modality: Modality, cross_modality: Modality | None = None):
        """1.0.0's arguments, with the 1.2.0 cross-attention scale/shift and keyframe marker."""
        args = self.inner.prepare(modality, cross_modality)
        mask = getattr(modality, "keyframes_mask", None)
        embedding = getattr(self._model, "keyframes_abs_pos_embedding", None) if self._video else None
        if mask is not None and embedding is not None:
            args = replace(args, x=args.x + (mask > 0).to(args.x.dtype) * embedding.to(args.x.dtype))
        if cross_modality is None or not hasattr(self.inner, "cross_scale_shift_adaln"):
            return args
        # transformer_args.py, _prepare_cross_attention_timestep (1.2.0): the scale/shift from the
        # token's own timestep; the gate (1.0.0's, unchanged) from the other modality's σ.
        multiplier = self.inner.simple_preprocessor.timestep_scale_multiplier
        scale_shift, _ = self.inner.cross_scale_shift_adaln((modality.timesteps * multiplier).flatten(),
                                                             hidden_dtype=modality.latent.dtype)
        batch = args.x.shape[0]
        return replace(args, cross_scale_shift_timestep=scale_shift.view(batch, -1, scale_shift.shape[-1]))
