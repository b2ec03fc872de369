"""Fixtures of the dataset stage: sample clips and archives, and a local HTTP server.

The S3 endpoint (`s3_server`, `s3_bucket`) comes from fixtures_cluster.

Clips are real files written with PyAV, tiny (a few dozen frames at 160x90
or so) and cached per session, so the whole data test set stays fast.
Video frames encode their own timestamp as grey level (`TIME_GREY` per
second), which lets tests check which source instant a fitted frame shows.
"""

from __future__ import annotations

import http.server
import re
import threading
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from ltx_ray.clips.media import AUDIO_SAMPLE_RATE, write_clip
from synthetic import tone, write_sample_dataset

# Grey level per second of clip time in `time_video` frames (clips stay under ~2.5 s).
TIME_GREY = 100.0
# Small fitted size used by most tests: the "low" 16:9 bucket is 512x288.
SMALL = dict(resolution="low", aspect_ratio="16:9", number_of_frames=9, frame_rate=8)


def time_video(frames: int, fps: float, width: int, height: int) -> np.ndarray:
    """uint8 frames whose grey level is `TIME_GREY` x the frame's time in seconds."""
    levels = np.clip(np.rint(np.arange(frames) / fps * TIME_GREY), 0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()


def grey(video: np.ndarray) -> np.ndarray:
    """Mean grey level of each frame of uint8 `[F, H, W, 3]` video."""
    return video.reshape(video.shape[0], -1).mean(axis=1)


def dominant_hz(audio: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> float:
    """The strongest frequency of the first channel of `[C, S]` audio."""
    x = audio[0] * np.hanning(audio.shape[1])
    return float(np.argmax(np.abs(np.fft.rfft(x)))) * sample_rate / audio.shape[1]


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory) -> Callable[..., Path]:
    """Write (once per session and argument set) a clip whose frames show their own time.

    Keywords: frames, fps, width, height, ext, audio ("tone" | None),
    freq, channels, sample_rate, audio_seconds (default: the video length), amplitude.
    """
    root = tmp_path_factory.mktemp("clips")
    cache: dict[tuple, Path] = {}

    def make(
        frames: int = 32,
        fps: float = 16,
        width: int = 160,
        height: int = 90,
        ext: str = ".mp4",
        audio: str | None = "tone",
        freq: float = 440.0,
        channels: int = 2,
        sample_rate: int = 44100,
        audio_seconds: float | None = None,
        amplitude: float = 0.4,
    ) -> Path:
        key = (frames, fps, width, height, ext, audio, freq, channels, sample_rate, audio_seconds, amplitude)
        if key not in cache:
            path = root / f"clip{len(cache):03d}{ext}"
            sound = None
            if audio == "tone":
                sound = tone(freq, audio_seconds or frames / fps, sample_rate, channels, amplitude)
            write_clip(path, time_video(frames, fps, width, height), fps, sound, sample_rate)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture
def make_zip(tmp_path) -> Callable[..., Path]:
    """Build a zip from {archive name: Path | bytes | str}; `symlinks` maps names to link targets."""

    def make(
        entries: dict[str, Path | bytes | str], symlinks: dict[str, str] | None = None, name: str = "data.zip"
    ) -> Path:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for arcname, content in entries.items():
                if isinstance(content, Path):
                    zf.write(content, arcname)
                else:
                    zf.writestr(arcname, content)
            for arcname, target in (symlinks or {}).items():
                info = zipfile.ZipInfo(arcname)
                info.create_system = 3
                info.external_attr = (0o120777 << 16)
                zf.writestr(info, target)
        return path

    return make


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The synthetic sample dataset at test size: 3 pairs of 2 s clips, 160x90 at 16 fps."""
    return write_sample_dataset(tmp_path_factory.mktemp("sample"), 3, fps=16, seconds=2.0, width=160, height=90)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` (honouring `Range: bytes=a-b`; `server.served[path]` counts the body bytes sent);
    paths in `server.fail_first` answer 503 that many times first; `server.authorization[path]` keeps the last
    Authorization header. Paths are matched without their query string."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        path = self.path.split("?", 1)[0]
        server.hits[path] = server.hits.get(path, 0) + 1
        server.authorization[path] = self.headers.get("Authorization")
        if server.fail_first.get(path, 0) >= server.hits[path]:
            self.send_error(503, "try again")
            return
        body = server.files.get(path)
        if body is None:
            self.send_error(404, "not found")
            return
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start, end = int(wanted[1]), int(wanted[2] or len(body) - 1)
            body = body[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(server.files[path])}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # Counted before the body goes out: the client may read it and check the count before this thread
        # would get back to it.
        server.served[path] = server.served.get(path, 0) + len(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def http_server():
    """A real HTTP server on 127.0.0.1: set `.files[path] = bytes`, `.fail_first[path] = n`; `.url(path)`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.fail_first, server.hits, server.served, server.authorization = {}, {}, {}, {}, {}
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
