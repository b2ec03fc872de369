"""The av2av IC-LoRA training step: one loss from a batch of reference/target latents.

Per modality the token sequence is [clean reference tokens, noised target
tokens]. Reference tokens carry timestep 0 and no loss; target tokens are
x_σ = (1 − σ)·x0 + σ·ε with timestep σ, and the model's velocity prediction is
regressed onto ε − x0. σ is drawn per sample and independently for video and
audio. The total loss is video loss + audio loss; both are reported.

`av2av_loss` is a pure function of (model, batch, generator): no Ray, no
DeepSpeed, no global RNG, so it runs the same in a test and on a cluster rank.
Training passes one generator per sample (seeded by the sample's place in the
run, `train.batches.noise_generators`), so a sample's σ and ε do not depend on
which rank or micro-batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from ltx_core.model.transformer.modality import Modality

from ltx_ray.model.av2av import ReferenceScaling, audio_sequence_positions, video_sequence_positions
from ltx_ray.model.tokens import patchify_audio, patchify_video, reference_conditioned_modality, sample_sigmas

# One generator for the whole batch, or one per sample (each draws that sample's σ and ε, video then audio).
Generators = Union[torch.Generator, Sequence[torch.Generator]]

BATCH_KEYS = ("ref_video", "video", "ref_audio", "audio", "video_context", "audio_context", "context_mask")


@dataclass(frozen=True)
class ModalityInputs:
    """One modality's transformer input and what its prediction is scored against.

    `loss_mask` `[B, T_ref + T]` is False on reference tokens; `target` `[B, T, C]`
    is the velocity ε − x0 of the target tokens only.
    """

    modality: Modality
    target: torch.Tensor
    loss_mask: torch.Tensor
    sigma: torch.Tensor
    reference_tokens: int


def av2av_inputs(batch: dict[str, torch.Tensor], generator: Generators,
                 scaling: ReferenceScaling = ReferenceScaling(),
                 sigma: torch.Tensor | None = None) -> tuple[ModalityInputs, ModalityInputs]:
    """Noise the targets and build the (video, audio) transformer inputs of one av2av step.

    `scaling`: how the batch's references were scaled, and the clips' frame rate (the token positions).
    `sigma` `[B]`: each sample's σ, for both modalities, instead of drawing it (the evaluation's fixed
    ladder, `ltx_ray.train.evaluation`); the generators then draw only ε.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"av2av batch lacks {missing}")
    video, ref_video = batch["video"], batch["ref_video"]
    video_inputs = _modality_inputs(
        patchify_video(ref_video), patchify_video(video),
        video_sequence_positions(ref_video.shape, video.shape, scaling, device=video.device),
        batch["video_context"], batch["context_mask"], generator, sigma,
    )
    audio, ref_audio = batch["audio"], batch["ref_audio"]
    audio_inputs = _modality_inputs(
        patchify_audio(ref_audio), patchify_audio(audio),
        audio_sequence_positions(ref_audio.shape[2], audio.shape[2], audio.shape[0], device=audio.device),
        batch["audio_context"], batch["context_mask"], generator, sigma,
    )
    return video_inputs, audio_inputs


def av2av_loss(model, batch: dict[str, torch.Tensor], generator: Generators,
               scaling: ReferenceScaling = ReferenceScaling()) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
    """The av2av IC-LoRA loss of one batch; returns (video loss + audio loss, metrics).

    `model` is the LTX transformer, bare, wrapped by PEFT, or a DeepSpeed engine
    (anything called as `model(video=..., audio=..., perturbations=None)`).
    Batch: `ref_video` `[B, C, f_ref, h_ref, w_ref]` and `video` `[B, C, f, h, w]`
    video latents; `ref_audio`, `audio` audio latents `[B, C, T, M]`;
    `video_context` `[B, L, Dv]`, `audio_context` `[B, L, Da]`, `context_mask` `[B, L]` (or None: no text token masked).
    `generator` draws σ and ε (on the batch's device): one for the batch, or one per sample. `scaling`: the
    references' scaling and the clips' frame rate (`ReferenceScaling.from_request`). Metrics: `video_loss`,
    `audio_loss`, `sigma_video`, `sigma_audio` (batch means; detached tensors),
    `video_tokens`, `audio_tokens` (target tokens per sample).
    """
    video_in, audio_in = av2av_inputs(batch, generator, scaling)
    video_pred, audio_pred = model(video=video_in.modality, audio=audio_in.modality, perturbations=None)
    video_loss = masked_mse(video_pred, video_in)
    audio_loss = masked_mse(audio_pred, audio_in)
    loss = video_loss + audio_loss
    metrics = {
        "video_loss": video_loss.detach(),
        "audio_loss": audio_loss.detach(),
        # Tensors, not Python numbers: the memory estimator runs this step on fake tensors, which hold no values.
        "sigma_video": video_in.sigma.mean().detach(),
        "sigma_audio": audio_in.sigma.mean().detach(),
        "video_tokens": int(video_in.target.shape[1]),
        "audio_tokens": int(audio_in.target.shape[1]),
    }
    return loss, metrics


