"""One driver per run: a lease in the run's storage folder.

`<storage_path>/<run>/_LEASE.json` names the driver that holds the run (an owner id, host, pid, start
time, and what tells its process apart on that host) and carries a heartbeat it renews every quarter of
`storage.lease_timeout_s`. A second driver for the same run (a retried RayJob while the first still runs,
a double click) finds a live lease and stops with exit 2 naming its holder. The lease of a driver that
died is taken over: at once when the driver ran on this machine and its process is gone (killed outright
by `kill -9` or the OOM killer, and the command run again), otherwise once its heartbeat is older than the
timeout (another machine's processes cannot be seen from here).

Object stores have no atomic create, so taking a lease is write, wait, read back: of two drivers that
both found the run free, the later write wins and both read the same owner after the wait (`SETTLE_S`,
far longer than the gap between one driver's check and its write).

The same lease guards the build of one latent cache key, which the runs of a storage share
(`ltx_ray.latents.cache`).
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
from pathlib import Path
from typing import Iterator

from ltx_ray.errors import Problem, RunLeaseError
from ltx_ray.run_store import LEASE_FILE, RunStore

log = logging.getLogger(__name__)

SETTLE_S = 2.0
__all__ = ["LEASE_FILE", "Lease", "LeaseHeld", "hold", "has_ended", "process_identity"]


class LeaseHeld(Exception):
    """The lease has a live holder: `holder` is its record, `age` the seconds since its heartbeat."""

    def __init__(self, holder: dict, age: float):
        super().__init__(f"held by {holder.get('owner', '?')} (pid {holder.get('pid', '?')} on "
                         f"{holder.get('host', '?')}), heartbeat {age:.0f} s ago")
        self.holder, self.age = holder, age


@contextmanager
def hold(store: RunStore) -> Iterator[dict]:
    """Hold the run's lease for the duration of the block (raises RunLeaseError when another driver holds it)."""
    lease = Lease(store)
    try:
        lease.acquire()
    except LeaseHeld as held:
        h = held.holder
        raise RunLeaseError(Problem(
            "storage.run_name",
            f"run {store.run!r} is held by another driver (owner {h.get('owner', '?')}, pid {h.get('pid', '?')} "
            f"on {h.get('host', '?')}, started {h.get('started', '?')}, heartbeat {held.age:.0f} s ago; lease "
            f"{lease.uri}). Wait for it to finish, stop it, or use another storage.run_name; a lease not renewed "
            f"for storage.lease_timeout_s={lease.timeout:g} s is taken over")) from None
    try:
        yield lease.record
    finally:
        lease.release()


class Lease:
    """A lease file in storage (the run's, unless `uri` names another): one live holder at a time."""

    def __init__(self, store: RunStore, uri: str | None = None, label: str | None = None):
        self.store = store
        self.uri = uri or store.lease
        self.label = label or f"run {store.run}"  # what the log calls the leased thing
        self.timeout = float(store.storage.lease_timeout_s)
        now = time.time()
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       **process_identity(os.getpid()), "started": _iso(now), "heartbeat": now}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease, or raise `LeaseHeld` naming its live holder."""
        current = self._read()
        if current is not None:
            age = max(0.0, time.time() - float(current.get("heartbeat", 0)))
            if has_ended(current):
                log.warning("taking over the lease of %s from %s (pid %s on %s): that process has ended",
                            self.label, current.get("owner"), current.get("pid"), current.get("host"))
            elif age < self.timeout:
                raise LeaseHeld(current, age)
            else:
                log.warning("taking over the lease of %s from %s (pid %s on %s): its heartbeat is %.0f s old",
                            self.label, current.get("owner"), current.get("pid"), current.get("host"), age)
        self._write()
        time.sleep(SETTLE_S)
        current = self._read()
        if current is None or current.get("owner") != self.record["owner"]:
            # Another driver wrote after this one: the later write holds the lease.
            current = current or {}
            raise LeaseHeld(current, max(0.0, time.time() - float(current.get("heartbeat", 0))))
        self._thread = threading.Thread(target=self._beat, name="ltx-ray-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self._read()
            if current is not None and current.get("owner") == self.record["owner"]:
                self.store.delete(self.uri)
        except Exception as exc:  # noqa: BLE001 - a lease left behind expires by itself
            log.warning("could not release the lease %s (%s); it expires in %.0f s", self.uri, exc, self.timeout)

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                current = self._read()
                if current is not None and current.get("owner") != self.record["owner"]:
                    log.error("%s: the lease %s was taken over by %s (pid %s on %s); this driver's heartbeat "
                              "stopped for longer than storage.lease_timeout_s", self.label, self.uri,
                              current.get("owner"), current.get("pid"), current.get("host"))
                    return
                self.record["heartbeat"] = time.time()
                self._write()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease lives timeout_s
                log.warning("renewing the lease %s failed: %s", self.uri, exc)

    def _read(self) -> dict | None:
        if not self.store.is_file(self.uri):
            return None
        try:
            return json.loads(self.store.read(self.uri))
        except ValueError:  # half-written by a driver that died mid-write: as good as none
            return None

    def _write(self) -> None:
        self.store.make_dir(self.uri.rsplit("/", 1)[0])
        self.store.write(self.uri, json.dumps(self.record).encode())


def process_identity(pid: int) -> dict:
    """What tells process `pid` apart from any other, ever, on this machine: the machine's boot, the pid
    namespace it was seen in and its start time (Linux `/proc`; {} where there is none)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return {}
    stat = _stat(pid)
    return {"boot_id": boot, "pid_ns": namespace, "pid_start": stat[1]} if stat else {}


def has_ended(holder: dict) -> bool:
    """Whether a lease holder's process has certainly ended: it ran on this machine, since its last boot, in
    this pid namespace, and its pid is now free, a zombie, or another process's (a later start time).

    Anything less certain (another host, a record without the identity, a process this one may not read)
    is not ended: its lease then lives until its heartbeat is `storage.lease_timeout_s` old.
    """
    here = process_identity(os.getpid())
    if not here or holder.get("host") != socket.gethostname():
        return False
    if holder.get("boot_id") != here["boot_id"] or holder.get("pid_ns") != here["pid_ns"]:
        return False  # another machine under the same name (or this one rebooted), or another container
    pid, started = holder.get("pid"), holder.get("pid_start")
    if not isinstance(pid, int) or pid <= 0 or started is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: alive, unless /proc says it is a zombie or a later process
    stat = _stat(pid)
    if stat is None:
        return False
    state, start = stat
    return state in ("Z", "X") or start != started


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc/<pid>/stat; None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': count from the last one.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
