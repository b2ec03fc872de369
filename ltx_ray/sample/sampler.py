"""av2av sampling: denoise a target video and its audio together, conditioned on a clean reference.

The official av2av validation (ltx-trainer's `validation_runner.py`), number for
number, with ltx-core's own parts:
- per modality the sequence is [reference tokens (clean, timestep 0), target
  tokens (noised)] with the positions of training (`ltx_ray.model.tokens`), so
  the reference is scaled at inference exactly as it was in training;
- the schedule is `LTX2Scheduler().execute(steps)` with its default token
  shift, and `steps` Euler steps, the state kept in the model's dtype;
- each step runs up to four passes: the prompt, the negative prompt (CFG), the
  prompt with the video and audio self-attention of the STG block skipped, and
  the prompt with the audio<->video cross-attention skipped in every block
  (modality guidance). They run as one batch (`Guidance.batched`) or one by one;
- each pass's velocity becomes a denoised estimate x0 = x - t·v, and one
  ltx-core `MultiModalGuider` per modality combines them in float32 over the
  whole sequence (reference tokens included, as officially), rescale included;
  the reference tokens are then put back to their clean values.
The official sequence appends the reference after the target; attention does
not depend on the order, so the outputs are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)

from ltx_ray.model.tokens import (
    audio_positions,
    patchify_audio,
    patchify_video,
    reference_conditioned_modality,
    reference_video_positions,
    unpatchify_audio,
    unpatchify_video,
    video_positions,
)

if TYPE_CHECKING:
    from ltx_ray.config.schema import JobConfig, RequestConfig

# The official STG block, `stg_blocks: [28]`, is for the 48-block LTX-2.3 transformer.
OFFICIAL_DEPTH = 48

@dataclass
class Conditioning:
    """One validation sample's encoded inputs (batch of 1)."""

    ref_video: torch.Tensor  # [1, C, f_ref, h_ref, w_ref] reference video latents
    ref_audio: torch.Tensor  # [1, C, T_ref, M] reference audio latents
    video_context: torch.Tensor
    audio_context: torch.Tensor
    context_mask: torch.Tensor
    negative_video_context: torch.Tensor
    negative_audio_context: torch.Tensor
    negative_context_mask: torch.Tensor


@dataclass(frozen=True)
class TargetShape:
    """Latent shape of the clip to generate."""

    video_channels: int
    frames: int
    height: int
    width: int
    audio_channels: int
    audio_frames: int
    mel_bins: int


@dataclass(frozen=True)
class Guidance:
    """One ltx-core guider's parameters per modality, and whether a step's passes run as one batch."""

    video: MultiModalGuiderParams
    audio: MultiModalGuiderParams
    batched: bool = True
    passes: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        guiders = [MultiModalGuider(self.video), MultiModalGuider(self.audio)]
        passes = ["positive"]
        if any(g.do_unconditional_generation() for g in guiders):
            passes.append("negative")
        if any(g.do_perturbed_generation() for g in guiders):
            passes.append("stg")
        if any(g.do_isolated_modality_generation() for g in guiders):
            passes.append("modality")
        object.__setattr__(self, "passes", tuple(passes))


def transformer_depth(model) -> int:
    """The number of transformer blocks of an LTX model (bare, PEFT-wrapped or in a DeepSpeed engine)."""
    blocks = [m for name, m in model.named_modules() if name.endswith("transformer_blocks")]
    return len(blocks[0]) if blocks else 1


def stg_block(official_block: int, depth: int) -> int:
    """The official STG block (of 48) at the same relative depth of a `depth`-block model."""
    return min(depth - 1, round(official_block * depth / OFFICIAL_DEPTH))


def guidance_from_config(job: "JobConfig", model) -> Guidance:
    """The previews' (and `ltx-ray generate`'s) guidance: `train.validation_*` and the spec's `stg_scale`."""
    t = job.train
    blocks = [stg_block(t.validation_stg_block, transformer_depth(model))]

    def params(cfg: float, modality: float) -> MultiModalGuiderParams:
        return MultiModalGuiderParams(cfg_scale=cfg, stg_scale=job.request.stg_scale, stg_blocks=blocks,
                                      rescale_scale=t.validation_guidance_rescale, modality_scale=modality)

    return Guidance(
        video=params(t.validation_video_cfg_scale, t.validation_video_modality_scale),
        audio=params(t.validation_audio_cfg_scale, t.validation_audio_modality_scale),
        batched=t.validation_batch_guidance,
    )


def target_shape(request: "RequestConfig", cond: Conditioning) -> TargetShape:
    """The latent shape of a clip at the request's validation size; audio as long as the reference's."""
    from ltx_ray.config.resolution import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, bucket_size

    width, height = bucket_size(request.validation_resolution, request.validation_aspect_ratio)
    return TargetShape(
        video_channels=cond.ref_video.shape[1],
        frames=(request.validation_number_of_frames - 1) // TEMPORAL_COMPRESSION + 1,
        height=height // SPATIAL_COMPRESSION,
        width=width // SPATIAL_COMPRESSION,
        audio_channels=cond.ref_audio.shape[1],
        audio_frames=cond.ref_audio.shape[2],
        mel_bins=cond.ref_audio.shape[3],
    )


