"""A run's name: where its files live under `storage.storage_path`."""

from __future__ import annotations

import hashlib
import json

from ltx_ray.config.display import to_plain
from ltx_ray.config.schema import JobConfig


def run_name(job: JobConfig, generation: str = "2.3") -> str:
    """The run's name: the configured one, or a stable digest of the request and model.

    Stable so that re-running the same command finds and resumes the same run. An LTX-2.5 run's name
    says so (`av2av-ltx25-<digest>`); an LTX-2.3 run's stays `av2av-<digest>`, as before 2.5 existed
    (model fields left empty are not part of the digest, so runs started then keep their names). Held-out
    pairs change what is trained on: a run with `train.holdout_pairs` > 0 has a name of its own.
    """
    if job.storage.run_name:
        return job.storage.run_name
    model = {k: v for k, v in to_plain(job.model).items() if v != ""}
    identity = {"request": to_plain(job.request), "model": model, "seed": job.seed}
    if job.train.holdout_pairs:
        identity["holdout_pairs"] = job.train.holdout_pairs
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    tag = "" if generation == "2.3" else f"ltx{generation.replace('.', '')}-"
    return f"av2av-{tag}{digest}"
