"""Synthetic paired clips with audio, for tests, benchmarks and `make demo`.

Each pair: the reference (`_start`) is a coloured square moving over a dark
background with a pure tone; the target (`_end`) is the same motion
restyled (inverted colours, a bright ring around the square) with the tone
transposed up a fifth and pulsing. The mapping is simple enough for a tiny
model to pick up and obvious to a human watching the debug archive.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltx_ray.clips.media import write_clip

SOURCE_SAMPLE_RATE = 44100
_COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 210, 70),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "magenta": (220, 50, 200),
    "cyan": (40, 210, 220),
}


@dataclass(frozen=True)
class SampleDataset:
    """Paths written by `write_sample_dataset`."""

    archive: Path
    validation_ref: Path


def moving_square(frames: int, width: int, height: int, colour: tuple[int, int, int], phase: float = 0.0) -> np.ndarray:
    """uint8 `[frames, height, width, 3]`: a square of `colour` circling over a dark gradient."""
    side = max(4, min(width, height) // 4)
    ys, xs = np.mgrid[0:height, 0:width]
    background = (20 + 30 * xs / max(width - 1, 1)).astype(np.uint8)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        angle = phase + 2 * np.pi * i / max(frames, 1)
        cx = int((width - side) / 2 * (1 + 0.8 * np.cos(angle)))
        cy = int((height - side) / 2 * (1 + 0.8 * np.sin(angle)))
        video[i] = background[..., None]
        video[i, cy : cy + side, cx : cx + side] = colour
    return video


def restyle(video: np.ndarray) -> np.ndarray:
    """The target's look: colours inverted, with a bright outline around everything that moves."""
    out = 255 - video
    bright = video.max(axis=3) > 100
    edge = np.zeros_like(bright)
    edge[:, 1:, :] |= bright[:, 1:, :] != bright[:, :-1, :]
    edge[:, :, 1:] |= bright[:, :, 1:] != bright[:, :, :-1]
    out[edge] = 255
    return out


def tone(
    freq: float, seconds: float, sample_rate: int = SOURCE_SAMPLE_RATE, channels: int = 2, amplitude: float = 0.4
) -> np.ndarray:
    """float32 `[channels, samples]` sine tone."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def transform_sound(freq: float, seconds: float, sample_rate: int = SOURCE_SAMPLE_RATE) -> np.ndarray:
    """The target's sound: the reference tone a fifth higher, pulsing 4 times a second."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = 0.4 * np.sin(2 * np.pi * 1.5 * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return np.repeat(wave[None].astype(np.float32), 2, axis=0)


def write_sample_dataset(
    out_dir: Path,
    pairs: int = 10,
    *,
    frames: int | None = None,
    fps: float = 16,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 180,
) -> SampleDataset:
    """Write `out_dir/av2av_pairs.zip` (`sampleNN_start.mp4`, `_end.mp4`, `.txt`) and `out_dir/validation_ref.mp4`.

    Clips are `frames` long (default `seconds * fps`) at `fps`, `width`x`height`,
    H.264 with AAC audio at 44.1 kHz.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = frames or max(1, round(seconds * fps))
    seconds = frames / fps
    names = list(_COLOURS)
    tmp = Path(tempfile.mkdtemp(prefix="sample-", dir=out_dir))
    archive = out_dir / "av2av_pairs.zip"
    try:
        with zipfile.ZipFile(archive.with_suffix(".zip.part"), "w", compression=zipfile.ZIP_STORED) as zf:
            for i in range(pairs):
                colour_name = names[i % len(names)]
                freq = 220.0 * 2 ** (i / 6)
                ref = moving_square(frames, width, height, _COLOURS[colour_name], phase=0.7 * i)
                name = f"sample{i + 1:02d}"
                start = write_clip(tmp / f"{name}_start.mp4", ref, fps, tone(freq, seconds), SOURCE_SAMPLE_RATE)
                sound = transform_sound(freq, seconds)
                end = write_clip(tmp / f"{name}_end.mp4", restyle(ref), fps, sound, SOURCE_SAMPLE_RATE)
                for clip in (start, end):
                    zf.write(clip, clip.name)
                    clip.unlink()
                zf.writestr(
                    f"{name}.txt",
                    f"an inverted {colour_name} square with a glowing outline circling over a light background, "
                    f"a pulsing {1.5 * freq:.0f} Hz tone\n",
                )
        archive.with_suffix(".zip.part").replace(archive)
        validation = write_clip(
            out_dir / "validation_ref.mp4",
            moving_square(frames, width, height, (250, 250, 250), phase=1.3),
            fps,
            tone(330.0, seconds),
            SOURCE_SAMPLE_RATE,
        )
    finally:
        archive.with_suffix(".zip.part").unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return SampleDataset(archive, validation)