@torch.no_grad()
def sample_av2av(
    model,
    cond: Conditioning,
    shape: TargetShape,
    generator: torch.Generator,
    *,
    frame_rate: float,
    reference_downscale_factor: int = 1,
    reference_temporal_scale_factor: int = 1,
    steps: int,
    guidance: Guidance,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate (video latents `[1, C, f, h, w]`, audio latents `[1, C, T, M]`) for one reference."""
    param = next(p for p in model.parameters())
    device, dtype = param.device, param.dtype
    ref_v = patchify_video(cond.ref_video.to(device, dtype))
    ref_a = patchify_audio(cond.ref_audio.to(device, dtype))
    n_ref_v, n_ref_a = ref_v.shape[1], ref_a.shape[1]
    _, _, rf, rh, rw = cond.ref_video.shape
    v_pos = torch.cat(
        [
            reference_video_positions(
                1, rf, rh, rw, frame_rate,
                downscale_factor=reference_downscale_factor,
                temporal_scale_factor=reference_temporal_scale_factor,
                device=device,
            ),
            video_positions(1, shape.frames, shape.height, shape.width, frame_rate, device=device),
        ],
        dim=2,
    )
    a_pos = torch.cat(
        [audio_positions(1, n_ref_a, device=device), audio_positions(1, shape.audio_frames, device=device)],
        dim=2,
    )
    n_video = shape.frames * shape.height * shape.width
    # As officially: one draw per modality over target + reference tokens (video first), in the
    # model's dtype; the reference's part of the draw is not used.
    x_v = torch.randn((1, n_video + n_ref_v, shape.video_channels), generator=generator, device=device,
                      dtype=dtype)[:, :n_video]
    x_a = torch.randn((1, shape.audio_frames + n_ref_a, shape.audio_channels * shape.mel_bins),
                      generator=generator, device=device, dtype=dtype)[:, :shape.audio_frames]
    sigmas = LTX2Scheduler().execute(steps).to(device)
    guiders = MultiModalGuider(guidance.video), MultiModalGuider(guidance.audio)
    contexts = {
        "positive": (cond.video_context, cond.audio_context, cond.context_mask),
        "negative": (cond.negative_video_context, cond.negative_audio_context, cond.negative_context_mask),
    }
    perturbation = {
        "positive": PerturbationConfig.empty(),
        "negative": PerturbationConfig.empty(),
        "stg": PerturbationConfig([
            Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, list(guidance.video.stg_blocks or [])),
            Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, list(guidance.audio.stg_blocks or [])),
        ]),
        # Every block: the modality-isolated pass sees no audio<->video cross-attention at all.
        "modality": PerturbationConfig([
            Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
            Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None),
        ]),
    }

    def denoised(passes: tuple[str, ...], sigma: torch.Tensor) -> tuple[dict, dict]:
        """x0 over the whole sequence of each pass in `passes`, run as one batch."""
        k = len(passes)
        ctx_v, ctx_a, mask = (torch.cat([contexts.get(p, contexts["positive"])[i].to(device) for p in passes])
                              for i in range(3))
        sig = sigma.reshape(1).expand(k)
        v_mod = reference_conditioned_modality(ref_v.expand(k, -1, -1), x_v.expand(k, -1, -1),
                                               v_pos.expand(k, *v_pos.shape[1:]), sig, ctx_v, mask)
        a_mod = reference_conditioned_modality(ref_a.expand(k, -1, -1), x_a.expand(k, -1, -1),
                                               a_pos.expand(k, *a_pos.shape[1:]), sig, ctx_a, mask)
        vel_v, vel_a = model(video=v_mod, audio=a_mod,
                             perturbations=BatchedPerturbationConfig([perturbation[p] for p in passes]))
        x0_v = _to_denoised(v_mod, vel_v, dtype)
        x0_a = _to_denoised(a_mod, vel_a, dtype)
        return {p: x0_v[i:i + 1] for i, p in enumerate(passes)}, {p: x0_a[i:i + 1] for i, p in enumerate(passes)}

    from tqdm import tqdm

    for i in tqdm(range(steps), desc="sample", unit="step", disable=not progress):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if guidance.batched:
            x0_v, x0_a = denoised(guidance.passes, sigma)
        else:
            x0_v, x0_a = {}, {}
            for name in guidance.passes:
                v, a = denoised((name,), sigma)
                x0_v.update(v)
                x0_a.update(a)
        x_v = _guided_euler_step(guiders[0], x0_v, x_v, n_ref_v, float(sigma), float(sigma_next))
        x_a = _guided_euler_step(guiders[1], x0_a, x_a, n_ref_a, float(sigma), float(sigma_next))

    video = unpatchify_video(x_v.float(), shape.frames, shape.height, shape.width)
    audio = unpatchify_audio(x_a.float(), shape.audio_channels, shape.mel_bins)
    return video, audio


def _to_denoised(modality, velocity: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x0 = x - t·v per token (ltx-core's `to_denoised`); exact on reference tokens, whose t is 0."""
    return (modality.latent.float() - velocity.float() * modality.timesteps.unsqueeze(-1)).to(dtype)


def _guided_euler_step(guider: MultiModalGuider, x0: dict, x: torch.Tensor, n_ref: int, sigma: float,
                       sigma_next: float) -> torch.Tensor:
    """Guide the x0 estimates of one modality and take one Euler step of its target tokens."""
    cond = x0["positive"].float()
    guided = guider.calculate(cond, *(x0.get(name, x0["positive"]).float() for name in ("negative", "stg", "modality")))
    target_x0 = guided.to(x.dtype)[:, n_ref:]
    velocity = ((x.float() - target_x0.float()) / sigma).to(x.dtype)
    return (x.float() + velocity.float() * (sigma_next - sigma)).to(x.dtype)
