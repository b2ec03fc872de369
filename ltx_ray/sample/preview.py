"""Validation previews during training, and the reel.

The reel is one mp4 (H.264 + AAC): for each validation sample in turn, the
fitted reference (left) beside the generated clip (right), with the generated
audio as its sound track. Samples follow each other in time.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from ltx_ray.config.resolution import bucket_size
from ltx_ray.config.schema import JobConfig
from ltx_ray.model.av2av import AUDIO_LATENTS_PER_SECOND, SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, ReferenceScaling
from ltx_ray.model.files import model_files
from ltx_ray.model.ltx23 import LTX23_22B_CONFIG
from ltx_ray.sample.conditioning import load_validation_set
from ltx_ray.sample.render import ClipRenderer
from ltx_ray.sample.sampler import (
    Clip,
    guidance_from_config,
    sample_av2av,
    sample_split,
    sampler_settings,
    target_shape,
)

log = logging.getLogger(__name__)

REEL_NAME = "validation_reel.mp4"


class Previewer:
    """Generates the validation previews with the current LoRA: built on every rank, `run` on every rank together.

    Under ZeRO-2 every rank holds the whole model, so the clips' guidance passes are spread over
    the ranks (`sample_split`: each rank runs its share, the x0 estimates are exchanged at each
    step) and a preview takes about 1/world of one rank's time while no rank sits idle in a
    collective. Under ZeRO-3 every forward gathers the weights, a collective, so every rank runs
    every pass (`sample_av2av`, batched as `preview.batch_guidance` says). Rank 0 then
    decodes and writes the reel; the decoders are loaded for that and freed after it.
    """

    def __init__(self, job: JobConfig, validation_file: Path, rank: int, device: torch.device,
                 dtype: torch.dtype):
        self.job, self.rank, self.device, self.dtype = job, rank, device, dtype
        self.samples = load_validation_set(validation_file)

    def run(self, model, step: int, out_dir: Path) -> Path | None:
        """Sample every validation clip, then rank 0 writes the reel; its path on rank 0, None elsewhere.

        Ends with every rank synchronized (a barrier after rank 0's write).
        """
        latents = self.sample(model)
        reel = self._write(latents, step, out_dir) if self.rank == 0 else None
        if dist.is_initialized():
            dist.barrier()
        return reel

    def sample(self, model) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every validation clip's (video, audio) latents, on every rank (all ranks call it together).

        The model runs in eval mode; each of its modules gets its own mode back after, so a
        wrapped `LTXModel` stays in train mode (its gradient checkpointing needs it) whatever
        its wrapper's flag says.
        """
        r = self.job.request
        settings = sampler_settings(self.job, ReferenceScaling.from_request(r, validation=True), model)
        clips = [Clip(cond, target_shape(r, cond), self.job.seed + i) for i, (_, cond, _) in enumerate(self.samples)]
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            if self.job.cluster.zero_stage == 3:
                return [sample_av2av(model, clip, settings) for clip in clips]
            return sample_split(model, clips, settings)
        finally:
            for module, training in modes:
                module.training = training

    def _write(self, latents, step: int, out_dir: Path) -> Path:
        renderer = ClipRenderer(model_files(self.job.model, self.job.storage), self.job.request.validation_frame_rate, self.device,
                                self.dtype)
        path = out_dir / f"validation_step_{step:06d}.mp4"
        return renderer.write(path, latents, [shown.numpy() for _, _, shown in self.samples])


def local_preview_dir(run: str) -> Path:
    """A node-local folder for preview files before upload."""
    return Path(tempfile.gettempdir()) / "ltx-ray-previews" / run


# --- how long a preview may keep ranks waiting -------------------------------------------------------

# Ray Train's default collective timeout (`TorchConfig.timeout_s`): never ask for less.
MIN_COLLECTIVE_TIMEOUT_S = 1800.0
# Sustained bf16 throughput of one training GPU on the transformer's forward, conservatively low:
# an A100 at about a third of its 312 TFLOP/s peak (an H100 or H200 sustains three to four times more).
SUSTAINED_FLOPS = 100e12
# ZeRO-3 gathers every weight for each forward call: 2 bytes x 19 B parameters at this rate (a node's
# share of an EFA or TCP link between nodes, conservatively low).
ZERO3_GATHER_BYTES_PER_S = 5e9
# Rank 0 alone, the other ranks waiting in the final barrier: loading the decoders from the checkpoint,
# then decoding (tile by tile) and writing each clip.
DECODE_LOAD_S, DECODE_PER_CLIP_S = 120.0, 120.0
# Margin over the estimate: slower GPUs, a shared node, kernels below the modelled rate.
SAFETY_FACTOR = 3.0


def preview_timeout_s(job: JobConfig, world_size: int) -> float:
    """Seconds a preview may take on `world_size` ranks, with a generous margin: the collective timeout it needs.

    Never below Ray Train's default (1,800 s). The estimate, for the LTX-2.3 22B transformer
    (`ltx_ray.model.ltx23`: 48 blocks, video 4,096 wide, audio 2,048 wide, 19 B parameters; a
    smaller model only makes it more generous):
    - tokens per pass: target and reference video tokens ((H/32)(W/32)((F-1)/8+1) each, the
      reference at its scaled size and frame count) plus target and reference audio tokens (25 a
      second);
    - FLOPs per pass: 2 x parameters x tokens (every token through every weight, a bound: audio
      tokens use the smaller audio weights) plus, per block, 4 x width x tokens^2 for the video and
      audio self-attention and 8 x audio width x video x audio tokens for the two cross-modal
      attentions (the text cross-attention, ~5 % at the defaults, is left to the margin);
    - passes: the validation clips x the guidance passes (`guidance_from_config`) x
      `preview.inference_steps`; under ZeRO-2 spread over the ranks (`sample_split`: the busiest
      rank runs ceil(clips x passes / world) per step), under ZeRO-3 all of them on every rank, plus
      one gather of the whole base per forward call;
    - at `SUSTAINED_FLOPS` per GPU, plus rank 0's decoding and writing (`DECODE_*`), all times
      `SAFETY_FACTOR`.
    """
    r = job.request
    clips = len(r.validation)
    if not clips:
        return MIN_COLLECTIVE_TIMEOUT_S
    t = LTX23_22B_CONFIG["transformer"]
    depth = t["num_layers"]
    video_width = t["num_attention_heads"] * t["attention_head_dim"]
    audio_width = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
    parameters = 19.0e9  # the 22B's transformer built from that config: 18.99 B

    width, height = bucket_size(r.validation_resolution, r.validation_aspect_ratio)
    scaling = ReferenceScaling.from_request(r, validation=True)
    ref_width, ref_height = scaling.size(width, height)
    frames = r.validation_number_of_frames

    def video_tokens(f: int, w: int, h: int) -> int:
        return ((f - 1) // TEMPORAL_COMPRESSION + 1) * (h // SPATIAL_COMPRESSION) * (w // SPATIAL_COMPRESSION)

    video = video_tokens(frames, width, height) + video_tokens(scaling.frames(frames), ref_width, ref_height)
    audio = 2 * (math.ceil(frames / r.validation_frame_rate * AUDIO_LATENTS_PER_SECOND) + 1)
    flops_per_pass = 2 * parameters * (video + audio) + depth * (
        4 * video_width * video**2 + 4 * audio_width * audio**2 + 8 * audio_width * video * audio)

    guidance = guidance_from_config(job)
    passes, steps = len(guidance.passes), job.preview.inference_steps
    if job.cluster.zero_stage == 3:
        calls = clips * steps * (1 if guidance.batched else passes)
        seconds = (clips * passes * steps * flops_per_pass / SUSTAINED_FLOPS
                   + calls * 2 * parameters / ZERO3_GATHER_BYTES_PER_S)
    else:
        busiest = math.ceil(clips * passes / max(1, world_size))
        seconds = busiest * steps * flops_per_pass / SUSTAINED_FLOPS
    seconds += DECODE_LOAD_S + clips * DECODE_PER_CLIP_S
    return max(MIN_COLLECTIVE_TIMEOUT_S, SAFETY_FACTOR * seconds)
