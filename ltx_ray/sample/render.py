"""Generated latents to an mp4 (H.264 + AAC): the previews' reel and `ltx-ray generate`'s clip.

`ClipRenderer.write` decodes each clip's latents with the checkpoint's decoders and writes them one
after another in one file, each beside its reference (left) when one is given, with the generated
sound fitted to the clip's frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ltx_ray.clips.media import write_clip
from ltx_ray.model.av2av import AUDIO_SAMPLE_RATE
from ltx_ray.model.vae import latents_to_audio, latents_to_video


class ClipRenderer:
    """Writes generated clips as one mp4 at `frame_rate`, decoded by the model's decoders (`files`, a `ModelFiles`)
    on `device` in `dtype`."""

    def __init__(self, files, frame_rate: float, device: torch.device, dtype: torch.dtype):
        self.files, self.frame_rate, self.device, self.dtype = files, float(frame_rate), device, dtype

    def write(self, path: Path, latents: list[tuple[torch.Tensor, torch.Tensor]],
              references: list[np.ndarray | None] | None = None) -> Path:
        """Decode every clip's (video, audio) latents and write them to `path`, each beside its reference
        frames (uint8 `[F, H, W, 3]`, at the generated clip's height) when `references` gives one."""
        decoded, sample_rate = decode_clips(self.files, latents, self.device, self.dtype)
        references = references if references is not None else [None] * len(decoded)
        clips = [(reference, frames, waveform) for (frames, waveform), reference in zip(decoded, references)]
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_reel(path, clips, self.frame_rate, sample_rate)


def write_reel(path: Path, clips: list[tuple[np.ndarray | None, np.ndarray, np.ndarray]], frame_rate: float,
               sample_rate: int) -> Path:
    """Write clips one after another: per clip (reference frames or None, generated frames, audio `[2, S]`).

    A clip with a reference shows it on the left for as many frames as both have; its sound is trimmed
    or padded to its frames.
    """
    videos, audios = [], []
    for reference, generated, audio in clips:
        if reference is None:
            frames, video = len(generated), generated
        else:
            frames = min(len(reference), len(generated))
            video = np.concatenate([reference[:frames], generated[:frames]], axis=2)
        videos.append(video)
        audios.append(fit_audio_length(audio, round(frames / frame_rate * sample_rate)))
    return write_clip(path, np.concatenate(videos), frame_rate, np.concatenate(audios, axis=1), sample_rate)


def fit_audio_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trim or zero-pad `[C, S]` audio to exactly `samples`."""
    if audio.shape[1] >= samples:
        return audio[:, :samples]
    return np.pad(audio, ((0, 0), (0, samples - audio.shape[1])))


def decode_clips(files, latents: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                 dtype: torch.dtype) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """(frames uint8 `[F, H, W, 3]`, stereo waveform `[2, S]`) of each clip's latents, and the waveforms' rate.

    On a training GPU the decoders share the memory with the model: the video decoder is loaded,
    decodes every clip tile by tile (`latents_to_video`), and is freed before the audio decoder and
    vocoder are loaded; those are freed before returning, and on CUDA the cache goes back too. `files`
    (`ltx_ray.model.files.ModelFiles`) names the video VAE's and the audio VAE's files.
    """
    from ltx_ray.model.loader import load_audio_decoder, load_video_decoder, load_vocoder

    video_decoder = load_video_decoder(files.video_vae, dtype=dtype, device=device)
    frames = [latents_to_video(video_decoder, video)[0].cpu().numpy() for video, _ in latents]
    del video_decoder
    release_cached_memory(device)
    audio_decoder = load_audio_decoder(files.audio_vae, dtype=dtype, device=device)
    vocoder = load_vocoder(files.audio_vae, dtype=torch.float32, device=device)
    waveforms, sample_rate = [], AUDIO_SAMPLE_RATE
    for _, audio in latents:
        waveform, sample_rate = latents_to_audio(audio_decoder, vocoder, audio)
        waveforms.append(waveform[0].float().cpu().numpy())
    del audio_decoder, vocoder
    release_cached_memory(device)
    return list(zip(frames, waveforms)), sample_rate


def release_cached_memory(device: torch.device) -> None:
    """Hand the CUDA caching allocator's free blocks back, so the next training step finds room unfragmented."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
