#!/usr/bin/env python
"""What a training worker holds of the latent cache, and how soon it has its first step's samples: the whole
set in RAM (as workers read it before `ltx_ray.latents.reader`) against reading by sample number.

    python scripts/bench_worker_read.py [--pairs 10 1000] [--latent-frames 8] [--world 8] [--steps 50]

Writes a cache of made-up latents per pair count straight in the cache's format (`synthetic_latents`,
~13 KB per latent frame and pair: tiny next to the spec's ~15-20 MB a pair), then measures, each in a
fresh process, rank 0 of a `--world`-worker run with `--global-batch` samples a step:

- whole set: every shard read, its accepted rows unpacked into a list sorted by pair (what
  the removed `load_samples` kept; read here with pyarrow directly, without the Ray Data pipeline the workers ran,
  so its time is a lower bound);
- by number: `LatentIndex.read` (the driver's listing, timed on the driver and handed to the worker
  pickled, as Ray hands it over), then a `LatentReader` holding this step's and
  the next step's samples, `--steps` steps read as `train_step` reads them, `--step-ms` of made-up
  training each, the next step read ahead meanwhile.

Memory is the peak resident set over the process's size before reading, after a warm-up that pays
what either way pays once (imports, pyarrow's and torch's first use, a thread's malloc arena), and
pyarrow's pool peak;
`first_step_s` is the time until the first step's samples are in hand. The last line is the wall time.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

MB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--latent-frames", type=int, default=8, help="size of each made-up pair")
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--step-ms", type=float, default=20.0, help="made-up training time of a step")
    parser.add_argument("--child", choices=["whole", "by-number"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_whole_set(args) if args.child == "whole" else _by_number(args)))
        return 0

    started = time.perf_counter()
    from ltx_ray.latents.reader import LatentIndex
    from synthetic_latents import synthetic_sample, write_latent_cache

    with tempfile.TemporaryDirectory(prefix="bench-worker-read-") as tmp:
        for pairs in args.pairs:
            t = time.perf_counter()
            uri = write_latent_cache(Path(tmp) / f"latents-{pairs}" / "key",
                                     [synthetic_sample(i, latent_frames=args.latent_frames) for i in range(pairs)])
            shards = sum(p.stat().st_size for p in Path(uri).rglob("*.parquet"))
            print(f"pairs={pairs}: cache of {shards / MB:.1f} MB written in {time.perf_counter() - t:.1f} s "
                  f"({shards / pairs / 1024:.0f} KB a pair)", flush=True)
            t = time.perf_counter()
            index_file = Path(tmp) / f"index-{pairs}.pickle"
            index_file.write_bytes(pickle.dumps(LatentIndex.read(uri)))
            index_s = time.perf_counter() - t
            whole, ours = (_child(args, mode, uri, index_file) for mode in ("whole", "by-number"))
            print(f"pairs={pairs} whole set: rss_delta={whole['rss_delta_mb']:.1f} MB "
                  f"arrow_peak={whole['arrow_peak_mb']:.1f} MB samples_held={whole['held']} "
                  f"first_step_s={whole['first_step_s']:.3f}", flush=True)
            print(f"pairs={pairs} by number: rss_delta={ours['rss_delta_mb']:.1f} MB "
                  f"arrow_peak={ours['arrow_peak_mb']:.1f} MB samples_held<={ours['capacity']} "
                  f"first_step_s={ours['first_step_s']:.3f} (driver's listing {index_s:.3f} s, {index_file.stat().st_size / 1024:.0f} KB to each worker) "
                  f"shards_read={ours['shards_read']}/{pairs} in {args.steps} steps, "
                  f"median data time {ours['median_data_ms']:.2f} ms/step", flush=True)
    print(f"wall_s={time.perf_counter() - started:.1f}")
    return 0


def _child(args, mode: str, uri: str, index: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--cache", uri, "--index", str(index), "--world", str(args.world),
           "--global-batch", str(args.global_batch), "--steps", str(args.steps), "--step-ms", str(args.step_ms)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _warm_up(cache: str) -> None:
    """What either way pays once whatever the cache's size, paid before the baseline is taken: the imports,
    pyarrow's and torch's first use, and a thread's own malloc arena (the reader reads in one)."""
    import threading

    import pyarrow.parquet as pq
    import torch

    from ltx_ray.latents.blobs import unpack_tensors
    from ltx_ray.latents.cache import COMPLETE_MARKER
    from ltx_ray.latents.reader import LatentReader  # noqa: F401
    from ltx_ray.train.step import read_ahead  # noqa: F401

    def read_one() -> None:
        shard = json.loads((Path(cache) / COMPLETE_MARKER).read_text())["shards"][0]["path"]
        blob = pq.read_table(Path(cache) / shard, columns=["latents"]).column("latents")[0].as_py()
        torch.stack([t.float() for t in unpack_tensors(blob).values()][:1])

    read_one()
    thread = threading.Thread(target=read_one)
    thread.start()
    thread.join()


