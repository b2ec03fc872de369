"""Ordinary cluster accidents around the driver, on the tiny CPU job: a stopped command, and what a finished run
leaves behind. Two drivers on one run (one trains, the other is refused with exit 2 and one sentence) and a
killed driver's re-run are in test_train.py.

The loop's own accidents (a killed run, damaged checkpoints, a storage outage, a full disk) are tested without
Ray in test_trainer_faults.py; the damaged latent cache is in test_pipeline.py, credentialed URLs in
test_data_fetch.py, over-long names in test_data_archive.py, the lease's rules in test_lease.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


from jobs import ROOT, tiny_command


def _start(args: list[str], out: Path) -> tuple[subprocess.Popen, Path]:
    """Start a command whose output goes to files (a pipe nobody reads would stall it once full)."""
    env = {**os.environ, "RAY_ADDRESS": os.environ["RAY_ADDRESS"]}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout", "w") as stdout, open(out / "stderr", "w") as stderr:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True), out


def _finish(process: subprocess.Popen, out: Path) -> tuple[int, str, str]:
    code = process.wait(timeout=600)
    return code, (out / "stdout").read_text(), (out / "stderr").read_text()


def test_a_stopped_command_removes_its_temporary_folders_and_releases_its_lease(tmp_path, tiny_bundle,
                                                                                sample_dataset, ray_cluster):
    import tempfile

    runs = tmp_path / "runs"
    # A cache of its own, cold: the command is still preprocessing when it is stopped.
    args = tiny_command("preprocess", tiny_bundle, sample_dataset, str(runs), "stopped", "storage.latent_cache_path=''")
    command, out = _start(args, tmp_path / "stopped")
    pattern = f"ltx-ray-prep-{command.pid}-*"
    deadline = time.time() + 300
    while not list(Path(tempfile.gettempdir()).glob(pattern)):
        assert command.poll() is None and time.time() < deadline, "the command made no working folder"
        time.sleep(0.1)
    assert (runs / "stopped" / "_LEASE.json").exists()
    command.send_signal(signal.SIGTERM)  # `kill`, `ray job stop`, a pod's termination
    code, _, err = _finish(command, out)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert not list(Path(tempfile.gettempdir()).glob(pattern))
    assert not (runs / "stopped" / "_LEASE.json").exists()


def test_a_finished_run_leaves_no_temporary_folders(reference_run):
    import tempfile

    from ltx_ray.sample.preview import local_preview_dir

    # A folder of a live process would be a leak (the run is over); those of killed ones are `sweep`'s.
    tmp = Path(tempfile.gettempdir())
    left = [p.name for kind in ("val", "prep", "pair", "ckpt") for p in tmp.glob(f"ltx-ray-{kind}-*-*")
            if _alive(int(p.name.split("-")[3]))]
    assert left == []
    assert not local_preview_dir("reference").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
