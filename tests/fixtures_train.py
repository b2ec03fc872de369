"""Fixtures of the training stage: one uninterrupted run of the real job, shared by the tests that need a LoRA."""

from __future__ import annotations

import pytest

from jobs import tiny_job


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_bundle, sample_dataset, ray_cluster):
    """An uninterrupted ZeRO-2 run in a local folder: (job, result JSON, storage root)."""
    from ltx_ray.train.driver import run_job

    runs = tmp_path_factory.mktemp("runs")
    job = tiny_job(tiny_bundle, sample_dataset, str(runs), "reference", "train.checkpoint_every=25",
                   validation=True)
    return job, run_job(job), runs
