#!/usr/bin/env python
"""The GPU sizing table of cluster/README.md, produced by `ltx-ray estimate`'s estimator.

    .venv/bin/python scripts/sizing_table.py [--config conf/default.yaml] [--workers 8] [key=value ...]

For each of the spec's resolutions (1:1, the largest bucket of each level) and
frame counts 49 / 89 / 121 at 24 fps: tokens, measured activations, the
training worker's GiB per GPU under ZeRO-2 and ZeRO-3 (gradient checkpointing
on and off), the encoder actor, and which of 80 / 40 / 24 GB GPUs each fits.
The previewing rank 0 (validation size fixed by the config) is printed once.
Markdown on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPUS = (80, 40, 24)  # GB (10^9 bytes) as sold


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "conf" / "default.yaml"))
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--ltx25", action="store_true",
                   help="size LTX-2.5: a header-only transformer file with the 22B's sizes and 2.5's flags "
                        "(ltx_ray.model.ltx23.LTX25_22B_TRANSFORMER) stands in for the real one")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    if a.ltx25:
        a.overrides = [f"model.checkpoint={_ltx25_stand_in()}", *a.overrides]

    from ltx_ray.config.load import load_config
    from ltx_ray.estimate.estimate import GIB, estimate

    rows, preview, started = [], None, time.perf_counter()
    for resolution in ("low", "medium", "high"):
        for frames in (49, 89, 121):
            overrides = [*a.overrides, f"request.resolution={resolution}", "request.aspect_ratio=1:1",
                         f"request.number_of_frames={frames}", "request.frame_rate=24",
                         f"cluster.num_workers={a.workers}"]
            if preview is not None:
                overrides.append("request.validation=[]")
            job, _ = load_config(a.config, overrides, training=False)
            t0 = time.perf_counter()
            est = estimate(job)
            print(f"{resolution} x {frames}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            if preview is None:
                preview = (job, est.use("previewing rank 0"), est.preview_tokens)
            peak = {(x["zero_stage"], x["gradient_checkpointing"]): x["peak"] for x in est.alternatives
                    if x["num_workers"] == a.workers}
            rows.append((resolution, frames, est, peak))

    first = rows[0][2]
    print(f"Made by `scripts/sizing_table.py --workers {a.workers}` ({Path(a.config).name}, "
          f"{first.architecture.split(' (')[0]}; rank {first.settings['rank']} LoRA on "
          f"{first.counts['lora_layers']} layers, {first.counts['trainable_parameters'] / 1e6:.0f} M trainable; "
          f"{first.settings['precision']}; micro-batch {first.settings['micro_batch_size']}; "
          f"{a.workers} GPUs), in {time.perf_counter() - started:.0f} s. GiB per GPU, allowance included.\n")
    print("| resolution × frames (1:1, 24 fps) | video tokens (target + ref) | activations (ckpt on) | "
          "ZeRO-2 ckpt on | ZeRO-2 ckpt off | ZeRO-3 ckpt on | ZeRO-3 ckpt off | encoder actor | "
          + " | ".join(f"fits {g} GB" for g in GPUS) + " |")
    print("|" + "---|" * (8 + len(GPUS)))
    for resolution, frames, est, peak in rows:
        tokens = est.tokens["video"] + est.tokens["reference_video"]
        fits = []
        for g in GPUS:
            limit = g * 1e9
            ok = [f"ZeRO-{s}" + ("" if ckpt else " no-ckpt") for (s, ckpt), v in sorted(peak.items(), key=lambda kv:
                  (not kv[0][1], kv[0][0])) if v <= limit]
            fits.append(ok[0] if ok else "no")
        print(f"| {resolution} × {frames} | {tokens:,} | {est.use('training worker').kinds['activations'] / GIB:.1f} | "
              + " | ".join(f"{peak[k] / GIB:.1f}" for k in ((2, True), (2, False), (3, True), (3, False)))
              + f" | {est.use('encoder actor').total / GIB:.1f} | " + " | ".join(fits) + " |")
    job, use, tokens = preview
    r = job.request
    print(f"\nPreviewing rank 0 (validation {r.validation_resolution} {r.validation_aspect_ratio} × "
          f"{r.validation_number_of_frames}, {tokens['video']:,} + {tokens['reference_video']:,} video tokens, "
          f"guidance passes batched, ZeRO-{job.cluster.zero_stage}): {use.total / GIB:.1f} GiB per GPU "
          f"({', '.join(f'{k} {v / GIB:.1f}' for k, v in use.kinds.items())}; allowance {use.allowance / GIB:.1f}).")
    print("\n'fits' names the first setting that fits, preferring gradient checkpointing on and ZeRO-2 "
          "(GB = 10^9 bytes, as GPUs are sold).")
    return 0


def _ltx25_stand_in() -> Path:
    """A safetensors file with LTX-2.5's transformer header (config and model_version) and no real weights."""
    import json
    import tempfile

    import torch
    from safetensors.torch import save_file

    from ltx_ray.model.ltx23 import LTX25_22B_TRANSFORMER

    path = Path(tempfile.mkdtemp(prefix="ltx25-header-")) / "ltx-2.5-22b-stand-in.safetensors"
    save_file({"stand_in": torch.zeros(1)}, str(path), {
        "config": json.dumps({"transformer": LTX25_22B_TRANSFORMER, "scheduler": {}}), "model_version": "2.5.0"})
    return path


if __name__ == "__main__":
    raise SystemExit(main())
