"""One driver per run: a lease in the run's storage folder.

`<storage_path>/<run>/_LEASE.json` names the driver that holds the run (an
owner id, host, pid, start time) and carries a heartbeat it renews every
quarter of `storage.lease_timeout_s`. A second driver for the same run (a
retried RayJob while the first still runs, a double click) finds a live lease
and stops with exit 2 naming its holder; a lease whose heartbeat is older than
the timeout belongs to a driver that died, and is taken over.

Object stores have no atomic create, so taking a lease is write, wait, read
back: of two drivers that both found the run free, the later write wins and
both read the same owner after the wait (`SETTLE_S`, far longer than the
gap between one driver's check and its write).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import pyarrow.fs as pafs

from ltx_ray.config.schema import JobConfig
from ltx_ray.errors import Problem, RunLeaseError
from ltx_ray.storage import read_bytes, resolve_filesystem, retrying, storage_uri, write_bytes

log = logging.getLogger(__name__)

LEASE_FILE = "_LEASE.json"
SETTLE_S = 2.0


@contextmanager
def hold(job: JobConfig, run: str) -> Iterator[dict]:
    """Hold the run's lease for the duration of the block (raises RunLeaseError when another driver holds it)."""
    lease = Lease(job, run)
    lease.acquire()
    try:
        yield lease.record
    finally:
        lease.release()


class Lease:
    def __init__(self, job: JobConfig, run: str):
        self.job, self.run = job, run
        self.uri = storage_uri(job.storage, run, LEASE_FILE)
        self.fs, self.path = resolve_filesystem(self.uri, job.storage)
        self.timeout = float(job.storage.lease_timeout_s)
        now = time.time()
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": _iso(now), "heartbeat": now}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        current = self._read()
        if current is not None:
            self._refuse_if_live(current)
            log.warning("taking over the lease of run %s from %s (pid %s on %s): its heartbeat is %.0f s old",
                        self.run, current.get("owner"), current.get("pid"), current.get("host"),
                        time.time() - float(current.get("heartbeat", 0)))
        self._write()
        time.sleep(SETTLE_S)
        current = self._read()
        if current is None or current.get("owner") != self.record["owner"]:
            self._refuse_if_live(current or {}, raced=True)
        self._thread = threading.Thread(target=self._beat, name="ltx-ray-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self._read()
            if current is not None and current.get("owner") == self.record["owner"]:
                self.fs.delete_file(self.path)
        except Exception as exc:  # noqa: BLE001 - a lease left behind expires by itself
            log.warning("could not release the lease %s (%s); it expires in %.0f s", self.uri, exc, self.timeout)

    def _refuse_if_live(self, current: dict, raced: bool = False) -> None:
        age = time.time() - float(current.get("heartbeat", 0))
        if raced or age < self.timeout:
            raise RunLeaseError(Problem(
                "storage.run_name",
                f"run {self.run!r} is held by another driver (owner {current.get('owner', '?')}, pid "
                f"{current.get('pid', '?')} on {current.get('host', '?')}, started {current.get('started', '?')}, "
                f"heartbeat {max(0.0, age):.0f} s ago; lease {self.uri}). Wait for it to finish, stop it, or use "
                f"another storage.run_name; a lease not renewed for storage.lease_timeout_s={self.timeout:g} s is "
                "taken over"))

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                current = self._read()
                if current is not None and current.get("owner") != self.record["owner"]:
                    log.error("run %s: the lease %s was taken over by %s (pid %s on %s); this driver's heartbeat "
                              "stopped for longer than storage.lease_timeout_s", self.run, self.uri,
                              current.get("owner"), current.get("pid"), current.get("host"))
                    return
                self.record["heartbeat"] = time.time()
                self._write()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease lives timeout_s
                log.warning("renewing the lease %s failed: %s", self.uri, exc)

    def _read(self) -> dict | None:
        exists = retrying(f"reading {self.uri}", lambda: self.fs.get_file_info(self.path).type == pafs.FileType.File,
                          self.job.storage, where=self.uri)
        if not exists:
            return None
        try:
            return json.loads(read_bytes(self.fs, self.path, self.job.storage, self.uri))
        except ValueError:  # half-written by a driver that died mid-write: as good as none
            return None

    def _write(self) -> None:
        retrying(f"writing {self.uri}", lambda: self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True),
                 self.job.storage, where=self.uri)
        write_bytes(self.fs, self.path, json.dumps(self.record).encode(), self.job.storage, self.uri)

def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