def av2av_sample_losses(model, batch: dict[str, torch.Tensor], generator: Generators, sigma: torch.Tensor,
                        scaling: ReferenceScaling = ReferenceScaling()) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's (video, audio) av2av loss `[B]` (fp32) at the given σ `[B]`: the training loss's terms,
    sample by sample, with σ fixed rather than drawn (the evaluation's; no gradient is taken here)."""
    video_in, audio_in = av2av_inputs(batch, generator, scaling, sigma)
    video_pred, audio_pred = model(video=video_in.modality, audio=audio_in.modality, perturbations=None)
    return sample_mse(video_pred, video_in), sample_mse(audio_pred, audio_in)


def masked_mse(prediction: torch.Tensor, inputs: ModalityInputs) -> torch.Tensor:
    """Mean squared error on the tokens of `inputs.loss_mask` (the target), per sample, then over the batch."""
    return sample_mse(prediction, inputs).mean()


def sample_mse(prediction: torch.Tensor, inputs: ModalityInputs) -> torch.Tensor:
    """Each sample's mean squared error `[B]` (fp32) on the tokens of `inputs.loss_mask` (the target)."""
    mask = inputs.loss_mask.unsqueeze(-1).to(torch.float32)
    target = torch.zeros_like(prediction, dtype=torch.float32)
    target[:, inputs.reference_tokens:] = inputs.target.float()
    # Multiplying by the mask (not slicing) is the specification: nothing on a
    # reference position can reach the loss, whatever the model outputs there.
    squared = (prediction.float() - target).pow(2) * mask
    return squared.sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) * prediction.shape[-1]).clamp(min=1.0)


def _draw_sigma_and_noise(generator: Generators, b: int, n_target: int, shape: tuple[int, ...],
                          device: torch.device, sigma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """σ `[B]` and ε `[B, *shape]` (fp32): from one generator for the batch, or sample by sample from one each.
    A given `sigma` is used as it is (on `device`, fp32), and only ε is drawn."""
    if isinstance(generator, torch.Generator):
        if sigma is None:
            sigma = sample_sigmas(b, n_target, generator, device=device)
        noise = torch.randn((b, *shape), generator=generator, device=device, dtype=torch.float32)
        return sigma.to(device=device, dtype=torch.float32), noise
    if len(generator) != b:
        raise ValueError(f"{len(generator)} generators for a batch of {b}")
    draws = [_draw_sigma_and_noise(g, 1, n_target, shape, device, None if sigma is None else sigma[i:i + 1])
             for i, g in enumerate(generator)]
    return torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])


def _modality_inputs(
    reference: torch.Tensor,
    target: torch.Tensor,
    positions: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor | None,
    generator: Generators,
    sigma: torch.Tensor | None = None,
) -> ModalityInputs:
    b, n_target, _ = target.shape
    n_ref = reference.shape[1]
    sigma, noise = _draw_sigma_and_noise(generator, b, n_target, tuple(target.shape[1:]), target.device, sigma)
    s = sigma.view(b, 1, 1)
    x0 = target.float()
    noised = ((1 - s) * x0 + s * noise).to(target.dtype)
    loss_mask = torch.cat(
        [torch.zeros(b, n_ref, dtype=torch.bool, device=target.device),
         torch.ones(b, n_target, dtype=torch.bool, device=target.device)],
        dim=1,
    )
    modality = reference_conditioned_modality(reference, noised, positions, sigma, context, context_mask)
    return ModalityInputs(modality, noise - x0, loss_mask, sigma, n_ref)
