"""Decode-and-fit throughput against raw PyAV decoding of the same files, on this machine.

Writes a few synthetic pairs (or uses --archive), then times, best of
--repeats runs:

- raw: PyAV decodes every clip, video frames to RGB arrays at source size
  and the audio track to arrays (the least any pipeline must do);
- fit: `fit_pair` on every probed pair, as a Ray Data worker runs it
  (decode, resample in time, crop and resize to the bucket, audio resampled
  to 16 kHz stereo, normalised). Probing happens once, in `build_manifest`,
  so it is not timed. Clips are `number_of_frames` long at `frame_rate`, so
  both paths decode the same frames.

Prints frames/s for both, then `decode_fit_vs_raw=<fit/raw>`; the last line is the
benchmark's wall time.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402

from ltx_ray.config.resolution import snap_frames  # noqa: E402
from ltx_ray.config.schema import RequestConfig  # noqa: E402
from ltx_ray.clips.ingest import build_manifest, fit_pair  # noqa: E402
from synthetic import write_sample_dataset  # noqa: E402


def raw_decode(paths: list[Path]) -> int:
    """Decode every clip of `paths`: video frames to RGB arrays, audio to arrays; return the video frame count."""
    count = 0
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
                count += 1
        with av.open(str(path)) as container:
            for frame in container.decode(audio=0):
                frame.to_ndarray()
    return count


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the throughput ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, help="a training .zip to use instead of synthetic clips")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--resolution", default="medium", choices=("low", "medium", "high"))
    p.add_argument("--aspect-ratio", default="16:9", choices=("16:9", "1:1", "9:16"))
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    started = time.perf_counter()
    # Dataset warnings (e.g. "Aim for at least 10 pairs") are noise here; keep the output to the numbers.
    logging.getLogger("ltx_ray").setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    try:
        frames = min(121, snap_frames(round(args.seconds * args.fps)))
        archive = args.archive or write_sample_dataset(
            work / "data", args.pairs, frames=frames, fps=args.fps, width=args.width, height=args.height
        ).archive
        request = RequestConfig(
            training_data_url=str(archive),
            number_of_frames=frames,
            frame_rate=args.fps,
            resolution=args.resolution,
            aspect_ratio=args.aspect_ratio,
            # With --archive, clips of any length are fitted to `frames`.
            auto_scale_input=args.archive is not None,
        )
        manifest = build_manifest(request, work / "manifest")
        pairs = manifest.pairs
        clips = [c for pair in pairs for c in (pair.files.start, pair.files.end)]

        # Best of N per pair, the two paths interleaved: on a shared machine short
        # measurements are more likely to catch a quiet moment than one long one.
        raw_best = [float("inf")] * len(pairs)
        fit_best = [float("inf")] * len(pairs)
        raw_frames = fit_frames = 0
        for _ in range(args.repeats):
            raw_frames = fit_frames = 0
            for i, pair in enumerate(pairs):
                t = time.perf_counter()
                raw_frames += raw_decode([pair.files.start, pair.files.end])
                raw_best[i] = min(raw_best[i], time.perf_counter() - t)
                t = time.perf_counter()
                fitted = fit_pair(pair, request)
                fit_best[i] = min(fit_best[i], time.perf_counter() - t)
                fit_frames += fitted.reference_video.shape[0] + fitted.target_video.shape[0]

        raw_s, fit_s = sum(raw_best), sum(fit_best)
        raw_fps, fit_fps = raw_frames / raw_s, fit_frames / fit_s
        print(f"clips: {len(clips)} from {archive.name}; "
              f"fitted to {request.resolution} {request.aspect_ratio}, {frames} frames")
        print(f"raw PyAV decode (video to RGB + audio): {raw_frames} frames in {raw_s:.3f} s "
              f"= {raw_fps:.1f} frames/s")
        print(f"decode + fit (video+audio): {fit_frames} frames in {fit_s:.3f} s = {fit_fps:.1f} frames/s")
        print(f"decode_fit_vs_raw={fit_fps / raw_fps:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
