"""A latent cache written straight in the cache's own format, with made-up tensors: no clips, no VAE.

For the tests and benchmarks of what reads the cache (`ltx_ray.latents.reader`). The layout is the
pipeline's (`ltx_ray.latents.cache`): `<writer>/shards/*.parquet` with the stages' columns, the
writer's `report.json`, and `_COMPLETE.json` last, listing the shards with their sizes and SHA-256.
Shards hold the pairs out of order, as Ray Data's blocks come.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ltx_ray.latents.blobs import pack_tensors
from ltx_ray.latents.cache import CACHE_FORMAT, COMPLETE_MARKER, LATENT_TENSORS, REPORT_FILE


def synthetic_sample(i: int, *, latent_frames: int = 2) -> dict[str, torch.Tensor]:
    """Pair `i`'s made-up cached tensors (`LATENT_TENSORS`; bf16, fp32 and an int mask, as a GPU cache holds
    them), ~16 KB per latent frame."""
    g = torch.Generator().manual_seed(1000 + i)
    return {
        "ref_video": torch.randn(32, latent_frames, 8, 8, generator=g).bfloat16(),
        "video": torch.randn(32, latent_frames, 8, 8, generator=g).bfloat16(),
        "ref_audio": torch.randn(8, 4 * latent_frames, 16, generator=g),
        "audio": torch.randn(8, 4 * latent_frames, 16, generator=g),
        "video_context": torch.randn(32, 64, generator=g).bfloat16(),
        "audio_context": torch.randn(32, 64, generator=g).bfloat16(),
        "context_mask": (torch.arange(32) < 20 + i % 12).to(torch.int64),
    }


def write_latent_cache(root: Path, samples: list[dict[str, Any]], *, failed: Iterable[int] = (),
                       rows_per_shard: int = 1, seed: int = 0) -> str:
    """Write a complete cache of `samples` at `root` (the cache's folder, `.../latents/<key>`); its URI.

    The manifest has `len(samples) + len(failed)` pairs: those at the positions `failed` are rows with
    an error and no latents (pairs that failed in the pipeline), the others take `samples` in order.
    """
    failed = set(failed)
    total = len(samples) + len(failed)
    given = iter(samples)
    rows = []
    for pair in range(total):
        error = "ValueError: not a video" if pair in failed else ""
        sample = None if error else next(given)
        blob = b"" if error else pack_tensors({name: sample[name] for name in LATENT_TENSORS})
        rows.append({"index": pair, "name": f"pair{pair:05d}", "caption": f"caption {pair}", "error": error,
                     "decoded_clips": 0 if error else 2, "decode_seconds": 0.1, "decode_rss_mb": 100.0,
                     "encode_seconds": 0.0 if error else 0.2, "latents": blob})
    random.Random(seed).shuffle(rows)
    writer = "w-synthetic"
    shards_dir = root / writer / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    listed = []
    for n in range(0, total, rows_per_shard):
        name = f"synthetic_{n // rows_per_shard:06d}-0.parquet"
        table = pa.Table.from_pylist(rows[n:n + rows_per_shard], schema=_SCHEMA)
        pq.write_table(table, shards_dir / name)
        data = (shards_dir / name).read_bytes()
        listed.append({"path": f"{writer}/shards/{name}", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    report = {"pairs_in": total, "pairs_out": len(samples),
              "failed": [{"name": f"pair{p:05d}", "reason": "ValueError: not a video"} for p in sorted(failed)]}
    (root / writer / REPORT_FILE).write_text(json.dumps(report))
    (root / COMPLETE_MARKER).write_text(json.dumps({"key": root.name, "format": CACHE_FORMAT, "pairs": len(samples),
                                                    "writer": writer, "shards": listed}))
    return str(root)


_SCHEMA = pa.schema([("index", pa.int64()), ("name", pa.string()), ("caption", pa.string()), ("error", pa.string()),
                     ("decoded_clips", pa.int64()), ("decode_seconds", pa.float64()), ("decode_rss_mb", pa.float64()),
                     ("encode_seconds", pa.float64()), ("latents", pa.binary())])
