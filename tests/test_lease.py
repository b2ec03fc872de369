"""One driver per run: the lease in the run's storage folder (no Ray needed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from jobs import ROOT
from ltx_ray.config import load_config
from ltx_ray.errors import RunLeaseError
from ltx_ray.lease import LEASE_FILE, Lease, LeaseHeld, hold, process_identity
from ltx_ray.run_store import RunStore


def _store(tmp_path, *overrides) -> RunStore:
    job, _ = load_config(ROOT / "conf" / "demo.yaml",
                         [f"storage.storage_path={tmp_path}", "storage.run_name=leased", *overrides])
    return RunStore(job.storage, "leased")


def test_a_live_lease_refuses_a_second_driver_naming_the_first(tmp_path):
    store = _store(tmp_path)
    with hold(store) as first:
        on_disk = json.loads((tmp_path / "leased" / LEASE_FILE).read_text())
        assert on_disk["owner"] == first["owner"] and on_disk["pid"] == first["pid"]
        with pytest.raises(RunLeaseError) as refused, hold(store):
            pass
    message = str(refused.value)
    assert message.startswith("storage.run_name: run 'leased' is held by another driver")
    assert f"owner {first['owner']}, pid {first['pid']} on {first['host']}" in message
    assert not (tmp_path / "leased" / LEASE_FILE).exists()  # released when the block ends


def test_a_lease_whose_heartbeat_stopped_is_taken_over(tmp_path, caplog):
    store = _store(tmp_path, "storage.lease_timeout_s=5")
    stale = {"owner": "dead-driver", "host": "node-7", "pid": 4242, "started": "2026-12-01T00:00:00+00:00",
             "heartbeat": time.time() - 6}
    (tmp_path / "leased").mkdir()
    (tmp_path / "leased" / LEASE_FILE).write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="ltx_ray.lease"), hold(store) as mine:
        assert json.loads((tmp_path / "leased" / LEASE_FILE).read_text())["owner"] == mine["owner"]
    assert "taking over the lease of run leased from dead-driver (pid 4242 on node-7)" in caplog.text


def test_the_heartbeat_keeps_a_long_run_s_lease_live(tmp_path):
    store = _store(tmp_path, "storage.lease_timeout_s=5")
    with hold(store):
        time.sleep(6)  # longer than the timeout: only the heartbeat keeps it
        with pytest.raises(LeaseHeld):
            Lease(store).acquire()


def test_of_two_drivers_that_both_found_the_run_free_exactly_one_holds_it(tmp_path):
    leases = [Lease(_store(tmp_path)) for _ in range(2)]
    outcomes: list = [None, None]

    def take(i: int) -> None:
        try:
            leases[i].acquire()
            outcomes[i] = "held"
        except LeaseHeld:
            outcomes[i] = "refused"

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held", "refused"]
    winner = leases[outcomes.index("held")]
    assert json.loads((tmp_path / "leased" / LEASE_FILE).read_text())["owner"] == winner.record["owner"]
    winner.release()


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def _fresh_record(pid: int, **changes) -> dict:
    """A lease record as a driver on this machine with `pid` writes it, its heartbeat just renewed."""
    identity = process_identity(os.getpid())
    assert identity, "this test needs Linux /proc"
    return {"owner": "other-driver", "host": socket.gethostname(), "pid": pid, **identity,
            "started": "2026-12-01T00:00:00+00:00", "heartbeat": time.time(), **changes}


def test_the_lease_of_a_driver_killed_outright_on_this_machine_is_taken_over_at_once(tmp_path, caplog):
    store = _store(tmp_path)  # storage.lease_timeout_s: 60 s
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from ltx_ray.config.schema import StorageConfig\n"
         "from ltx_ray.lease import hold\n"
         "from ltx_ray.run_store import RunStore\n"
         "with hold(RunStore(StorageConfig(storage_path=sys.argv[1]), 'leased')):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(600)\n", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        dead = json.loads((tmp_path / "leased" / LEASE_FILE).read_text())
        holder.send_signal(signal.SIGKILL)  # as `kill -9` or the OOM killer: no `finally` runs
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert (tmp_path / "leased" / LEASE_FILE).exists() and dead["pid"] == holder.pid
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="ltx_ray.lease"), hold(store) as mine:
        assert json.loads((tmp_path / "leased" / LEASE_FILE).read_text())["owner"] == mine["owner"]
    assert time.monotonic() - started < 30  # not the 60 s of storage.lease_timeout_s
    assert (f"taking over the lease of run leased from {dead['owner']} (pid {holder.pid} on {dead['host']}): that "
            "process has ended") in caplog.text


def test_a_lease_whose_pid_now_belongs_to_a_later_process_is_taken_over_at_once(tmp_path, caplog):
    store = _store(tmp_path)
    # Recorded with this (live) process's pid but an earlier start: the driver ended and its pid was reused.
    reused = _fresh_record(os.getpid(), pid_start=process_identity(os.getpid())["pid_start"] - 1)
    (tmp_path / "leased").mkdir()
    (tmp_path / "leased" / LEASE_FILE).write_text(json.dumps(reused))
    with caplog.at_level("WARNING", logger="ltx_ray.lease"), hold(store):
        pass
    assert f"from other-driver (pid {os.getpid()} on {socket.gethostname()}): that process has ended" in caplog.text


@pytest.mark.parametrize("elsewhere", [{"host": "node-7"}, {"boot_id": "0f6c2a3e-another-machine-same-name"}],
                         ids=["another host", "another machine of the same name"])
def test_a_lease_held_on_another_machine_waits_for_its_timeout_though_its_pid_is_free_here(tmp_path, elsewhere):
    store = _store(tmp_path)
    (tmp_path / "leased").mkdir()
    (tmp_path / "leased" / LEASE_FILE).write_text(json.dumps(_fresh_record(_dead_pid(), **elsewhere)))
    with pytest.raises(RunLeaseError, match="is held by another driver"), hold(store):
        pass
