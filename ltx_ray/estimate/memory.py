"""One step's memory, measured on fake tensors: the training micro-step, a preview step, the encoder actor.

Each computation runs ltx-core's real modules (built from the architecture
config by ltx-core's own configurators) and our own step code — the av2av loss
(`model.objective.av2av_loss`), backward and torch's AdamW — under
`torch._subclasses.FakeTensorMode`: shapes, dtypes and every storage's size
are real, no memory is allocated and nothing is computed. `StorageTracker`
records live bytes by kind and the peak. Run with `fake=False` on a model that
fits, the same code measures the same step on real tensors; a test holds the
two within 10 %.

Attention: on CPU, PyTorch's SDPA may materialise the L x S attention matrix,
which a GPU's fused kernel never holds. With `gpu_attention=True` attention is
replaced, for the count only, by the footprint of FlashAttention-2 /
PyTorch's memory-efficient kernel: the output plus a float32 log-sum-exp per
query row saved for backward; in backward dq, dk, dv plus a float32 dq
accumulator and a float32 row term, freed after. No values are computed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from ltx_ray.estimate.architecture import Architecture, StepShapes, architecture_for
from ltx_ray.estimate.tracker import StorageTracker
from ltx_ray.model.av2av import AUDIO_LATENT_DOWNSAMPLE, LoraSettings, trainable_lora_model

# Kinds of the measured peak, in the order a table shows them.
KINDS = ("parameters", "gradients", "optimizer state", "activations", "temporaries", "inputs")


@dataclass(frozen=True)
class StepSetup:
    """What a measured step runs: ltx-core's transformer of `arch` in `dtype` with the `lora`, on `batch` samples
    of `shapes` (their reference scaling included), with ltx-core's gradient checkpointing or without.

    `batch`: the micro-batch of a training step, or the guidance passes run as one batch in a preview step.
    """

    arch: Architecture
    shapes: StepShapes
    lora: LoraSettings
    dtype: torch.dtype = torch.bfloat16
    batch: int = 1
    gradient_checkpointing: bool = True


@dataclass
class Measured:
    """The peak of live storages in one computation (bytes) and its split by kind at that moment."""

    peak: int
    kinds: dict[str, int]
    seconds: float
    parameters: int = 0  # parameter count of the model that ran
    trainable: int = 0
    lora_layers: int = 0
    peak_phase: str = ""
    notes: list[str] = field(default_factory=list)


def _kinds_at_peak(tracker: StorageTracker) -> dict[str, int]:
    at = tracker.at_peak
    known = {k: at.get(k, 0) for k in ("parameters", "gradients", "optimizer state", "activations", "inputs")}
    known["temporaries"] = tracker.peak - sum(known.values())
    return {k: known[k] for k in KINDS}


class _FusedAttentionFootprint(torch.autograd.Function):
    """The tensors a GPU's fused attention kernel allocates, with no values computed (fake mode only)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq_accum = q.new_empty(q.shape, dtype=torch.float32)  # noqa: F841  (freed on return)
        row_term = lse.new_empty(lse.shape)  # noqa: F841
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
    return _FusedAttentionFootprint.apply(q, k, v)


@contextlib.contextmanager
def _gpu_attention(enabled: bool):
    """Swap `torch.nn.functional.scaled_dot_product_attention` (what ltx-core calls) for the fused footprint."""
    if not enabled:
        yield
        return
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _clear_ltx_core_caches() -> None:
    """Empty ltx-core's `lru_cache`s of tensors (the RoPE frequency grids).

    A grid made under fake mode would otherwise be handed to later real calls
    (and a real one to fake calls), turning their outputs into fake tensors.
    """
    from ltx_core.model.transformer import rope

    for fn in (rope.generate_freq_grid_np, rope.generate_freq_grid_pytorch):
        fn.cache_clear()


@contextlib.contextmanager
def _mode(fake: bool):
    if not fake:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    _clear_ltx_core_caches()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        _clear_ltx_core_caches()