def _baseline_mb() -> float:
    """The resident set now, its peak reset to it (Linux: clear_refs 5), so the peak measured later is of what
    comes after (the warm-up's own peak would count otherwise)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    return _status_mb("VmHWM")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def _whole_set(args) -> dict:
    """The whole set as a list of samples, as the removed `load_samples` held it."""
    _warm_up(args.cache)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ltx_ray.latents.blobs import unpack_tensors
    from ltx_ray.latents.cache import COMPLETE_MARKER, LATENT_TENSORS

    base = _baseline_mb()
    started = time.perf_counter()
    marker = json.loads((Path(args.cache) / COMPLETE_MARKER).read_text())
    samples = []
    for shard in marker["shards"]:
        table = pq.read_table(Path(args.cache) / shard["path"], columns=["index", "error", "latents"])
        for index, error, blob in zip(*(table.column(c).to_pylist() for c in ("index", "error", "latents"))):
            if not error:
                tensors = unpack_tensors(blob)
                samples.append({**{name: tensors[name] for name in LATENT_TENSORS}, "index": index})
    samples.sort(key=lambda s: s["index"])
    first_step = time.perf_counter() - started
    return {"rss_delta_mb": _peak_mb() - base, "arrow_peak_mb": pa.default_memory_pool().max_memory() / MB,
            "held": len(samples), "first_step_s": first_step}


def _by_number(args) -> dict:
    """Rank 0 of the run reading by sample number, step after step."""
    import statistics

    _warm_up(args.cache)
    import pyarrow as pa
    import torch

    from ltx_ray.latents.reader import LatentReader
    from ltx_ray.train import batches
    from ltx_ray.train.step import StepShape, read_ahead

    base = _baseline_mb()
    index = pickle.loads(Path(args.index).read_bytes())  # the driver's listing, as Ray hands it to the worker
    shape = StepShape(rank=0, world=args.world, accumulation=args.global_batch // args.world, micro_batch_size=1,
                      global_batch_size=args.global_batch)
    job = argparse.Namespace(seed=7, request=argparse.Namespace(number_of_steps=args.steps))
    capacity = 2 * shape.accumulation * shape.micro_batch_size
    waits, first_step = [], None
    started = time.perf_counter()
    with LatentReader(index, capacity=capacity) as reader:
        for step in range(args.steps):
            t = time.perf_counter()
            read_ahead(reader, job, step, shape)
            for micro in range(shape.accumulation):
                positions = batches.micro_batch_positions(micro_step=micro, rank=0, world_size=shape.world,
                                                          micro_batch_size=1)
                idx = batches.sample_indices(len(reader), seed=job.seed, step=step, positions=positions,
                                             global_batch_size=shape.global_batch_size)
                batches.collate(reader, idx, torch.device("cpu"), torch.float32)
            waits.append(time.perf_counter() - t)
            if first_step is None:
                first_step = time.perf_counter() - started
            time.sleep(args.step_ms / 1000)  # the step trains; the next one's samples are read meanwhile
        shards_read = reader.shards_read
    return {"rss_delta_mb": _peak_mb() - base, "arrow_peak_mb": pa.default_memory_pool().max_memory() / MB,
            "capacity": capacity, "first_step_s": first_step, "shards_read": shards_read,
            "median_data_ms": statistics.median(waits[1:] or waits) * 1000}


if __name__ == "__main__":
    raise SystemExit(main())
