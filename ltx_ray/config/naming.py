"""A run's name: where its files live under `storage.storage_path`."""

from __future__ import annotations

import hashlib
import json

from ltx_ray.config.display import to_plain
from ltx_ray.config.schema import JobConfig


def run_name(job: JobConfig) -> str:
    """The run's name: the configured one, or a stable digest of the request and model.

    Stable so that re-running the same command finds and resumes the same run.
    """
    if job.storage.run_name:
        return job.storage.run_name
    identity = {"request": to_plain(job.request), "model": to_plain(job.model), "seed": job.seed}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"av2av-{digest}"
