"""The preprocessing run's report: pairs in and out, what was dropped and why, time per stage.

Written beside the cache's shards (`report.json`) and returned with the cache.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# The per-pair columns the stages add for the report (`ltx_ray.latents.stages`).
COLUMNS = ["name", "error", "decoded_clips", "decode_seconds", "decode_rss_mb", "encode_seconds"]


def summarize(report: dict[str, Any], rows: list[dict], seconds: float) -> dict[str, Any]:
    """The planning report completed with the stages' per-pair rows (`COLUMNS`), logged as it goes."""
    ok = [r for r in rows if not r["error"]]
    failed = [{"name": r["name"], "reason": r["error"]} for r in rows if r["error"]]
    decode_s = sum(r["decode_seconds"] for r in rows)
    encode_s = sum(r["encode_seconds"] for r in rows)
    decoded = sum(r["decoded_clips"] for r in rows)
    report = {
        **report,
        "pairs_in": len(rows),
        "pairs_out": len(ok),
        "failed": failed,
        "decoded_clips": decoded,
        "seconds": seconds,
        "stages": {
            "decode_fit": {"pairs_in": len(rows), "pairs_out": len(ok), "task_seconds": decode_s,
                           "clips_per_second": decoded / decode_s if decode_s else 0.0,
                           "peak_worker_rss_mb": max((r["decode_rss_mb"] for r in rows), default=0.0)},
            "encode": {"pairs_in": len(ok), "pairs_out": len(ok), "actor_seconds": encode_s,
                       "clips_per_second": 2 * len(ok) / encode_s if encode_s else 0.0},
        },
    }
    # One line for the two stages (the figures per stage are in report.json).
    d, e = report["stages"]["decode_fit"], report["stages"]["encode"]
    log.info("decoded and encoded %d of %d pair(s) in %.0f s: decode %.1f s in workers (%.2f clips/s), "
             "encode %.1f s (%.2f clips/s)", len(ok), len(rows), seconds, d["task_seconds"], d["clips_per_second"],
             e["actor_seconds"], e["clips_per_second"])
    for f in failed:
        log.warning("pair %s was dropped: %s", f["name"], f["reason"])
    return report
