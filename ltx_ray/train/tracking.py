"""Weights & Biases on rank 0: one run per job, resumed by its id, never fatal to training."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ltx_ray.config.display import redact, to_plain
from ltx_ray.config.schema import JobConfig

log = logging.getLogger(__name__)


def wandb_mode(job: JobConfig) -> str:
    """online with an API key, offline without (the `auto` default), or as configured."""
    mode = job.tracking.mode
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class Tracker:
    """Logs metrics and media to W&B; a no-op on other ranks or when W&B fails."""

    def __init__(self, job: JobConfig, run_name: str, directory: Path, enabled: bool):
        self.run = None
        self.directory = directory
        if not enabled or wandb_mode(job) == "disabled":
            return
        try:
            import wandb

            directory.mkdir(parents=True, exist_ok=True)
            self._init = dict(
                project=job.tracking.project,
                entity=job.tracking.entity,
                id=run_name,
                name=run_name,
                resume="allow",
                mode=wandb_mode(job),
                dir=str(directory),
                config=redact(to_plain(job)),
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
            self.run = wandb.init(**self._init)
        except Exception as exc:  # W&B must never stop a training run
            log.warning("W&B is unavailable, continuing without it: %s", exc)
            self.run = None

    def flush(self) -> None:
        """Make everything logged so far durable before this node may go (a preemption notice).

        W&B holds a run's history for up to `x_transaction_log_flush_interval` (15 s) before writing it to
        the run file (offline) or sending it (online); a killed worker loses those steps. Only finishing the
        run writes them at once, so the run is marked preempting, finished and resumed by its id.
        """
        if self.run is None:
            return
        try:
            import wandb

            self.run.mark_preempting()
            _close(self.run)
            # An offline run's folder is named by its start second: the resumed run must not reuse it.
            time.sleep(1 - time.time() % 1)
            self.run = wandb.init(**self._init)
        except Exception as exc:
            log.warning("W&B flush failed, continuing without it: %s", exc)
            self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log a dict of metrics at an optimizer step."""
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as exc:
            log.warning("W&B log failed at step %d: %s", step, exc)

    def log_video(self, key: str, path: Path, step: int, caption: str = "") -> None:
        """Log an mp4 (with its audio track) at an optimizer step."""
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Video(str(path), caption=caption, format="mp4")}, step=step)
        except Exception as exc:
            log.warning("W&B video log failed at step %d: %s", step, exc)

    def finish(self) -> Path | None:
        """Close the run; returns the local run directory, if any."""
        if self.run is None:
            return None
        run_dir = Path(self.run.dir).parent
        try:
            _close(self.run)
        except Exception as exc:
            log.warning("W&B finish failed: %s", exc)
        self.run = None
        return run_dir


def _close(run) -> None:
    """Finish a run and return only once its run file is complete on disk.

    `run.finish()` returns when the service has the last records, not when it has written them: the
    run file may still hold only its header. Shutting the service down waits for every run file to close.
    """
    import wandb

    run.finish()
    wandb.teardown()
