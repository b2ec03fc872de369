#!/usr/bin/env python
"""Benchmark the Ray Data preprocessing: decode scaling with 1 vs 2 workers, stage shares, worker memory.

    python scripts/bench_preprocess.py [--pairs 16]

Everything is measured side by side in one run on a local Ray instance:
1. the decode/fit stage alone over the same archive with 1 and then 2 decode
   workers (clips/s, and the 2/1 ratio);
2. the whole pipeline (decode -> encode -> Parquet) once, with the share of
   worker time per stage;
3. the peak resident memory of a decode worker for a 10-pair and a 40-pair
   archive (fresh workers each time), and their ratio.
Last line: `scaling_2v1=<ratio> rss_40v10=<ratio>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from ltx_ray.config import load_config  # noqa: E402
from ltx_ray.data import pipeline  # noqa: E402
from ltx_ray.data.synthetic import write_sample_dataset  # noqa: E402
from ltx_ray.model.tiny import write_tiny_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _job(archive: Path, bundle: tuple[Path, Path], storage: Path, workers: int):
    checkpoint, gemma = bundle
    job, _ = load_config(
        ROOT / "conf" / "demo.yaml",
        [
            f"request.training_data_url={archive}", f"model.checkpoint={checkpoint}", f"model.text_encoder={gemma}",
            f"storage.storage_path={storage}", "request.validation=[]", f"cluster.decode_workers={workers}",
            # 49 frames at 24 fps from 720p sources: enough decoding per pair that Ray's
            # per-task overhead does not dominate what is measured.
            "request.number_of_frames=49", "request.frame_rate=24",
        ],
    )
    return job


def _plan(job, archive: Path, work: Path) -> list[dict]:
    rows, _ = pipeline._plan(job, archive, work)
    for row in rows:
        row["archive_uri"] = str(archive)
    return rows


def _decode_only(job, rows: list[dict], workers: int) -> tuple[float, float]:
    """(clips/s, peak decode-worker RSS in MiB) of the decode stage alone."""
    started = time.perf_counter()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        pipeline.decode_fit, fn_kwargs={"request": job.request, "storage": job.storage},
        batch_size=1, num_cpus=1, concurrency=workers,
    )
    out = ds.select_columns(["decoded_clips", "decode_rss_mb"]).take_all()
    seconds = time.perf_counter() - started
    return sum(r["decoded_clips"] for r in out) / seconds, max(r["decode_rss_mb"] for r in out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12, help="pairs in the scaling archive (default 12)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prep-"))
    bundle = write_tiny_bundle(tmp / "bundle")
    data = write_sample_dataset(tmp / "data", args.pairs, fps=30, seconds=2.5, width=1280, height=720)
    ray.init(num_cpus=2, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False

    job1 = _job(data.archive, bundle, tmp / "runs", 1)
    rows = _plan(job1, data.archive, tmp / "work")
    _decode_only(job1, rows[:2], 2)  # warm the worker pool and imports
    one, _ = _decode_only(job1, rows, 1)
    two, _ = _decode_only(_job(data.archive, bundle, tmp / "runs", 2), rows, 2)
    print(f"decode+fit, {len(rows)} pairs: 1 worker {one:.2f} clips/s, 2 workers {two:.2f} clips/s")

    cache = pipeline._run_pipeline(_job(data.archive, bundle, tmp / "runs", 2), "bench", "full", rows, {})
    stages = cache.report["stages"]
    decode_s = stages["decode_fit"]["task_seconds"]
    encode_s = stages["encode"]["actor_seconds"]
    wall = cache.report["seconds"]
    print(
        f"whole pipeline: {wall:.1f} s wall; worker time: decode/fit {decode_s:.1f} s "
        f"({decode_s / (decode_s + encode_s):.0%}), encode {encode_s:.1f} s ({encode_s / (decode_s + encode_s):.0%})"
    )

    rss = {}
    for n in (10, 40):
        small = write_sample_dataset(tmp / f"rss{n}", n, fps=30, seconds=2.5, width=1280, height=720)
        job = _job(small.archive, bundle, tmp / "runs", 1)
        # A fresh Ray instance: worker processes start empty, so their peak RSS is this archive's.
        ray.shutdown()
        ray.init(num_cpus=2, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        _, rss[n] = _decode_only(job, _plan(job, small.archive, tmp / f"work{n}"), 1)
        print(f"peak decode-worker RSS, {n} pairs: {rss[n]:.0f} MiB")
    ray.shutdown()
    print(f"scaling_2v1={two / one:.2f} rss_40v10={rss[40] / rss[10]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
