"""One driver per run: the lease in the run's storage folder (no Ray needed)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from jobs import ROOT
from ltx_ray.config import load_config
from ltx_ray.errors import RunLeaseError
from ltx_ray.lease import LEASE_FILE, Lease, hold


def _job(tmp_path, *overrides):
    job, _ = load_config(ROOT / "conf" / "demo.yaml",
                         [f"storage.storage_path={tmp_path}", "storage.run_name=leased", *overrides])
    return job


def test_a_live_lease_refuses_a_second_driver_naming_the_first(tmp_path):
    job = _job(tmp_path)
    with hold(job, "leased") as first:
        on_disk = json.loads((tmp_path / "leased" / LEASE_FILE).read_text())
        assert on_disk["owner"] == first["owner"] and on_disk["pid"] == first["pid"]
        with pytest.raises(RunLeaseError) as refused:
            Lease(job, "leased").acquire()
    message = str(refused.value)
    assert message.startswith("storage.run_name: run 'leased' is held by another driver")
    assert f"owner {first['owner']}, pid {first['pid']} on {first['host']}" in message
    assert not (tmp_path / "leased" / LEASE_FILE).exists()  # released when the block ends


def test_a_lease_whose_heartbeat_stopped_is_taken_over(tmp_path, caplog):
    job = _job(tmp_path, "storage.lease_timeout_s=5")
    stale = {"owner": "dead-driver", "host": "node-7", "pid": 4242, "started": "2026-12-01T00:00:00+00:00",
             "heartbeat": time.time() - 6}
    (tmp_path / "leased").mkdir()
    (tmp_path / "leased" / LEASE_FILE).write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="ltx_ray.lease"), hold(job, "leased") as mine:
        assert json.loads((tmp_path / "leased" / LEASE_FILE).read_text())["owner"] == mine["owner"]
    assert "taking over the lease of run leased from dead-driver (pid 4242 on node-7)" in caplog.text


def test_the_heartbeat_keeps_a_long_run_s_lease_live(tmp_path):
    job = _job(tmp_path, "storage.lease_timeout_s=5")
    with hold(job, "leased"):
        time.sleep(6)  # longer than the timeout: only the heartbeat keeps it
        with pytest.raises(RunLeaseError):
            Lease(job, "leased").acquire()


def test_of_two_drivers_that_both_found_the_run_free_exactly_one_holds_it(tmp_path):
    job = _job(tmp_path)
    leases = [Lease(job, "leased") for _ in range(2)]
    outcomes: list = [None, None]

    def take(i: int) -> None:
        try:
            leases[i].acquire()
            outcomes[i] = "held"
        except RunLeaseError:
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
