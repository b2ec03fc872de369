"""Writing clips: uint8 frames and float audio to a media file (the debug archive, sample data)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ltx_ray.clips.media.audio import AUDIO_SAMPLE_RATE


def write_clip(
    path: Path,
    video: np.ndarray,
    frame_rate: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    *,
    crf: int = 18,
) -> Path:
    """Write uint8 `[F, H, W, 3]` video (and float `[C, S]` audio, C = 1, 2 or 6) to a media file.

    The container follows the extension: .mp4/.mov/.mkv get H.264 + AAC,
    .webm VP8 + Opus, .avi MPEG-4 + PCM. Used for the debug archive and the
    synthetic sample data.
    """
    path = Path(path)
    ext = path.suffix.lower()
    vcodec, acodec = {
        ".webm": ("libvpx", "libopus"),
        # PCM, not MP3: the MP3 encoder's start delay makes the AVI muxer shift the video.
        ".avi": ("mpeg4", "pcm_s16le"),
    }.get(ext, ("libx264", "aac"))
    rate = Fraction(frame_rate).limit_denominator(1001)
    f, h, w, _ = video.shape
    with av.open(str(path), "w") as container:
        vs = container.add_stream(vcodec, rate=rate)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p"
        if vcodec == "libx264":
            vs.options = {"crf": str(crf), "preset": "veryfast"}
        elif vcodec == "mpeg4":
            vs.options = {"qscale": "3"}
        elif vcodec == "libvpx":
            vs.options = {"crf": "10", "b": "1M", "deadline": "realtime", "cpu-used": "8"}
        streams = [vs]
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            layout = {1: "mono", 2: "stereo", 6: "5.1"}[audio.shape[0]]
            enc_rate = 48000 if acodec == "libopus" else sample_rate
            ast = container.add_stream(acodec, rate=enc_rate, layout=layout)
            if acodec == "aac":
                # FFmpeg's AAC encoder at its default mono bitrate (64k) distorts pure tones badly.
                ast.bit_rate = max(192_000, 96_000 * audio.shape[0])
            streams.append(ast)
        for i in range(f):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(video[i]), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        if audio is not None:
            fmt = ast.codec_context.codec.audio_formats[0].name
            resampler = av.AudioResampler(format=fmt, layout=layout, rate=enc_rate)
            step = ast.codec_context.frame_size or 1024
            for i in range(0, audio.shape[1], step):
                chunk = np.ascontiguousarray(audio[:, i : i + step])
                src = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                src.sample_rate = sample_rate
                src.time_base = Fraction(1, sample_rate)
                src.pts = i
                for rf in resampler.resample(src):
                    container.mux(ast.encode(rf))
            for rf in resampler.resample(None):
                container.mux(ast.encode(rf))
            container.mux(ast.encode(None))
    return path
