"""A clip's video fitted to the bucket and the frame grid, streamed frame by frame; the reference's scaling.

Frames are converted one by one straight into the fitted output array, and decoding
stops once the last needed frame is in, so a long clip at source resolution is never
held in memory.
"""

from __future__ import annotations

from contextlib import closing
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import av.filter
import numpy as np

from ltx_ray.errors import DatasetError, Problem
from ltx_ray.clips.media.probe import upright_turn


def fit_crop(src_w: int, src_h: int, dst_w: int, dst_h: int, sar: float = 1.0) -> tuple[int, int, int, int]:
    """The centred source region that, resized to `dst_w`x`dst_h`, fills it: (crop_w, crop_h, x, y) in source pixels.

    Same result as resize-to-fill then centre-crop, but cropping first means
    the scaler only touches pixels that are kept. `sar` is the source's
    sample aspect ratio (non-square pixels are widened to square ones).
    """
    display_w = src_w * sar
    scale = max(dst_w / display_w, dst_h / src_h)
    crop_w = min(src_w, max(1, round(dst_w / scale / sar)))
    crop_h = min(src_h, max(1, round(dst_h / scale)))
    return crop_w, crop_h, (src_w - crop_w) // 2, (src_h - crop_h) // 2


class _FrameFitter:
    """Crop, rotate, scale and convert decoded frames to RGB `height`x`width` through one libavfilter graph.

    crop (no copy) -> upright rotation from the display matrix (phone
    clips) -> scale in the source's pixel format -> RGB on the small frame:
    about twice as fast as swscale's combined scale+convert path on a full
    frame. Rebuilt if the source size, format or rotation changes mid-stream.
    """

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.key: tuple | None = None
        self.graph: av.filter.Graph | None = None

    def __call__(self, frame: av.VideoFrame, sar: float = 1.0) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, sar, upright_turn(frame.rotation))
        if key != self.key:
            self._build(frame, sar, key[-1])
            self.key = key
        self.graph.push(frame)
        return self.graph.pull().to_ndarray(format="rgb24")

    def _build(self, frame: av.VideoFrame, sar: float, turn: int) -> None:
        sideways = turn in (90, 270)
        # The crop is centred, so it can be taken before the turn with the target's sides swapped.
        if sideways:
            cw, ch, x, y = fit_crop(frame.width, frame.height, self.height, self.width, 1 / sar)
        else:
            cw, ch, x, y = fit_crop(frame.width, frame.height, self.width, self.height, sar)
        # swscale's bilinear widens its kernel when shrinking (no aliasing) and is the cheapest
        # filter that does; bicubic is sharper when enlarging.
        shrinking = min(cw, ch) >= min(self.width, self.height) and max(cw, ch) >= max(self.width, self.height)
        graph = av.filter.Graph()
        nodes = [
            graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=Fraction(1, 1000)),
            graph.add("crop", f"{cw}:{ch}:{x}:{y}:exact=1"),
        ]
        if turn == 90:
            nodes.append(graph.add("transpose", "clock"))
        elif turn == 270:
            nodes.append(graph.add("transpose", "cclock"))
        elif turn == 180:
            nodes += [graph.add("hflip"), graph.add("vflip")]
        nodes += [
            graph.add("scale", f"{self.width}:{self.height}:flags={'bilinear' if shrinking else 'bicubic'}"),
            graph.add("buffersink"),
        ]
        graph.link_nodes(*nodes).configure()
        self.graph = graph



def source_times(frames: int, frame_rate: float, time_scale: float = 1.0) -> np.ndarray:
    """Source timestamps (seconds from the first frame) of the output frames: i / frame_rate * time_scale."""
    return np.arange(frames, dtype=np.float64) / frame_rate * time_scale


