"""Synthetic av2av pairs for `scripts/bench_learning.py`: a transformation that only the reference determines.

Each pair's content is drawn per pair: two colours (stripes and background) and
the pitch of a steady tone. The reference (`_start`) shows vertical stripes
in those colours and plays the tone; the target (`_end`) is a fixed
transformation of it in picture and in sound:

- picture: the stripes turn horizontal and both colours are inverted
  (255 - c), so the target's colours are never the reference's;
- sound: the tone is transposed up a fifth (x 1.5) and an octave below the
  reference is added (x 0.5), a two-note chord instead of one note.

The stripes repeat every 32 pixels, the video VAE's spatial stride, so every
latent token of a clip sees the same content: the map from reference to
target is the same at every position, and what varies between pairs (the
colours, the pitch) is in every reference token. Every caption is the same
generic text, so the caption carries nothing about a pair; held-out pairs use
colours and pitches drawn apart from the training pairs' (never seen in
training).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltx_ray.data.media import encode_clip

SOURCE_SAMPLE_RATE = 44100
CAPTION = "av_st9le style a bright square with sound"
STRIPE_PERIOD = 32  # pixels: the video VAE's spatial compression


@dataclass(frozen=True)
class Content:
    """What varies between pairs: two RGB colours and a tone's frequency."""

    stripe: tuple[int, int, int]
    background: tuple[int, int, int]
    freq: float


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


def stripes(frames: int, width: int, height: int, stripe, background, *, vertical: bool) -> np.ndarray:
    """uint8 `[frames, height, width, 3]`: stripes of `stripe` colour, half of every 32-pixel period, on `background`."""
    coord = np.arange(width if vertical else height)
    on = (coord % STRIPE_PERIOD) < STRIPE_PERIOD // 2
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = np.asarray(background, dtype=np.uint8)
    if vertical:
        img[:, on] = np.asarray(stripe, dtype=np.uint8)
    else:
        img[on, :] = np.asarray(stripe, dtype=np.uint8)
    return np.repeat(img[None], frames, axis=0)


def reference_video(c: Content, frames: int, width: int, height: int) -> np.ndarray:
    return stripes(frames, width, height, c.stripe, c.background, vertical=True)


def target_video(c: Content, frames: int, width: int, height: int) -> np.ndarray:
    """The fixed picture transformation: stripes turned horizontal, colours inverted."""
    inv = lambda rgb: tuple(255 - v for v in rgb)  # noqa: E731
    return stripes(frames, width, height, inv(c.stripe), inv(c.background), vertical=False)


def _sine(freq: float, t: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * freq * t)


def reference_sound(c: Content, seconds: float, sample_rate: int = SOURCE_SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = 0.4 * _sine(c.freq, t)
    return np.repeat(wave[None].astype(np.float32), 2, axis=0)


def target_sound(c: Content, seconds: float, sample_rate: int = SOURCE_SAMPLE_RATE) -> np.ndarray:
    """The fixed sound transformation: a fifth above (x1.5) plus an octave below (x0.5), instead of the tone."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = 0.25 * _sine(1.5 * c.freq, t) + 0.25 * _sine(0.5 * c.freq, t)
    return np.repeat(wave[None].astype(np.float32), 2, axis=0)


def draw_contents(train: int, held_out: int, seed: int = 0) -> tuple[list[Content], list[Content]]:
    """Training and held-out contents; no held-out colour or pitch equals a training one.

    Pitches are log-spaced over 300-2400 Hz, the training pairs on every other
    step of a grid and the held-out pairs on steps in between; colours are
    random RGB, each held-out colour at least 40 (per-channel max) from every
    training colour.
    """
    rng = np.random.default_rng(seed)
    grid = np.geomspace(300.0, 2400.0, 2 * train + 1)
    train_freqs = grid[0::2][:train]
    between = grid[1::2]
    held_freqs = between[np.linspace(0, len(between) - 1, held_out).round().astype(int)]

    def colour() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, 256, 3))

    train_contents = [Content(colour(), colour(), float(f)) for f in train_freqs]
    seen = np.array([c.stripe for c in train_contents] + [c.background for c in train_contents])

    def fresh_colour() -> tuple[int, int, int]:
        while True:
            c = colour()
            if np.abs(seen - np.asarray(c)).max(axis=1).min() >= 40:
                return c

    held = [Content(fresh_colour(), fresh_colour(), float(f)) for f in held_freqs]
    order = rng.permutation(train)
    return [train_contents[i] for i in order], held


def write_learning_pairs(
    out_dir: Path,
    train: int = 16,
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
    seconds = n / fps
    train_contents, held_contents = draw_contents(train, held_out, seed)
    tmp = Path(tempfile.mkdtemp(prefix="pairs-", dir=out_dir))
    archive = out_dir / "pairs.zip"
    part = archive.with_suffix(".zip.part")
    try:
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, c in enumerate(train_contents):
                name = f"pair{i + 1:02d}"
                start = encode_clip(tmp / f"{name}_start.mp4", reference_video(c, n, width, height), fps,
                                    reference_sound(c, seconds), SOURCE_SAMPLE_RATE)
                end = encode_clip(tmp / f"{name}_end.mp4", target_video(c, n, width, height), fps,
                                  target_sound(c, seconds), SOURCE_SAMPLE_RATE)
                for clip in (start, end):
                    zf.write(clip, clip.name)
                    clip.unlink()
                zf.writestr(f"{name}.txt", CAPTION + "\n")
        part.replace(archive)
        held_dir = out_dir / "held_out"
        held_dir.mkdir(exist_ok=True)
        held = []
        for i, c in enumerate(held_contents):
            name = f"held{i + 1:02d}"
            ref = encode_clip(held_dir / f"{name}_start.mp4", reference_video(c, n, width, height), fps,
                              reference_sound(c, seconds), SOURCE_SAMPLE_RATE)
            tgt = encode_clip(held_dir / f"{name}_end.mp4", target_video(c, n, width, height), fps,
                              target_sound(c, seconds), SOURCE_SAMPLE_RATE)
            held.append(HeldOut(name, ref, tgt, c))
        (out_dir / "contents.json").write_text(json.dumps(
            {"train": [c.__dict__ for c in train_contents], "held_out": [c.__dict__ for c in held_contents]},
            indent=1))
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return LearningPairs(archive, held, CAPTION, train_contents)
