"""A clip's audio fitted to the target's span: cut on the video's clock, resampled, stretched, normalised."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import av.filter
import numpy as np

from ltx_ray.config.resolution import AUDIO_SAMPLE_RATE
from ltx_ray.errors import DatasetError, Problem

# The LTX-2.3 audio VAE works on 16 kHz (`AUDIO_SAMPLE_RATE`) stereo.
AUDIO_CHANNELS = 2
# Peak level after normalisation: just under full scale, so an AAC re-encode does not clip.
NORMALIZE_PEAK = 0.95
# One atempo stage stays within [0.5, 2] (the range every FFmpeg build accepts and sounds best in); chain beyond.
_ATEMPO_MIN, _ATEMPO_MAX = 0.5, 2.0
_AUDIO_CHUNK = 4096



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