def decode_video(
    path: Path,
    *,
    width: int,
    height: int,
    frames: int,
    frame_rate: float,
    time_scale: float = 1.0,
    label: str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode a clip to uint8 `[frames, height, width, 3]` at `frame_rate`, filled and centre-cropped.

    Output frame i shows the source frame whose timestamp is nearest to
    `i / frame_rate * time_scale` seconds after the first frame, so any
    source frame rate maps correctly (and `time_scale != 1` stretches or
    squeezes time). Past the end of the clip the last frame is held.
    The frames are written into `out` when given (an array of that shape
    and dtype), else into a new array.
    """
    label = label or Path(path).name
    targets = source_times(frames, frame_rate, time_scale)
    if out is None:
        out = np.empty((frames, height, width, 3), dtype=np.uint8)
    elif out.shape != (frames, height, width, 3) or out.dtype != np.uint8:
        raise ValueError(f"out is {out.dtype}{list(out.shape)}, not uint8{[frames, height, width, 3]}")
    filled = 0
    fit = _FrameFitter(width, height)
    sar = 1.0
    converted: tuple[int, np.ndarray] | None = None  # (source index, fitted frame): a held frame is fitted once

    def fitted(index: int, frame: av.VideoFrame) -> np.ndarray:
        nonlocal converted
        if converted is None or converted[0] != index:
            converted = (index, fit(frame, sar))
        return converted[1]

    try:
        prev: tuple[int, float, av.VideoFrame] | None = None
        # closing(): stopping early must close the file now, not whenever the generator is collected.
        with closing(_timed_frames(path)) as decoded:
            for index, (t, frame, sar) in enumerate(decoded):
                while filled < frames and targets[filled] <= t:
                    # Nearest neighbour in time between the previous and this frame.
                    if prev is not None and targets[filled] - prev[1] <= t - targets[filled]:
                        out[filled] = fitted(prev[0], prev[2])
                    else:
                        out[filled] = fitted(index, frame)
                    filled += 1
                if filled == frames:
                    break
                prev = (index, t, frame)
        if prev is None and filled == 0:
            raise DatasetError(Problem(label, "has no decodable video frames"))
        while filled < frames and prev is not None:
            out[filled] = fitted(prev[0], prev[2])
            filled += 1
    except av.error.FFmpegError as exc:
        raise DatasetError(Problem(label, f"cannot be decoded: {exc}")) from None
    return out


# FFmpeg decoder threads per clip; 0 lets FFmpeg use every core. Ray decode tasks set it
# to the CPUs they were given, so parallel tasks do not oversubscribe a node.
_DECODE_THREADS = 0


def set_decode_threads(threads: int) -> None:
    """Limit the video decoder to `threads` threads (0: as many as FFmpeg likes)."""
    global _DECODE_THREADS
    _DECODE_THREADS = max(0, int(threads))


def _timed_frames(path: Path) -> Iterator[tuple[float, av.VideoFrame, float]]:
    """Decoded frames of the first video stream: (seconds from the first frame, frame, sample aspect ratio)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if _DECODE_THREADS:
            stream.thread_count = _DECODE_THREADS
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        sar = float(stream.sample_aspect_ratio or 1) or 1.0
        t0 = None
        for k, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else k / rate
            if t0 is None:
                t0 = t
            yield t - t0, frame, sar


def downscale_video(video: np.ndarray, factor: int) -> np.ndarray:
    """Shrink `[F, H, W, 3]` frames by an integer factor in both dimensions (box filter)."""
    if factor == 1:
        return video
    f, h, w, c = video.shape
    if h % factor == 0 and w % factor == 0:
        # An exact box average: every output pixel is the mean of a factor x factor block.
        blocks = video.reshape(f, h // factor, factor, w // factor, factor, c).astype(np.float32)
        return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)
    out = np.empty((f, h // factor, w // factor, c), dtype=np.uint8)
    for i in range(f):
        frame = av.VideoFrame.from_ndarray(video[i], format="rgb24")
        out[i] = frame.reformat(width=w // factor, height=h // factor, interpolation="AREA").to_ndarray()
    return out


def subsample_frames(video: np.ndarray, factor: int) -> np.ndarray:
    """The reference at 1/`factor` of the frame rate, aligned with the video VAE: frames 0, 1, 1+k, 1+2k, ...

    Frame 0 is the VAE's causal first frame (its own latent frame); each later
    latent frame covers 8 frames from frame 1 on, so every k-th frame is counted
    from frame 1. The same indices as the official IC-LoRA recipe
    (`ltx_pipelines.iclora_utils.temporal_subsample`), used for training,
    validation and inference alike.
    """
    if factor <= 1:
        return video
    return video[[0, *range(1, video.shape[0], factor)]]


