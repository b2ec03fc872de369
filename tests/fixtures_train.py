"""Fixtures of the training stage: one uninterrupted run of the real job, shared by the tests that need a LoRA."""

from __future__ import annotations

import pytest

from jobs import tiny_job

# Enough for 4 checkpoints (steps 8, 16, 24 and 30; the newest 3 kept) and a preview at the last step; the loop's own
# behaviours (resume, damaged checkpoints, storage faults) are tested without Ray, in test_trainer_faults.py.
# 30 rather than fewer: the elastic run (test_train.py) compares its losses with these, and its just-in-time
# checkpoint must land after its step-10 checkpoint and before its last step.
REFERENCE_STEPS = 30


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_bundle, sample_dataset, ray_cluster):
    """An uninterrupted ZeRO-2 run of REFERENCE_STEPS steps in a local folder: (job, result JSON, storage root)."""
    from ltx_ray.train.driver import run_job

    runs = tmp_path_factory.mktemp("runs")
    job = tiny_job(tiny_bundle, sample_dataset, str(runs), "reference", "checkpoint.every=8",
                   validation=True, steps=REFERENCE_STEPS)
    return job, run_job(job), runs
