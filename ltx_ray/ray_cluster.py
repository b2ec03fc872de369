"""Joining the Ray cluster: the one call every command that uses Ray makes first."""

from __future__ import annotations

import logging
import os
import socket

import ray
from ray._private import services

from ltx_ray import console, tempdirs
from ltx_ray.config.schema import JobConfig

log = logging.getLogger(__name__)


def init_ray(job: JobConfig) -> None:
    """Join the cluster in RAY_ADDRESS (or the one `ray job submit` runs in), else the Ray instance already
    running on this machine, else start a local one; say in one line which."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or running_instance()
    # Ray's own logging on the console: warnings (`--verbose`: INFO too); its log files keep every level.
    level = console.library_level()
    if address:
        ray.init(address=address, logging_level=level)
        log.info("joined the Ray instance at %s", address)
    else:
        # A local instance: decode tasks, encoder actors and training workers are mostly
        # waiting on each other, so offer a few more logical CPUs than cores.
        cpus = max(4, os.cpu_count() or 1)
        ray.init(num_cpus=cpus, logging_level=level)
        log.info("started a local Ray instance (%d CPUs); it stops when this command ends", cpus)
    # ray.init puts its own SIGTERM handler in place, which aborts the process: ours exits through the
    # `finally` blocks instead (temporary folders removed, the run's lease released).
    tempdirs.exit_cleanly_on_sigterm()


def running_instance() -> str | None:
    """The GCS address of the Ray instance a plain `ray.init()` would join on this machine, or None.

    That is the last one `ray start` recorded in `<RAY_TMPDIR or /tmp>/ray/ray_current_cluster` (`ray stop`
    removes it). Ray has no public call for it, so ask the function `ray.init()` itself resolves its address
    with (tests/test_ray_join.py joins a real `ray start --head` through it). Only when there is none may a
    local instance be started: joining one, `ray.init` refuses `num_cpus`. A recorded instance that no longer
    answers (its processes killed without `ray stop`) counts as none, where `ray.init` would wait on it for
    minutes.
    """
    address = services.canonicalize_bootstrap_address(None)
    if address is None:
        return None
    host, port = services.parse_address(address)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        log.warning("the Ray instance last started on this machine (%s) does not answer; starting a local one",
                    address)
        return None
    return address
