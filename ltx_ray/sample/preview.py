"""Validation previews during training, and the reel.

The reel is one mp4 (H.264 + AAC): for each validation sample in turn, the
fitted reference (left) beside the generated clip (right), with the generated
audio as its sound track. Samples follow each other in time.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ltx_ray.config.schema import JobConfig
from ltx_ray.data.media import encode_clip
from ltx_ray.model.encode import decode_audio, decode_video
from ltx_ray.sample.conditioning import load_validation_set
from ltx_ray.sample.sampler import guidance_from_config, sample_av2av, target_shape

log = logging.getLogger(__name__)

REEL_NAME = "validation_reel.mp4"


def fit_audio_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trim or zero-pad `[C, S]` audio to exactly `samples`."""
    if audio.shape[1] >= samples:
        return audio[:, :samples]
    return np.pad(audio, ((0, 0), (0, samples - audio.shape[1])))


def write_reel(path: Path, clips: list[tuple[np.ndarray, np.ndarray, np.ndarray]], frame_rate: float,
               sample_rate: int) -> Path:
    """Write the reel: per clip (reference frames, generated frames, generated audio `[2, S]`)."""
    videos, audios = [], []
    for reference, generated, audio in clips:
        frames = min(len(reference), len(generated))
        videos.append(np.concatenate([reference[:frames], generated[:frames]], axis=2))
        audios.append(fit_audio_length(audio, round(frames / frame_rate * sample_rate)))
    return encode_clip(path, np.concatenate(videos), frame_rate, np.concatenate(audios, axis=1), sample_rate)


class Previewer:
    """Generates the validation previews with the current LoRA (all ranks call `run`)."""

    def __init__(self, job: JobConfig, validation_file: Path, rank: int, device: torch.device,
                 dtype: torch.dtype):
        self.job, self.rank, self.device, self.dtype = job, rank, device, dtype
        self.samples = load_validation_set(validation_file)
        self.decoders = None

    def _load_decoders(self):
        from ltx_ray.model.loader import load_audio_decoder, load_video_decoder, load_vocoder

        ckpt = self.job.model.checkpoint
        self.decoders = (
            load_video_decoder(ckpt, dtype=self.dtype, device=self.device),
            load_audio_decoder(ckpt, dtype=self.dtype, device=self.device),
            load_vocoder(ckpt, dtype=torch.float32, device=self.device),
        )

    def run(self, model, step: int, out_dir: Path) -> Path | None:
        """Sample every validation clip; rank 0 decodes and writes the reel. Returns its path on rank 0."""
        zero3 = self.job.cluster.zero_stage == 3
        reel = None
        # Under ZeRO-3 every rank holds a shard of each weight, so all ranks run the
        # forward passes together; under ZeRO-2 rank 0 has the whole model.
        if self.rank == 0 or zero3:
            was_training = model.training
            model.eval()
            latents = [self._sample(model, cond, i) for i, (_, cond, _) in enumerate(self.samples)]
            model.train(was_training)
            if self.rank == 0:
                reel = self._write(latents, step, out_dir)
        if dist.is_initialized():
            dist.barrier()
        return reel

    def _sample(self, model, cond, index: int):
        r = self.job.request
        generator = torch.Generator(device=self.device).manual_seed(self.job.seed + index)
        return sample_av2av(
            model, cond, target_shape(r, cond), generator,
            frame_rate=float(r.validation_frame_rate),
            reference_downscale_factor=r.reference_downscale_factor,
            reference_temporal_scale_factor=r.reference_temporal_scale_factor,
            steps=self.job.train.validation_inference_steps,
            guidance=guidance_from_config(self.job, model),
        )

    def _write(self, latents, step: int, out_dir: Path) -> Path:
        if self.decoders is None:
            self._load_decoders()
        video_decoder, audio_decoder, vocoder = self.decoders
        clips, sample_rate = [], 16000
        for (video_lat, audio_lat), (_, _, shown) in zip(latents, self.samples):
            frames = decode_video(video_decoder, video_lat)[0].cpu().numpy()
            waveform, sample_rate = decode_audio(audio_decoder, vocoder, audio_lat)
            clips.append((shown.numpy(), frames, waveform[0].cpu().numpy()))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"validation_step_{step:06d}.mp4"
        return write_reel(path, clips, float(self.job.request.validation_frame_rate), sample_rate)


def local_preview_dir(run: str) -> Path:
    """A node-local folder for preview files before upload."""
    return Path(tempfile.gettempdir()) / "ltx-ray-previews" / run
