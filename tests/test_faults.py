"""Ordinary cluster accidents around the driver, on the tiny CPU job: two drivers on one run (one trains, the
other is refused with exit 2 and one sentence), a stopped command, and what a finished run leaves behind.

The loop's own accidents (a killed run, damaged checkpoints, a storage outage, a full disk) are tested without
Ray in test_trainer_faults.py; the damaged latent cache is in test_pipeline.py, credentialed URLs in
test_data_fetch.py, over-long names in test_data_archive.py, the lease's rules in test_lease.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from jobs import ROOT, tiny_command
from ltx_ray.train.outputs import LORA_NAME


def _checkpoints(run_dir: Path) -> dict[int, dict]:
    """Every checkpoint folder of a local run: step -> its trainer state, after checking it is complete."""
    out = {}
    for folder in sorted((run_dir / "checkpoints").glob("step_*")):
        manifest = json.loads((folder / "_MANIFEST.json").read_text())  # none may lack it
        for name, entry in manifest["files"].items():
            assert (folder / name).stat().st_size == entry["size"], f"{folder.name}/{name}"
        out[manifest["step"]] = json.loads((folder / "progress.json").read_text())
    return out


def _start(args: list[str], out: Path) -> tuple[subprocess.Popen, Path]:
    """Start a command whose output goes to files (a pipe nobody reads would stall it once full)."""
    env = {**os.environ, "RAY_ADDRESS": os.environ["RAY_ADDRESS"]}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout", "w") as stdout, open(out / "stderr", "w") as stderr:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True), out


def _finish(process: subprocess.Popen, out: Path) -> tuple[int, str, str]:
    code = process.wait(timeout=600)
    return code, (out / "stdout").read_text(), (out / "stderr").read_text()


def test_two_drivers_started_together_on_one_run_one_trains_and_the_other_is_refused(tmp_path, tiny_bundle,
                                                                                     sample_dataset, ray_cluster):
    runs = tmp_path / "runs"
    # A latent cache of its own (the default place, `<storage_path>/latents`): what the two leave in it is checked.
    args = tiny_command("train", tiny_bundle, sample_dataset, str(runs), "twice", "checkpoint.every=25",
                        "storage.latent_cache_path=''")
    drivers = [_start(args, tmp_path / f"driver-{i}") for i in range(2)]
    results = [_finish(*d) for d in drivers]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    refused = next(err for code, _, err in results if code == 2)
    assert "storage.run_name: run 'twice' is held by another driver (owner " in refused
    assert "Traceback" not in refused

    run_dir = runs / "twice"
    (cache,) = (runs / "latents").iterdir()
    marker = json.loads((cache / "_COMPLETE.json").read_text())
    assert marker["pairs"] == 3  # the sample archive's pairs, once
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [marker["writer"]]  # one writer's files
    states = _checkpoints(run_dir)
    assert sorted(states) == [50, 75, 100] and all(s["resumed_from"] == 0 for s in states.values())
    assert not (run_dir / "_LEASE.json").exists()  # released on the way out
    # The LoRA published is the one the run trained, through its last step.
    published = load_file(str(run_dir / "outputs" / LORA_NAME))
    trained = load_file(str(run_dir / "checkpoints" / "step_000000100" / "lora.safetensors"))
    assert published.keys() == trained.keys() and all(torch.equal(published[k], trained[k]) for k in trained)


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
