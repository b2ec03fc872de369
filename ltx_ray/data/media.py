"""Media as pure functions over files and arrays: probe a clip, decode and fit its video and audio, encode one.

Conventions: video is uint8 `[F, H, W, 3]` (frames, rows, columns, RGB),
channels last. Audio is float32 `[2, S]` (stereo, channels first) at
`AUDIO_SAMPLE_RATE`. Time zero of a clip is the timestamp of its first video
frame; audio is cut against the same clock so picture and sound stay in sync.

Decoding streams: frames are converted one by one straight into the fitted
output array, and decoding stops once the last needed frame is in, so a long
clip at source resolution is never held in memory.
"""

from __future__ import annotations

import math
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import av.filter
import numpy as np

from ltx_ray.errors import DatasetError, Problem

# The LTX-2.3 audio VAE works on 16 kHz stereo.
AUDIO_SAMPLE_RATE = 16000
AUDIO_CHANNELS = 2
# Peak level after normalisation: just under full scale, so an AAC re-encode does not clip.
NORMALIZE_PEAK = 0.95
# One atempo stage stays within [0.5, 2] (the range every FFmpeg build accepts and sounds best in); chain beyond.
_ATEMPO_MIN, _ATEMPO_MAX = 0.5, 2.0
_AUDIO_CHUNK = 4096


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


def upright_turn(rotation: float | None) -> int:
    """Clockwise turn (0, 90, 180, 270) that shows a frame upright, from PyAV's counter-clockwise `frame.rotation`."""
    # The display matrix says how the stored picture is rotated counter-clockwise; undo it (as ffmpeg's autorotate).
    return int(round(-(rotation or 0) / 90.0)) % 4 * 90


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


def decode_audio(
    path: Path,
    *,
    start: float | None,
    span: float,
    out_samples: int,
    preserve_pitch: bool = True,
    normalize: bool = True,
    label: str | None = None,
) -> np.ndarray:
    """Decode `span` seconds of audio from `start` and fit it to float32 `[2, out_samples]` at 16 kHz.

    `start` is on the file's clock (a video's first-frame time, so the sound
    stays in sync with the picture); `None` means the first audio sample.
    Mono is duplicated to both channels, more channels are downmixed, gaps
    are zero-padded. When `span` differs from `out_samples / 16000` the audio
    is stretched: with `preserve_pitch` by libavfilter's `atempo` (tempo
    changes, pitch stays), otherwise by plain resampling (pitch follows speed).
    `normalize` scales the peak to `NORMALIZE_PEAK`.
    """
    label = label or Path(path).name
    sr = AUDIO_SAMPLE_RATE
    need = max(1, round(span * sr))
    try:
        audio = _read_audio(path, start, need, label)
    except av.error.FFmpegError as exc:
        raise DatasetError(Problem(label, f"audio cannot be decoded: {exc}")) from None
    if abs(need - out_samples) > 1:
        audio = stretch_audio(audio, out_samples, preserve_pitch=preserve_pitch)
    audio = _fit_length(audio, out_samples)
    return peak_normalize(audio) if normalize else audio


def _read_audio(path: Path, start: float | None, need: int, label: str) -> np.ndarray:
    sr = AUDIO_SAMPLE_RATE
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise DatasetError(Problem(label, "has no audio track"))
        stream = container.streams.audio[0]
        # swresample's mono->stereo upmix lowers the level by 3 dB; resample mono as mono and copy it instead.
        mono = stream.codec_context.channels == 1
        resampler = av.AudioResampler(format="fltp", layout="mono" if mono else "stereo", rate=sr)
        chunks: list[np.ndarray] = []
        # Index in the resampled stream of the first wanted sample (negative: pad with silence).
        skip: int | None = None
        have = 0

        def take(frames) -> bool:
            nonlocal have, skip
            for rf in frames:
                data = rf.to_ndarray().reshape(1 if mono else AUDIO_CHANNELS, -1)
                if mono:
                    data = np.repeat(data, AUDIO_CHANNELS, axis=0)
                if skip is None:
                    a0 = rf.time if rf.time is not None else 0.0
                    skip = 0 if start is None else round((start - a0) * sr)
                    if skip < 0:
                        chunks.append(np.zeros((AUDIO_CHANNELS, -skip), np.float32))
                        have += -skip
                        skip = 0
                if skip > 0:
                    drop = min(skip, data.shape[1])
                    data, skip = data[:, drop:], skip - drop
                if data.shape[1]:
                    chunks.append(data.astype(np.float32, copy=False))
                    have += data.shape[1]
            return have >= need

        done = False
        for frame in container.decode(stream):
            # Streams without timestamps on every frame still resample correctly; only the first time matters.
            if take(resampler.resample(frame)):
                done = True
                break
        if not done:
            take(resampler.resample(None))
    audio = np.concatenate(chunks, axis=1) if chunks else np.zeros((AUDIO_CHANNELS, 0), np.float32)
    return _fit_length(audio, need)


