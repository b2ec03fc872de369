"""Ordinary cluster accidents, on the tiny CPU job: each run goes on (or resumes) with nothing lost, or stops
with exit 2 and one sentence naming the culprit, leaving nothing half-written that looks complete.

Storage blips (the S3 server stopped and started again), damaged checkpoints, two drivers on one run, a full
disk and a killed command. The damaged latent cache is in test_pipeline.py, credentialed URLs in
test_data_fetch.py, over-long names in test_data_archive.py, the lease's rules in test_lease.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import load, load_file

from fixtures_cluster import s3_outage
from jobs import ROOT, s3_overrides, tiny_command, tiny_job
from ltx_ray.train.driver import run_job
from ltx_ray.train.outputs import LORA_NAME

STEPS = 100


def _assert_same_lora(got: dict, reference_run) -> None:
    expected = load_file(reference_run[1]["lora_file"])
    assert got.keys() == expected.keys()
    for key in expected:  # bit for bit: same samples, noise and optimizer state whatever happened
        assert torch.equal(got[key], expected[key]), key


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


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": os.environ["RAY_ADDRESS"]}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def test_a_20_s_storage_outage_mid_run_is_ridden_out_without_losing_a_step(tiny_bundle, sample_dataset, s3_server,
                                                                           s3_bucket, reference_run):
    job = tiny_job(tiny_bundle, sample_dataset, f"s3://{s3_bucket}/runs", "blip", "train.checkpoint_every=25",
                   *s3_overrides(s3_server))
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = lambda: [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]  # noqa: E731
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.update(result=run_job(job)), daemon=True)
    driver.start()
    deadline = time.time() + 600
    while not any(k.endswith("_MANIFEST.json") for k in keys()):
        assert driver.is_alive() and time.time() < deadline, "the run wrote no checkpoint"
        time.sleep(0.2)
    # Mid-run, between the step-25 and step-50 checkpoints: every storage call of the run fails for 20 s.
    s3_outage(20).join()
    driver.join(timeout=600)
    assert not driver.is_alive() and "result" in outcome, "the run did not finish"

    state = json.loads(s3.get_object(Bucket=s3_bucket, Key="runs/blip/checkpoints/step_000000100/progress.json")
                       ["Body"].read())
    # Ridden out in the attempt that met it: no restart, no step redone.
    assert state["step"] == STEPS and state["resumed_from"] == 0
    steps = sorted(int(k.split("step_")[1][:9]) for k in keys() if k.endswith("_MANIFEST.json"))
    assert steps == [50, 75, 100]  # every interval checkpoint was written; pruning kept three
    _assert_same_lora(load(s3.get_object(Bucket=s3_bucket, Key=f"runs/blip/outputs/{LORA_NAME}")["Body"].read()),
                      reference_run)


def test_damaged_newest_checkpoints_are_named_and_the_run_resumes_from_the_last_good_one(tmp_path, tiny_bundle,
                                                                                         sample_dataset, reference_run):
    _, _, reference_runs = reference_run
    runs = tmp_path / "runs"
    shutil.copytree(reference_runs / "reference", runs / "reference")
    run_dir = runs / "reference"
    # Step 100: a file cut short (what a killed upload or a full disk leaves). Step 75: one byte flipped,
    # same size (bit rot), found only by its checksum.
    newest = run_dir / "checkpoints" / "step_000000100" / "train_state.safetensors"
    full = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[: full // 2])
    lora = run_dir / "checkpoints" / "step_000000075" / "lora.safetensors"
    data = bytearray(lora.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lora.write_bytes(bytes(data))

    out = _run(tiny_command("train", tiny_bundle, sample_dataset, str(runs), "reference", "train.checkpoint_every=25"))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert (f"passing over checkpoint {run_dir}/checkpoints/step_000000100: damaged: train_state.safetensors is "
            f"{full // 2} bytes, the manifest says {full}") in log
    assert (f"checkpoint {run_dir}/checkpoints/step_000000075 could not be loaded (lora.safetensors does not match "
            "its checksum in _MANIFEST.json); trying the previous one") in log
    assert "resuming from step 50" in log
    states = _checkpoints(run_dir)
    assert sorted(states) == [50, 75, 100] and states[100]["resumed_from"] == 50
    _assert_same_lora(load_file(str(run_dir / "outputs" / LORA_NAME)), reference_run)


def test_two_drivers_started_together_on_one_run_one_trains_and_the_other_is_refused(tmp_path, tiny_bundle,
                                                                                     sample_dataset, reference_run):
    runs = tmp_path / "runs"
    args = tiny_command("train", tiny_bundle, sample_dataset, str(runs), "twice", "train.checkpoint_every=25")
    drivers = [_start(args, tmp_path / f"driver-{i}") for i in range(2)]
    results = [_finish(*d) for d in drivers]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    refused = next(err for code, _, err in results if code == 2)
    assert "storage.run_name: run 'twice' is held by another driver (owner " in refused
    assert "Traceback" not in refused

    run_dir = runs / "twice"
    (cache,) = (run_dir / "latents").iterdir()
    marker = json.loads((cache / "_COMPLETE.json").read_text())
    assert marker["pairs"] == 3  # the sample archive's pairs, once
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [marker["writer"]]  # one writer's files
    states = _checkpoints(run_dir)
    assert sorted(states) == [50, 75, 100] and all(s["resumed_from"] == 0 for s in states.values())
    assert not (run_dir / "_LEASE.json").exists()  # released on the way out
    _assert_same_lora(load_file(str(run_dir / "outputs" / LORA_NAME)), reference_run)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs: a storage folder whose disk can be filled."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a tmpfs, which needs root (CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_with_one_sentence_and_keeps_the_last_good_checkpoint(small_disk, tiny_bundle,
                                                                                        sample_dataset, ray_cluster):
    runs = small_disk / "runs"
    args = tiny_command("train", tiny_bundle, sample_dataset, str(runs), "full", "train.checkpoint_every=25",
                        "storage.lease_timeout_s=5")
    first = _start(args, small_disk.parent / "first")
    manifest = runs / "full" / "checkpoints" / "step_000000025" / "_MANIFEST.json"
    deadline = time.time() + 600
    while not manifest.exists():
        assert first[0].poll() is None and time.time() < deadline, "the run wrote no checkpoint"
        time.sleep(0.2)
    # The disk fills up (another job's files): what is left holds no checkpoint.
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - 32 * 1024))
    code, _, err = _finish(*first)
    assert code == 2, err[-3000:]
    assert "error: the job stopped on a storage error" in err and "Traceback" not in err
    assert re.search(rf"{re.escape(str(runs))}/full/checkpoints/step_000000050/\S+: writing ", err), err[-2000:]
    assert "no space left on the device: free space or point storage.storage_path elsewhere" in err
    # Nothing that looks like a checkpoint is half-written, and the good one was not pruned.
    assert sorted(_checkpoints(runs / "full")) == [25]

    filler.unlink()
    time.sleep(5)  # the stopped driver released its lease; even if it had not, it would expire by now
    second = _run(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from step 25" in second.stdout + second.stderr
    assert _checkpoints(runs / "full")[100]["resumed_from"] == 25


def test_a_stopped_command_removes_its_temporary_folders_and_releases_its_lease(tmp_path, tiny_bundle,
                                                                                sample_dataset, ray_cluster):
    import tempfile

    runs = tmp_path / "runs"
    args = tiny_command("preprocess", tiny_bundle, sample_dataset, str(runs), "stopped")
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
