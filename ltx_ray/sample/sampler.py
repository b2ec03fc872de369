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

`sample_av2av` generates one clip in one process (`ltx-ray generate`, ZeRO-3
previews). `sample_split` generates several clips with their passes spread over
the ranks of a process group (ZeRO-2 previews, where every rank holds the whole
model): the same clips, bit for bit, whatever the number of ranks. Both take
`Clip`s (conditioning, latent shape, seed) and the `SamplerSettings` every clip
shares (`sampler_settings`: the reference scaling, steps, guidance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)

from ltx_ray.model.av2av import (
    SPATIAL_COMPRESSION,
    TEMPORAL_COMPRESSION,
    ReferenceScaling,
    audio_sequence_positions,
    video_sequence_positions,
)
from ltx_ray.model.tokens import (
    patchify_audio,
    patchify_video,
    reference_conditioned_modality,
    unpatchify_audio,
    unpatchify_video,
)
from ltx_ray.model.transformer import KeyframedModality

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
    """One ltx-core guider's parameters per modality, and whether a step's passes run as one batch.

    `batched` applies to `sample_av2av`; `sample_split` runs every pass alone, whatever it says.
    """

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


def guidance_from_config(job: "JobConfig", model=None) -> Guidance:
    """The previews' (and `ltx-ray generate`'s) guidance: `preview.*` and the spec's `stg_scale`.

    The STG block is placed at the model's depth; without a model (sizing a preview), at the 48-block one's.
    """
    p = job.preview
    depth = OFFICIAL_DEPTH if model is None else transformer_depth(model)
    blocks = [stg_block(p.stg_block, depth)]

    def params(cfg: float, modality: float) -> MultiModalGuiderParams:
        return MultiModalGuiderParams(cfg_scale=cfg, stg_scale=job.request.stg_scale, stg_blocks=blocks,
                                      rescale_scale=p.guidance_rescale, modality_scale=modality)

    return Guidance(
        video=params(p.video_cfg_scale, p.video_modality_scale),
        audio=params(p.audio_cfg_scale, p.audio_modality_scale),
        batched=p.batch_guidance,
    )


def target_shape(request: "RequestConfig", cond: Conditioning) -> TargetShape:
    """The latent shape of a clip at the request's validation size; audio as long as the reference's."""
    from ltx_ray.config.resolution import bucket_size

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


@dataclass(frozen=True)
class Clip:
    """One clip to generate: its conditioning, its latent shape and the seed of its noise."""

    cond: Conditioning
    shape: TargetShape
    seed: int


@dataclass(frozen=True)
class SamplerSettings:
    """What every clip of a sampling run shares: the references' scaling (and the clips' frame rate), the
    number of denoising steps and the guidance."""

    scaling: ReferenceScaling
    steps: int
    guidance: Guidance


def sampler_settings(job: "JobConfig", scaling: ReferenceScaling, model=None) -> SamplerSettings:
    """The previews' and `ltx-ray generate`'s settings: `scaling` (the request's, or the LoRA's), the
    config's `preview.inference_steps` and guidance (`guidance_from_config`, at `model`'s depth)."""
    return SamplerSettings(scaling, job.preview.inference_steps, guidance_from_config(job, model))