def stretch_audio(audio: np.ndarray, out_samples: int, *, preserve_pitch: bool) -> np.ndarray:
    """Change the duration of float32 `[2, S]` 16 kHz audio to `out_samples`, keeping pitch or not."""
    n = audio.shape[1]
    if n == 0 or out_samples == n:
        return _fit_length(audio, out_samples)
    if preserve_pitch:
        out = _atempo(audio, n / out_samples)
    else:
        # Declare the samples at a faster (or slower) rate and resample back: speed and pitch move together.
        out = _resample(audio, max(1, round(AUDIO_SAMPLE_RATE * n / out_samples)), AUDIO_SAMPLE_RATE)
    return _fit_length(out, out_samples)


def peak_normalize(audio: np.ndarray, peak: float = NORMALIZE_PEAK) -> np.ndarray:
    """Scale audio so its largest absolute sample is `peak`; silence is left silent."""
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if top < 1e-6:
        return audio
    return (audio * (peak / top)).astype(np.float32)


def _atempo(audio: np.ndarray, tempo: float) -> np.ndarray:
    sr = AUDIO_SAMPLE_RATE
    factors = []
    while tempo < _ATEMPO_MIN:
        factors.append(_ATEMPO_MIN)
        tempo /= _ATEMPO_MIN
    while tempo > _ATEMPO_MAX:
        factors.append(_ATEMPO_MAX)
        tempo /= _ATEMPO_MAX
    factors.append(tempo)
    graph = av.filter.Graph()
    nodes = [graph.add_abuffer(sample_rate=sr, format="fltp", layout="stereo", time_base=Fraction(1, sr))]
    nodes += [graph.add("atempo", f"{f:.8f}") for f in factors]
    # atempo may hand back packed samples; ask for planar stereo so channels do not interleave.
    nodes.append(graph.add("aformat", "sample_fmts=fltp:channel_layouts=stereo"))
    nodes.append(graph.add("abuffersink"))
    graph.link_nodes(*nodes).configure()
    out: list[np.ndarray] = []
    for i in range(0, audio.shape[1], _AUDIO_CHUNK):
        graph.push(_audio_frame(audio[:, i : i + _AUDIO_CHUNK], sr, pts=i))
        out += _drain(graph)
    graph.push(None)
    out += _drain(graph)
    return np.concatenate(out, axis=1) if out else np.zeros((AUDIO_CHANNELS, 0), np.float32)


def _drain(graph: av.filter.Graph) -> list[np.ndarray]:
    chunks = []
    while True:
        try:
            frame = graph.pull()
        except (BlockingIOError, av.error.EOFError):
            return chunks
        chunks.append(frame.to_ndarray().reshape(AUDIO_CHANNELS, -1).astype(np.float32, copy=False))


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate_out)
    out: list[np.ndarray] = []
    for i in range(0, audio.shape[1], _AUDIO_CHUNK):
        for rf in resampler.resample(_audio_frame(audio[:, i : i + _AUDIO_CHUNK], rate_in, pts=i)):
            out.append(rf.to_ndarray().reshape(AUDIO_CHANNELS, -1))
    for rf in resampler.resample(None):
        out.append(rf.to_ndarray().reshape(AUDIO_CHANNELS, -1))
    return np.concatenate(out, axis=1).astype(np.float32) if out else np.zeros((AUDIO_CHANNELS, 0), np.float32)


def _audio_frame(data: np.ndarray, rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data, dtype=np.float32), format="fltp", layout="stereo")
    frame.sample_rate = rate
    frame.time_base = Fraction(1, rate)
    frame.pts = pts
    return frame


def _fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    n = audio.shape[1]
    if n >= samples:
        return np.ascontiguousarray(audio[:, :samples], dtype=np.float32)
    return np.pad(audio, ((0, 0), (0, samples - n))).astype(np.float32)


def audio_samples(frames: int, frame_rate: float) -> int:
    """Audio samples at 16 kHz covering `frames` video frames at `frame_rate`."""
    return round(frames / frame_rate * AUDIO_SAMPLE_RATE)


def encode_clip(
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
