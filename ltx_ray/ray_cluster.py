"""Joining the Ray cluster: the one call every command that uses Ray makes first."""

from __future__ import annotations

import logging
import os

import ray

from ltx_ray import tempdirs
from ltx_ray.config.schema import JobConfig


def init_ray(job: JobConfig) -> None:
    """Join the cluster in RAY_ADDRESS (or the one `ray job submit` runs in), else start a local one."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # A local instance: decode tasks, encoder actors and training workers are mostly
        # waiting on each other, so offer a few more logical CPUs than cores.
        ray.init(num_cpus=max(4, os.cpu_count() or 1), logging_level=logging.WARNING)
    # ray.init puts its own SIGTERM handler in place, which aborts the process: ours exits through the
    # `finally` blocks instead (temporary folders removed, the run's lease released).
    tempdirs.exit_cleanly_on_sigterm()
