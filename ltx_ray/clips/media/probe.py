"""Probing a clip: what it holds (size, frames, timing, audio), measured from its packets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av

from ltx_ray.errors import DatasetError, Problem


@dataclass(frozen=True)
class ClipInfo:
    """What probing a clip measured: picture size, frame count and timing, and its audio."""

    path: Path
    width: int
    height: int
    frames: int
    fps: float
    start_time: float
    duration: float
    has_audio: bool
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    # Clockwise turn applied on decoding to show the picture upright (phone clips); width/height are as stored.
    rotation: int = 0

    def frames_at(self, frame_rate: float) -> int:
        """How many frames the clip yields when resampled to `frame_rate`."""
        return int(math.floor(self.duration * frame_rate + 1e-6))


def probe(path: Path, label: str | None = None) -> ClipInfo:
    """Open a clip, count its video frames by demuxing, decode one frame to prove it is readable.

    Frame count and duration are measured from the packets, not taken from
    container headers (webm/mkv often have none). Raises `DatasetError`
    naming `label` (default: the file name) when the file is not a readable video.
    """
    label = label or Path(path).name
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(Problem(label, "has no video stream"))
            vstream = container.streams.video[0]
            astream = container.streams.audio[0] if container.streams.audio else None
            rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
            tb = vstream.time_base
            count, first, end, decoded, turn = 0, None, None, False, 0
            for packet in container.demux(vstream):
                if packet.size == 0:
                    continue
                count += 1
                if not decoded:
                    # Decode until the first picture comes out: headers alone do not prove the codec data is sound.
                    pictures = packet.decode()
                    decoded = bool(pictures)
                    turn = upright_turn(pictures[0].rotation) if pictures else 0
                if packet.pts is not None and tb is not None:
                    start = float(packet.pts * tb)
                    length = float(packet.duration * tb) if packet.duration else (1.0 / float(rate) if rate else 0.0)
                    first = start if first is None else min(first, start)
                    end = start + length if end is None else max(end, start + length)
            if not decoded:
                # Codecs with delay emit their first picture only on flush.
                decoded = any(True for _ in vstream.decode(None)) if count else False
            if count == 0 or not decoded:
                raise DatasetError(Problem(label, "has no decodable video frames"))
            if first is not None and end is not None and end > first:
                duration = end - first
            elif rate:
                duration = count / float(rate)
            else:
                raise DatasetError(Problem(label, "has no timing information (no timestamps, no frame rate)"))
            fps = float(rate) if rate else count / duration
            return ClipInfo(
                path=Path(path),
                width=vstream.codec_context.width,
                height=vstream.codec_context.height,
                frames=count,
                fps=fps,
                start_time=first or 0.0,
                duration=duration,
                has_audio=astream is not None,
                audio_sample_rate=astream.codec_context.sample_rate if astream else None,
                audio_channels=astream.codec_context.channels if astream else None,
                rotation=turn,
            )
    except DatasetError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, ZeroDivisionError) as exc:
        raise DatasetError(Problem(label, f"cannot be read as a video: {exc}")) from None


def has_audio(path: Path) -> bool:
    """True when the media file has at least one audio stream (it is not otherwise decoded)."""
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(Problem(Path(path).name, f"cannot be read: {exc}")) from None



def upright_turn(rotation: float | None) -> int:
    """Clockwise turn (0, 90, 180, 270) that shows a frame upright, from PyAV's counter-clockwise `frame.rotation`."""
    # The display matrix says how the stored picture is rotated counter-clockwise; undo it (as ffmpeg's autorotate).
    return int(round(-(rotation or 0) / 90.0)) % 4 * 90