def build_transformer(arch: Architecture, *, dtype: torch.dtype, lora: LoraSettings | None = None,
                      gradient_checkpointing: bool = False):
    """ltx-core's AV transformer for `arch`, in `dtype`, with our `lora` (as the training engine builds it:
    `lora.trainable_lora_model`). Tensors are made in the ambient mode: call it under `FakeTensorMode` or on
    the meta device for a model that would not fit."""
    from ltx_ray.model.transformer import TransformerConfigurator

    model = TransformerConfigurator.from_config(arch.config).to(dtype)
    if lora is None:
        if gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        return model
    return trainable_lora_model(model, lora, gradient_checkpointing=gradient_checkpointing, dtype=dtype)


def model_counts(arch: Architecture, lora: LoraSettings) -> dict[str, int]:
    """Exact parameter counts of the transformer and its LoRA, built on the meta device.

    Besides the totals, the sizes DeepSpeed's buffers are set from (`estimate.zero_settings`):
    `largest_parameter` (elements of the largest tensor), `block_parameters` (one block, its
    LoRA included), `smallest_adapted_weight` (the smallest weight the LoRA adapts) and
    `small_parameters` (elements of all tensors smaller than that one: norms, biases, scale-shift
    tables, attention gates and the LoRA's own A and B).
    """
    with torch.device("meta"):
        model = build_transformer(arch, dtype=torch.bfloat16, lora=lora)
    sizes = [p.numel() for p in model.parameters()]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(sizes)
    adapted = [m.base_layer.weight.numel() for n, m in model.named_modules()
               if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    smallest_adapted = min(adapted)
    blocks = model.base_model.model.transformer_blocks
    return {"base_parameters": total - trainable, "trainable_parameters": trainable, "lora_layers": len(adapted),
            "blocks": len(blocks), "block_parameters": sum(p.numel() for p in blocks[0].parameters()),
            "largest_parameter": max(sizes), "smallest_adapted_weight": smallest_adapted,
            "small_parameters": sum(s for s in sizes if s < smallest_adapted)}


def job_model_counts(job) -> dict[str, int]:
    """`model_counts` of the job's transformer (its `model.checkpoint`'s architecture, or the built-in 22B where
    the header cannot be reached) with the job's LoRA."""
    arch, _ = architecture_for(job)
    return model_counts(arch, LoraSettings.from_job(job))


def random_batch(arch: Architecture, shapes: StepShapes, batch: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A training batch of `batch` samples of these shapes, random (or fake, under `FakeTensorMode`)."""
    t = arch.transformer
    text = shapes.text_tokens
    return {
        "ref_video": torch.randn(batch, *shapes.ref_video, dtype=dtype),
        "video": torch.randn(batch, *shapes.video, dtype=dtype),
        "ref_audio": torch.randn(batch, *shapes.ref_audio, dtype=dtype),
        "audio": torch.randn(batch, *shapes.audio, dtype=dtype),
        "video_context": torch.randn(batch, text, t.get("cross_attention_dim", 4096), dtype=dtype),
        "audio_context": torch.randn(batch, text, t.get("audio_cross_attention_dim", 2048), dtype=dtype),
        "context_mask": torch.ones(batch, text, dtype=torch.int64),
    }


def training_step(setup: StepSetup, *, weight_decay: float = 0.01, fake: bool = True,
                  gpu_attention: bool = True) -> Measured:
    """Peak memory of one training micro-step on one device (no ZeRO): forward, backward, AdamW step.

    The optimizer's state exists before the measured step (one step on zero
    gradients first), as it does in every step after the first. The peak's
    kinds: parameters (base + LoRA), gradients (the LoRA's), optimizer state,
    activations (made in forward and alive at the peak), temporaries (the rest,
    e.g. backward's and the recomputed blocks' working tensors), inputs (the batch).
    """
    from ltx_ray.model.objective import av2av_loss

    started = time.perf_counter()
    tracker = StorageTracker()
    with _mode(fake), _gpu_attention(gpu_attention and fake):
        model = build_transformer(setup.arch, dtype=setup.dtype, lora=setup.lora,
                                  gradient_checkpointing=setup.gradient_checkpointing)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        batch = random_batch(setup.arch, setup.shapes, setup.batch, setup.dtype)
        generator = torch.Generator().manual_seed(0)
        for t in [*model.parameters(), *model.buffers()]:
            tracker.add(t, "parameters")
        for t in batch.values():
            tracker.add(t, "inputs")
        for p in trainable:
            p.register_post_accumulate_grad_hook(lambda p: tracker.retag(p.grad, "gradients"))
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=weight_decay)
        with tracker:
            tracker.phase = "optimizer state"
            for p in trainable:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.phase = "activations"
            tracker.reset_peak()
            loss, _ = av2av_loss(model, batch, generator, setup.shapes.scaling)
            tracker.phase = "backward"
            loss.backward()
            del loss
            tracker.phase = "optimizer"
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        counts = _counts(model)
    return Measured(tracker.peak, _kinds_at_peak(tracker), time.perf_counter() - started,
                    peak_phase=tracker.peak_phase, **counts)


def preview_step(setup: StepSetup, *, fake: bool = True, gpu_attention: bool = True) -> Measured:
    """Peak memory of one denoising step of a preview: the model with its LoRA, `setup.batch` guidance passes
    as one batch, no gradients (what rank 0 adds while validating)."""
    from ltx_ray.model.objective import av2av_inputs

    started = time.perf_counter()
    tracker = StorageTracker()
    with _mode(fake), _gpu_attention(gpu_attention and fake), torch.no_grad():
        model = build_transformer(setup.arch, dtype=setup.dtype, lora=setup.lora)
        model.eval()
        batch = random_batch(setup.arch, setup.shapes, setup.batch, setup.dtype)
        for t in [*model.parameters(), *model.buffers()]:
            tracker.add(t, "parameters")
        for t in batch.values():
            tracker.add(t, "inputs")
        with tracker:
            tracker.phase = "activations"
            video, audio = av2av_inputs(batch, torch.Generator().manual_seed(0), setup.shapes.scaling)
            tracker.phase = "temporaries"
            model(video=video.modality, audio=audio.modality, perturbations=None)
        counts = _counts(model)
    return Measured(tracker.peak, _kinds_at_peak(tracker), time.perf_counter() - started,
                    peak_phase=tracker.peak_phase, **counts)


def encoder_step(arch: Architecture, shapes: StepShapes, *, dtype: torch.dtype = torch.bfloat16,
                 fake: bool = True) -> Measured:
    """Peak memory of the encoder actor's VAE work on one pair: the video encoder on the target clip
    (the larger of the two) and the audio encoder on its sound, one after the other, no gradients."""
    from ltx_core.model.audio_vae.model_configurator import AudioEncoderConfigurator
    from ltx_core.model.video_vae.model_configurator import VideoEncoderConfigurator

    started = time.perf_counter()
    tracker = StorageTracker()
    frames, height, width = shapes.pixels
    with _mode(fake), torch.no_grad():
        video_encoder = VideoEncoderConfigurator.from_config(arch.config).to(dtype).eval()
        audio_encoder = AudioEncoderConfigurator.from_config(arch.config).to(dtype).eval()
        for m in (video_encoder, audio_encoder):
            for t in [*m.parameters(), *m.buffers()]:
                tracker.add(t, "parameters")
        pixels = torch.randn(1, 3, frames, height, width, dtype=dtype)
        mel_frames = (shapes.audio[1] - 1) * AUDIO_LATENT_DOWNSAMPLE + 1
        dd = arch.config["audio_vae"]["model"]["params"]["ddconfig"]
        mel = torch.randn(1, dd.get("in_channels", 2), mel_frames, dd.get("mel_bins", 64), dtype=dtype)
        tracker.add(pixels, "inputs")
        tracker.add(mel, "inputs")
        with tracker:
            tracker.phase = "temporaries"
            video_encoder(pixels)
            audio_encoder(mel)
        params = sum(p.numel() for m in (video_encoder, audio_encoder) for p in m.parameters())
    return Measured(tracker.peak, _kinds_at_peak(tracker), time.perf_counter() - started, parameters=params)


def _counts(model) -> dict[str, int]:
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lora_layers": sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A")),
    }