@torch.no_grad()
def sample_av2av(model, clip: Clip, settings: SamplerSettings, *,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate (video latents `[1, C, f, h, w]`, audio latents `[1, C, T, M]`) of one clip, in this process.

    The noise comes from a generator on the model's device seeded with `clip.seed`; the guidance passes
    run as one batch or one by one as `settings.guidance.batched` says.
    """
    from tqdm import tqdm

    param = next(model.parameters())
    generator = torch.Generator(device=param.device).manual_seed(clip.seed)
    state = _Denoising(model, clip.cond, clip.shape, generator, settings)
    guidance, steps = settings.guidance, settings.steps
    sigmas = LTX2Scheduler().execute(steps).to(state.device)
    groups = [guidance.passes] if guidance.batched else [(name,) for name in guidance.passes]
    for i in tqdm(range(steps), desc="sample", unit="step", disable=not progress):
        x0 = {}
        for group in groups:
            x0.update(state.denoised(model, group, sigmas[i]))
        state.step(x0, float(sigmas[i]), float(sigmas[i + 1]))
    return state.latents()


@torch.no_grad()
def sample_split(model, clips: list[Clip], settings: SamplerSettings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Generate every clip with its guidance passes spread over the ranks; every rank returns all the latents.

    All ranks of the default process group call it together, each with the whole model (ZeRO-2);
    without a process group everything runs here. A work unit is one (clip, pass) pair, run as a
    forward of batch 1 (`Guidance.batched` does not apply: the batch a pass runs in would depend on
    the split, and a batch of several gives other floating-point results on some kernels); unit k
    runs on rank k % world. At each step every rank computes its units' x0 estimates, all ranks
    exchange them (`_share`: exact bits, on the model's device, as NCCL needs), and every rank
    applies the guiders and the Euler step to every clip, so all ranks stay in lockstep and the
    clips are the same, bit for bit, on 1 rank or on many (with `sample_av2av`'s one-by-one passes
    too). Ranks beyond the number of units only take part in the exchange.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    param = next(model.parameters())
    states = [_Denoising(model, c.cond, c.shape, torch.Generator(device=param.device).manual_seed(c.seed), settings)
              for c in clips]
    units = [(i, name) for i in range(len(states)) for name in settings.guidance.passes]
    sigmas = LTX2Scheduler().execute(settings.steps).to(param.device)
    for step in range(settings.steps):
        mine = {k: states[i].denoised(model, (name,), sigmas[step])[name]
                for k, (i, name) in enumerate(units) if k % world == rank}
        if world > 1:
            mine = _share(mine, [states[i].x0_shapes for i, _ in units], param.device, param.dtype)
        for i, state in enumerate(states):
            state.step({name: mine[k] for k, (j, name) in enumerate(units) if j == i},
                       float(sigmas[step]), float(sigmas[step + 1]))
    return [state.latents() for state in states]


def _share(mine: dict[int, tuple[torch.Tensor, torch.Tensor]], shapes: list[tuple[torch.Size, torch.Size]],
           device: torch.device, dtype: torch.dtype) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Every unit's (video x0, audio x0) on every rank, from the units each rank computed.

    Each unit has its slot in one buffer on the model's device; its owner writes it, the other
    ranks leave zeros, and a sum over the buffer's bytes (uint8) copies every unit's bits to every
    rank exactly, whatever the dtype. One collective per step, the size of all the units (not of
    the world).
    """
    sizes = [video.numel() + audio.numel() for video, audio in shapes]
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    buffer = torch.zeros(sum(sizes), dtype=dtype, device=device)
    for k, (v, a) in mine.items():
        buffer[offsets[k]:offsets[k] + sizes[k]] = torch.cat([v.flatten(), a.flatten()])
    dist.all_reduce(buffer.view(torch.uint8))
    out = {}
    for k, (video_shape, audio_shape) in enumerate(shapes):
        unit = buffer[offsets[k]:offsets[k] + sizes[k]]
        out[k] = (unit[:video_shape.numel()].view(video_shape), unit[video_shape.numel():].view(audio_shape))
    return out


class _Denoising:
    """One clip on its way: its noisy target tokens, the fixed inputs of its passes, its guiders."""

    def __init__(self, model, cond: Conditioning, shape: TargetShape, generator: torch.Generator,
                 settings: SamplerSettings):
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        self.device, self.shape, self.guidance = device, shape, settings.guidance
        self.ref_v = patchify_video(cond.ref_video.to(device, dtype))
        self.ref_a = patchify_audio(cond.ref_audio.to(device, dtype))
        n_ref_v, n_ref_a = self.ref_v.shape[1], self.ref_a.shape[1]
        target = (1, shape.video_channels, shape.frames, shape.height, shape.width)
        self.v_pos = video_sequence_positions(cond.ref_video.shape, target, settings.scaling, device=device)
        self.a_pos = audio_sequence_positions(n_ref_a, shape.audio_frames, 1, device=device)
        n_video = shape.frames * shape.height * shape.width
        # As officially: one draw per modality over target + reference tokens (video first), in the
        # model's dtype; the reference's part of the draw is not used.
        self.x_v = torch.randn((1, n_video + n_ref_v, shape.video_channels), generator=generator, device=device,
                               dtype=dtype)[:, :n_video]
        self.x_a = torch.randn((1, shape.audio_frames + n_ref_a, shape.audio_channels * shape.mel_bins),
                               generator=generator, device=device, dtype=dtype)[:, :shape.audio_frames]
        self.guiders = MultiModalGuider(settings.guidance.video), MultiModalGuider(settings.guidance.audio)
        self.contexts = {
            "positive": (cond.video_context, cond.audio_context, cond.context_mask),
            "negative": (cond.negative_video_context, cond.negative_audio_context, cond.negative_context_mask),
        }
        self.perturbations = _perturbations(settings.guidance)
        # LTX-2.5's keyframe marker, as official inference sets it (ltx-core 1.2.0 `VideoLatentTools.
        # create_initial_state`): on the target's first latent frame; reference tokens are never marked.
        self.keyframes = None
        if any(name.endswith("keyframes_abs_pos_embedding") for name, _ in model.named_parameters()):
            self.keyframes = torch.zeros(1, n_ref_v + n_video, 1, device=device, dtype=dtype)
            self.keyframes[:, n_ref_v:n_ref_v + shape.height * shape.width] = 1

    @property
    def x0_shapes(self) -> tuple[torch.Size, torch.Size]:
        """The shapes of one pass's x0 (video, audio): the whole sequence, reference included."""
        return (torch.Size((1, self.ref_v.shape[1] + self.x_v.shape[1], self.x_v.shape[2])),
                torch.Size((1, self.ref_a.shape[1] + self.x_a.shape[1], self.x_a.shape[2])))

    def denoised(self, model, passes: tuple[str, ...],
                 sigma: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(video x0, audio x0) over the whole sequence of each pass in `passes`, run as one batch."""
        k = len(passes)
        ctx_v, ctx_a, mask = (
            torch.cat([self.contexts.get(p, self.contexts["positive"])[i].to(self.device) for p in passes])
            for i in range(3)
        )
        sig = sigma.reshape(1).expand(k)
        v_mod = reference_conditioned_modality(self.ref_v.expand(k, -1, -1), self.x_v.expand(k, -1, -1),
                                               self.v_pos.expand(k, *self.v_pos.shape[1:]), sig, ctx_v, mask)
        if self.keyframes is not None:
            v_mod = KeyframedModality(**vars(v_mod), keyframes_mask=self.keyframes.expand(k, -1, -1))
        a_mod = reference_conditioned_modality(self.ref_a.expand(k, -1, -1), self.x_a.expand(k, -1, -1),
                                               self.a_pos.expand(k, *self.a_pos.shape[1:]), sig, ctx_a, mask)
        vel_v, vel_a = model(video=v_mod, audio=a_mod,
                             perturbations=BatchedPerturbationConfig([self.perturbations[p] for p in passes]))
        x0_v = _to_denoised(v_mod, vel_v, self.x_v.dtype)
        x0_a = _to_denoised(a_mod, vel_a, self.x_a.dtype)
        return {p: (x0_v[i:i + 1], x0_a[i:i + 1]) for i, p in enumerate(passes)}

    def step(self, x0: dict[str, tuple[torch.Tensor, torch.Tensor]], sigma: float, sigma_next: float) -> None:
        """Guide the passes' x0 estimates and take one Euler step of the target tokens."""
        n_ref_v, n_ref_a = self.ref_v.shape[1], self.ref_a.shape[1]
        self.x_v = _guided_euler_step(self.guiders[0], {p: v for p, (v, _) in x0.items()}, self.x_v, n_ref_v,
                                      sigma, sigma_next)
        self.x_a = _guided_euler_step(self.guiders[1], {p: a for p, (_, a) in x0.items()}, self.x_a, n_ref_a,
                                      sigma, sigma_next)

    def latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(video latents `[1, C, f, h, w]`, audio latents `[1, C, T, M]`), float32."""
        s = self.shape
        return (unpatchify_video(self.x_v.float(), s.frames, s.height, s.width),
                unpatchify_audio(self.x_a.float(), s.audio_channels, s.mel_bins))


def _perturbations(guidance: Guidance) -> dict[str, PerturbationConfig]:
    """ltx-core's perturbation of each pass."""
    return {
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
