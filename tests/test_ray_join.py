"""A command run without RAY_ADDRESS joins the Ray instance already running on the machine, as `ray.init()` does.

The test starts its own `ray start --head` (free ports, its own Ray temp dir given to both the head and the
command through RAY_TMPDIR, where Ray records and looks up "the instance on this machine"), so neither the
session's test cluster (which records itself in the default temp dir) nor another Ray on the machine is
joined by mistake, and this head is never seen by them. It is stopped by its process group: `ray stop`
would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jobs import ROOT, free_port, tiny_command

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head_here():
    """`ray start --head` with 4 CPUs, recorded in its own Ray temp dir; yields (GCS port, env for a command)."""
    # Short: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
    tmp = tempfile.mkdtemp(prefix="rj-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tmp
    # Ray 2.60's token authentication, the head's and the command's token given to both: otherwise each reads
    # ~/.ray/auth_token when it starts, which other Rays on the machine may write or remove in between.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    head = None
    try:
        # A head whose raylet takes over 30 s to register (Ray's fixed limit; a busy machine) gives up:
        # start another, on fresh ports.
        for _ in range(3):
            head, gcs, log = _start_head(tmp, env)
            if _up(head, tmp):
                break
            head.wait()
        else:
            pytest.fail("ray start --head exited three times; the last:\n" + log.read_text()[-3000:])
        yield gcs, env
    finally:
        if head is not None and head.poll() is None:
            # Nothing of this head outlives the test, so no orderly shutdown (its own takes ~30 s): every process
            # of its group at once, then those it started outside the group (they name its temp dir).
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=60)
        subprocess.run(["pkill", "-9", "-f", tmp], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _start_head(tmp: str, env: dict) -> tuple[subprocess.Popen, int, Path]:
    gcs, dashboard, metrics, agent_http, agent_grpc, runtime_env, client = (free_port() for _ in range(7))
    log = Path(tmp) / "head.log"
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--num-cpus=4", f"--temp-dir={tmp}/ray", "--disable-usage-stats", "--include-dashboard=false",
            # Every port explicit and free: the session's test cluster and other Rays hold Ray's default ones.
            f"--dashboard-port={dashboard}", f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--ray-client-server-port={client}",
        ],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return head, gcs, log


def _up(head: subprocess.Popen, tmp: str) -> bool:
    """Wait until the head has recorded itself (it does once its node is up); False if it exited first."""
    recorded = Path(tmp) / "ray" / "ray_current_cluster"
    deadline = time.time() + 180
    while not recorded.exists():
        if head.poll() is not None:
            return False
        assert time.time() < deadline, "ray start --head did not come up in 180 s"
        time.sleep(1)
    return True


def test_preprocess_without_ray_address_joins_the_ray_instance_running_on_the_machine(
    ray_head_here, tmp_path, tiny_bundle, sample_dataset
):
    gcs_port, env = ray_head_here
    command = tiny_command("preprocess", tiny_bundle, sample_dataset, str(tmp_path / "runs"), "beside")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)

    assert proc.returncode == 0, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    joined = re.search(r"joined the Ray instance at (\S+):(\d+)", err)
    assert joined and int(joined.group(2)) == gcs_port, err[-4000:]
    assert "started a local Ray instance" not in err
    # The head's own record of the drivers that connected to it: one log per driver process.
    session_logs = Path(env["RAY_TMPDIR"]) / "ray" / "session_latest" / "logs"
    drivers = sorted(p.name for p in session_logs.glob("python-core-driver-*.log"))
    assert [name for name in drivers if name.endswith(f"_{proc.pid}.log")], drivers


def test_an_instance_recorded_on_the_machine_that_no_longer_answers_counts_as_none(tmp_path, monkeypatch, caplog):
    from ltx_ray.ray_cluster import running_instance

    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert running_instance() is None
    assert "does not answer; starting a local one" in caplog.text
