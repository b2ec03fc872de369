"""`ray job submit` end to end: a real Ray head on 127.0.0.1, the tiny demo job, outputs in storage.

This test starts its own Ray head (the way an operator's cluster runs),
separate from the session's test cluster, and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jobs import ROOT, free_port
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    """`ray start --head` on 127.0.0.1 with free ports; yields the dashboard (job API) address.

    The head runs in the foreground (`--block`) in its own process group, so that stopping it
    cannot touch the session's test cluster (`ray stop` would stop every Ray on the machine).
    """
    gcs, dashboard, agent_http, agent_grpc, metrics, runtime_env, client = (free_port() for _ in range(7))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    # Ray's token authentication, as an operator sets it up: the head and the CLI share a token.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # The node's image says CUDA, as GPU images do (and as DeepSpeed guesses wherever torch sees a
    # GPU): the CPU demo job must still train on DeepSpeed's CPU accelerator, because the job sets it.
    env["DS_ACCELERATOR"] = "cuda"
    # A short temp dir: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
            # Every port explicit and free: the session's test cluster holds Ray's default ones.
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
            f"--ray-client-server-port={client}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while True:
            assert head.poll() is None, "ray start --head exited"
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=5)
                break
            except urllib.error.HTTPError:
                break  # it answers (Ray's token auth refuses anonymous requests): it is up
            except OSError:
                assert time.time() < deadline, "the Ray head's job API did not come up"
                time.sleep(1)
        yield address, env
    finally:
        # Nothing of this head outlives the test, so no orderly shutdown (its own takes ~30 s): every process
        # of its group at once.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        # Processes the head started outside its group (workers, job supervisors) know its temp dir.
        subprocess.run(["pkill", "-9", "-f", temp_dir], capture_output=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_demo_job_submitted_with_ray_job_submit_succeeds_and_writes_outputs(ray_head, tmp_path, tiny_bundle,
                                                                           sample_dataset):
    address, env = ray_head
    runs = tmp_path / "runs"
    submission = f"ltx-ray-test-{os.getpid()}"
    cmd = [
        str(ROOT / "scripts" / "submit.sh"), "--address", address, "--run-name", "submitted",
        "--submission-id", submission, "--no-wait", "--no-secrets", "conf/demo.yaml",
        f"storage.storage_path={runs}",
        f"request.training_data_url={sample_dataset.archive}",
        f"model.checkpoint={tiny_bundle.checkpoint}", f"model.text_encoder={tiny_bundle.gemma_dir}",
        f"request.validation=[{{prompt: p, reference_video_url: '{sample_dataset.validation_ref}'}}]",
        "cluster.resources_per_worker={CPU: 1}",
        # The session's warm latent cache (tests/jobs.py): this test is about the submission, not preprocessing.
        f"storage.latent_cache_path={Path(sample_dataset.archive).parent / 'latents'}",
    ]
    env = {**env, "RAY": str(VENV_BIN / "ray"), "PYTHON": sys.executable}
    for _ in range(30):
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        # A head that has just started may not have registered its node's job agent yet.
        if "No available agent" not in res.stdout + res.stderr:
            break
        time.sleep(3)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    deadline, status = time.time() + 900, ""
    while time.time() < deadline:
        done = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "status", "--address", address, submission],
            env=env, capture_output=True, text=True, timeout=60,
        )
        status = (done.stdout + done.stderr).lower()  # e.g. "Job 'x' succeeded", logged to stderr
        if any(s in status for s in ("succeeded", "failed", "was stopped")):
            break
        time.sleep(3)
    done = subprocess.run([str(VENV_BIN / "ray"), "job", "logs", "--address", address, submission],
                          env=env, capture_output=True, text=True, timeout=60)
    logs = done.stdout + done.stderr
    assert "succeeded" in status, status + logs[-4000:]

    outputs = runs / "submitted" / "outputs"
    for name in ("ic_lora_av2av.safetensors", "config.json", "validation_reel.mp4"):
        assert (outputs / name).is_file(), name
    result, _ = json.JSONDecoder().raw_decode(logs, logs.index('{\n  "run_name"'))
    assert result["lora_file"] == str(outputs / "ic_lora_av2av.safetensors")
    assert result["billable_units"] == 100
