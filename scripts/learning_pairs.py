"""Synthetic av2av pairs for `scripts/bench_learning.py`: a transformation that only the reference determines.

Each pair's content is drawn per pair: a hue and the pitch of a steady tone.

- picture: the reference (`_start`) is a still frame of that hue at full
  saturation; the target (`_end`) shows horizontal stripes of the
  complementary colour (each channel inverted, 255 - c) on black, so the
  target has neither the reference's colour nor its layout;
- sound: the reference plays the tone; the target plays it with the octave
  below (x 0.5) added, a two-note chord.

The stripes repeat every 32 pixels, the video VAE's spatial stride, so every
latent token of a clip sees the same content: the map from reference to
target is the same at every position, and what varies between pairs (one hue,
one pitch) is in every reference token. Hues and pitches lie on two grids, the
training pairs' on every other point and the held-out pairs' on points in
between (never seen in training); pitch and hue are paired at random, so each
modality has to follow its own reference. Every caption is the same generic
text, so the caption carries nothing about a pair.
"""

from __future__ import annotations

import colorsys
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ltx_ray.clips.media import write_clip

SOURCE_SAMPLE_RATE = 44100
CAPTION = "av_st9le style a bright square with sound"
STRIPE_PERIOD = 32  # pixels: the video VAE's spatial compression
PITCH_RANGE = (300.0, 2400.0)  # Hz, log-spaced


@dataclass(frozen=True)
class Content:
    """What varies between pairs: a hue in [0, 1) and a tone's frequency in Hz."""

    hue: float
    freq: float

    @property
    def colour(self) -> tuple[int, int, int]:
        return tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(self.hue, 1.0, 1.0))


@dataclass(frozen=True)
class HeldOut:
    """One held-out pair: the reference clip, the true target clip and its content."""

    name: str
    reference: Path
    target: Path
    content: Content


@dataclass(frozen=True)
class LearningPairs:
    """Paths written by `write_learning_pairs`."""

    archive: Path
    held_out: list[HeldOut]
    caption: str
    train_contents: list[Content]


def reference_video(c: Content, frames: int, width: int, height: int) -> np.ndarray:
    """uint8 `[frames, height, width, 3]`: the whole frame in the pair's hue."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = np.asarray(c.colour, dtype=np.uint8)
    return np.repeat(img[None], frames, axis=0)


def target_video(c: Content, frames: int, width: int, height: int) -> np.ndarray:
    """The fixed picture transformation: horizontal stripes (half of every 32 rows) of the inverted colour on black."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    on = (np.arange(height) % STRIPE_PERIOD) < STRIPE_PERIOD // 2
    img[on, :] = 255 - np.asarray(c.colour, dtype=np.uint8)
    return np.repeat(img[None], frames, axis=0)


def _chord(seconds: float, sample_rate: int, partials: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Stereo float32: the sum of amplitude * sin(2 pi f t) over `partials` (f, amplitude)."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = sum(amp * np.sin(2 * np.pi * f * t) for f, amp in partials)
    return np.repeat(wave[None].astype(np.float32), 2, axis=0)


def reference_sound(c: Content, seconds: float, sample_rate: int = SOURCE_SAMPLE_RATE) -> np.ndarray:
    return _chord(seconds, sample_rate, ((c.freq, 0.4),))


def target_sound(c: Content, seconds: float, sample_rate: int = SOURCE_SAMPLE_RATE) -> np.ndarray:
    """The fixed sound transformation: the tone with its octave below (x0.5) added."""
    return _chord(seconds, sample_rate, ((c.freq, 0.4), (0.5 * c.freq, 0.4)))


def draw_contents(train: int, held_out: int, seed: int = 0) -> tuple[list[Content], list[Content]]:
    """Training and held-out contents; no held-out hue or pitch equals a training one.

    Hues lie on a circle of `2 * train` points and pitches on `2 * train + 1`
    log-spaced points over PITCH_RANGE: the training pairs take every other
    point, the held-out pairs points in between, evenly spread. Pitch
    and hue are paired by a random permutation.
    """
    rng = np.random.default_rng(seed)
    hues = (np.arange(2 * train) + rng.uniform()) / (2 * train) % 1.0
    pitches = np.geomspace(*PITCH_RANGE, 2 * train + 1)
    between = np.arange(held_out) * train // held_out  # evenly around the hue circle
    train_contents = [Content(float(h), float(f)) for h, f in zip(hues[0::2], pitches[0::2][rng.permutation(train)])]
    held = [Content(float(h), float(f)) for h, f in zip(hues[1::2][between], pitches[1::2][rng.permutation(between)])]
    return [train_contents[i] for i in rng.permutation(train)], held


def _write_pair(out_dir: Path, name: str, c: Content, frames: int, fps: float, width: int, height: int):
    """Write `name_start.mp4` (the reference) and `name_end.mp4` (its true target); return both paths."""
    seconds = frames / fps
    start = write_clip(out_dir / f"{name}_start.mp4", reference_video(c, frames, width, height), fps,
                        reference_sound(c, seconds), SOURCE_SAMPLE_RATE)
    end = write_clip(out_dir / f"{name}_end.mp4", target_video(c, frames, width, height), fps,
                      target_sound(c, seconds), SOURCE_SAMPLE_RATE)
    return start, end


def write_learning_pairs(
    out_dir: Path,
    train: int = 32,
    held_out: int = 4,
    *,
    frames: int = 17,
    fps: float = 8,
    width: int = 512,
    height: int = 512,
    seed: int = 0,
) -> LearningPairs:
    """Write `out_dir/pairs.zip` (the training pairs) and `out_dir/held_out/` (references and true targets).

    Clips are `frames` + 8 frames long (a margin over the request's frame count)
    at `fps`, `width`x`height`, H.264 with AAC audio at 44.1 kHz; every caption is `CAPTION`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = frames + 8
    train_contents, held_contents = draw_contents(train, held_out, seed)
    tmp = Path(tempfile.mkdtemp(prefix="pairs-", dir=out_dir))
    archive = out_dir / "pairs.zip"
    part = archive.with_suffix(".zip.part")
    try:
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, c in enumerate(train_contents):
                name = f"pair{i + 1:02d}"
                for clip in _write_pair(tmp, name, c, n, fps, width, height):
                    zf.write(clip, clip.name)
                    clip.unlink()
                zf.writestr(f"{name}.txt", CAPTION + "\n")
        part.replace(archive)
        held_dir = out_dir / "held_out"
        held_dir.mkdir(exist_ok=True)
        held = []
        for i, c in enumerate(held_contents):
            name = f"held{i + 1:02d}"
            held.append(HeldOut(name, *_write_pair(held_dir, name, c, n, fps, width, height), c))
        (out_dir / "contents.json").write_text(json.dumps(
            {"train": [asdict(c) for c in train_contents], "held_out": [asdict(c) for c in held_contents]}, indent=1))
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return LearningPairs(archive, held, CAPTION, train_contents)
