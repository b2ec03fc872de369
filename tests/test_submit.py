"""`ray job submit` end to end: a real Ray head on 127.0.0.1, the tiny demo job, outputs in storage.

This test starts its own Ray head (the way an operator's cluster runs),
separate from the session's test cluster, and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head` on 127.0.0.1 with free ports; yields the dashboard (job API) address."""
    gcs, dashboard = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    start = [
        str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
        f"--temp-dir={tmp_path / 'ray'}", "--disable-usage-stats",
    ]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([str(VENV_BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


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
    ]
    env = {**env, "RAY": str(VENV_BIN / "ray"), "PYTHON": sys.executable}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    deadline, status = time.time() + 900, ""
    while time.time() < deadline:
        status = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "status", "--address", address, submission],
            env=env, capture_output=True, text=True, timeout=60,
        ).stdout
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = subprocess.run([str(VENV_BIN / "ray"), "job", "logs", "--address", address, submission],
                          env=env, capture_output=True, text=True, timeout=60).stdout
    assert "SUCCEEDED" in status, status + logs[-4000:]

    outputs = runs / "submitted" / "outputs"
    for name in ("ic_lora_av2av.safetensors", "config.json", "validation_reel.mp4"):
        assert (outputs / name).is_file(), name
    result = json.loads(logs[logs.index("{\n"):logs.rindex("}") + 1])
    assert result["lora_file"] == str(outputs / "ic_lora_av2av.safetensors")
    assert result["billable_units"] == 100
