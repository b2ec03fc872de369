"""W&B on rank 0: what a preemption notice must make durable before the node goes."""

from __future__ import annotations

from pathlib import Path

from jobs import ROOT
from ltx_ray.config import load_config
from ltx_ray.train.tracking import Tracker
from wandb_history import read_offline_history as history


def _steps(run_dir: Path, run: str) -> list[int]:
    return [r["_step"] for r in history(run_dir / f"run-{run}.wandb") if "loss" in r]


def test_flush_writes_the_logged_steps_to_the_run_file_and_logging_goes_on(tmp_path):
    job, _ = load_config(ROOT / "conf" / "demo.yaml", ["tracking.mode=offline"])
    tracker = Tracker(job, "flushed", tmp_path, enabled=True)
    for step in (1, 2, 3):
        tracker.log({"loss": 1.0 / step}, step=step)
    before = Path(tracker.run.dir).parent
    tracker.flush()
    # On disk now, with this process still running: a killed worker would keep them.
    assert _steps(before, "flushed") == [1, 2, 3]
    tracker.log({"loss": 0.25}, step=4)
    after = tracker.finish()
    assert after != before and _steps(after, "flushed") == [4]
