"""The training loop across interruptions, on the Ray-free trainer (2 gloo ranks, 10 steps of the tiny model).

A run killed outright resumes from its last checkpoint and ends bit for bit as the uninterrupted run; it
may resume on another world size or ZeRO stage; damaged newest checkpoints are named and passed over; a
storage outage is ridden out; a full disk stops every rank with one sentence and keeps the last good
checkpoint. The just-in-time preemption checkpoint is in test_trainer.py; what Ray itself adds (restarting
the worker group, a node's preemption notice, the driver) in test_train.py and test_faults.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import load, load_file

from fixtures_cluster import s3_outage
from jobs import s3_overrides
from test_trainer import _finish, _run, _start

STEPS, EVERY, KILLED_AT = 10, 3, 8  # checkpoints at steps 3, 6, 9 and 10; the newest three are kept
RUN = "trainer-test"
# The global batch is the run's whatever its world size: fixed here, so that one rank continues two ranks' run.
BATCH = ("cluster.global_batch_size=2", f"checkpoint.every={EVERY}")


def _checkpoints(run_dir: Path) -> dict[int, dict]:
    """Every checkpoint folder of a local run: step -> its progress.json, after checking it is complete."""
    out = {}
    for folder in sorted((run_dir / "checkpoints").iterdir()):
        manifest = json.loads((folder / "_MANIFEST.json").read_text())  # none may lack it
        for name, entry in manifest["files"].items():
            assert (folder / name).stat().st_size == entry["size"], f"{folder.name}/{name}"
        out[manifest["step"]] = json.loads((folder / "progress.json").read_text())
    return out


def _final(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{STEPS:09d}" / name))


def _assert_same_lora(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:  # bit for bit: same samples, noise and optimizer state whatever happened
        assert torch.equal(got[key], expected[key]), key


def _losses(records: list[dict]) -> dict[int, float]:
    return {int(step): loss for step, loss in records[0]["losses"].items()}


def _wait_until_held(procs: list[subprocess.Popen], out: Path) -> None:
    """Until the run waits at its `hold_at_step` (every rank is stopped if it never does)."""
    deadline = time.time() + 600
    try:
        while not (out / "held").exists():
            assert all(p.poll() is None for p in procs) and time.time() < deadline, "the run never reached step 8"
            time.sleep(0.1)
    except BaseException:
        for p in procs:
            p.kill()
        raise


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bundle):
    """2 ranks, STEPS steps, ZeRO-2, uninterrupted: (run folder, rank 0's step -> loss)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    ranks = _run(tmp, tiny_bundle, world=2, steps=STEPS, overrides=BATCH)
    return tmp / "runs" / RUN, _losses(ranks)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_bundle):
    """The same run with both ranks SIGKILLed as step KILLED_AT + 1 starts: its run folder."""
    tmp = tmp_path_factory.mktemp("killed")
    _run(tmp, tiny_bundle, world=2, steps=STEPS, overrides=BATCH, kill_at_step=KILLED_AT, killed=True)
    run_dir = tmp / "runs" / RUN
    assert sorted(_checkpoints(run_dir)) == [3, 6]
    return run_dir


def _resume(tmp_path, tiny_bundle, run_dir: Path, *, world: int, overrides=()) -> tuple[Path, list[dict]]:
    """Run again on a copy of `run_dir`: (the copy, each rank's record)."""
    copy = tmp_path / "runs" / RUN
    shutil.copytree(run_dir, copy)
    return copy, _run(tmp_path, tiny_bundle, world=world, steps=STEPS, overrides=[*BATCH, *overrides])


def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_bit_for_bit_as_the_uninterrupted_run(
        tmp_path, tiny_bundle, uninterrupted, killed):
    reference, reference_losses = uninterrupted
    run_dir, ranks = _resume(tmp_path, tiny_bundle, killed, world=2)
    assert "ltx-ray: resuming from step 6 of 10 on 2 worker(s) (checkpoint written on 2, reason: interval)" \
        in ranks[0]["log"]
    # Steps 7 and 8 are done again, exactly as the first time and as the uninterrupted run did them.
    assert _losses(ranks) == {s: reference_losses[s] for s in range(7, STEPS + 1)}
    assert _checkpoints(run_dir)[STEPS]["resumed_from"] == 6
    _assert_same_lora(_final(run_dir, "lora.safetensors"), _final(reference, "lora.safetensors"))
    _assert_same_lora(_final(run_dir, "train_state.safetensors"), _final(reference, "train_state.safetensors"))


def _assert_close_to(run_dir: Path, losses: dict[int, float], uninterrupted) -> None:
    reference, reference_losses = uninterrupted
    worst = max(abs(losses[s] - reference_losses[s]) / abs(reference_losses[s]) for s in losses)
    print(f"largest relative loss difference over steps {min(losses)}..{max(losses)}: {worst:.3g}")
    assert sorted(losses) == list(range(7, STEPS + 1)) and worst <= 1e-5
    a, b = _final(run_dir, "train_state.safetensors"), _final(reference, "train_state.safetensors")
    params = [k for k in b if k.startswith("param/")]
    assert params and a.keys() == b.keys()
    largest = max(float((a[k] - b[k]).abs().max()) for k in params)
    print(f"largest absolute difference of the final fp32 LoRA tensors: {largest:.3g}")
    assert largest <= 1e-5


def test_a_two_rank_run_resumed_on_one_rank_matches_the_uninterrupted_two_rank_run(tmp_path, tiny_bundle,
                                                                                  uninterrupted, killed):
    # Steps 1..6 on 2 ranks, then 7..10 on 1 rank with accumulation 2, against 2 ranks throughout.
    run_dir, ranks = _resume(tmp_path, tiny_bundle, killed, world=1)
    assert "resuming from step 6 of 10 on 1 worker(s) (checkpoint written on 2" in ranks[0]["log"]
    assert _checkpoints(run_dir)[STEPS]["world_size"] == 1
    _assert_close_to(run_dir, _losses(ranks), uninterrupted)


def test_a_zero2_run_resumed_under_zero3_matches_the_uninterrupted_zero2_run(tmp_path, tiny_bundle, uninterrupted,
                                                                             killed):
    run_dir, ranks = _resume(tmp_path, tiny_bundle, killed, world=2, overrides=["cluster.zero_stage=3"])
    assert "resuming from step 6 of 10 on 2 worker(s)" in ranks[0]["log"]
    _assert_close_to(run_dir, _losses(ranks), uninterrupted)
    # The LoRA is gathered from the ZeRO-3 shards: the same keys and shapes as the ZeRO-2 LoRA.
    gathered, reference = _final(run_dir, "lora.safetensors"), _final(uninterrupted[0], "lora.safetensors")
    assert {k: v.shape for k, v in gathered.items()} == {k: v.shape for k, v in reference.items()}


def test_damaged_newest_checkpoints_are_named_and_the_run_resumes_from_the_last_good_one(tmp_path, tiny_bundle,
                                                                                         uninterrupted):
    reference, _ = uninterrupted
    run_dir = tmp_path / "runs" / RUN
    shutil.copytree(reference, run_dir)
    assert sorted(_checkpoints(run_dir)) == [6, 9, 10]
    # Step 10: a file cut short (what a killed upload or a full disk leaves). Step 9: one byte flipped,
    # same size (bit rot), found only by its checksum.
    newest = run_dir / "checkpoints" / "step_000000010" / "train_state.safetensors"
    full = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[: full // 2])
    lora = run_dir / "checkpoints" / "step_000000009" / "lora.safetensors"
    data = bytearray(lora.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lora.write_bytes(bytes(data))

    ranks = _run(tmp_path, tiny_bundle, world=2, steps=STEPS, overrides=BATCH)
    log = ranks[0]["log"]
    assert (f"passing over checkpoint {run_dir}/checkpoints/step_000000010: damaged: train_state.safetensors is "
            f"{full // 2} bytes, the manifest says {full}") in log
    assert (f"checkpoint {run_dir}/checkpoints/step_000000009 could not be loaded (lora.safetensors does not match "
            "its checksum in _MANIFEST.json); trying the previous one") in log
    assert "resuming from step 6 of 10" in log
    states = _checkpoints(run_dir)
    assert sorted(states) == [6, 9, 10] and states[10]["resumed_from"] == 6
    _assert_same_lora(_final(run_dir, "lora.safetensors"), _final(reference, "lora.safetensors"))


def test_a_storage_outage_mid_run_is_ridden_out_without_losing_a_step(tmp_path, tiny_bundle, s3_server, s3_bucket,
                                                                      uninterrupted):
    release = tmp_path / "release"
    procs, out = _start(tmp_path, tiny_bundle, world=2, steps=STEPS, storage=f"s3://{s3_bucket}/runs",
                        overrides=[*BATCH, *s3_overrides(s3_server)],
                        hold_at_step={"step": 8, "until": str(release)})
    _wait_until_held(procs, out)
    # After step 8: every storage call of the run fails for 4 s, the step-9 checkpoint's upload among them.
    restarted = s3_outage(4)
    release.touch()
    restarted.join()
    ranks = _finish(procs, out)
    assert "retrying in" in ranks[0]["log"]  # the outage was met, and ridden out
    assert all(not r["failures"] for r in ranks)

    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    prefix = f"runs/{RUN}/checkpoints"
    state = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{prefix}/step_{STEPS:09d}/progress.json")["Body"].read())
    assert state["step"] == STEPS and state["resumed_from"] == 0  # no restart, no step redone
    steps = sorted(int(k.split("step_")[1][:9]) for k in keys if k.endswith("_MANIFEST.json"))
    assert steps == [6, 9, 10]  # every interval checkpoint was written; pruning kept three
    got = load(s3.get_object(Bucket=s3_bucket, Key=f"{prefix}/step_{STEPS:09d}/lora.safetensors")["Body"].read())
    _assert_same_lora(got, _final(uninterrupted[0], "lora.safetensors"))


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 16 MiB tmpfs: a storage folder whose disk can be filled."""
    mount = tmp_path_factory.mktemp("small-disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a tmpfs, which needs root (CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


FULL_DISK_STEPS = 20


@pytest.fixture(scope="module")
def full_disk_run(tmp_path_factory, tiny_bundle, small_disk):
    """A run whose disk fills up after step 8 (another job's files), before its step-9 checkpoint:
    (run folder, each rank's record)."""
    tmp = tmp_path_factory.mktemp("full-disk")
    runs, release = small_disk / "runs", tmp / "release"
    procs, out = _start(tmp, tiny_bundle, world=2, steps=FULL_DISK_STEPS, storage=str(runs), overrides=BATCH,
                        hold_at_step={"step": 8, "until": str(release)})
    _wait_until_held(procs, out)
    free = shutil.disk_usage(small_disk).free
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - 32 * 1024))
    release.touch()
    return runs / RUN, _finish(procs, out)


def test_a_full_disk_stops_the_run_with_one_sentence_and_keeps_the_last_good_checkpoint(full_disk_run):
    run_dir, ranks = full_disk_run
    [problem] = ranks[0]["failures"]  # rank 0 writes checkpoints, and reports why the run stops
    assert re.fullmatch(rf"{re.escape(str(run_dir))}/checkpoints/step_000000009/\S+: writing .*", problem), problem
    assert problem.endswith("no space left on the device: free space or point storage.storage_path elsewhere")
    assert "Traceback" not in ranks[0]["log"]
    # Nothing that looks like a checkpoint is half-written, and the good ones were not pruned.
    assert sorted(_checkpoints(run_dir)) == [3, 6]


def test_a_storage_failure_stops_every_rank_at_the_same_step(full_disk_run):
    _, ranks = full_disk_run
    stopped = [r["done"][-1] for r in ranks]
    # Every rank learned of rank 0's failed upload in the same step's all-reduce, and none went on.
    assert stopped[0] == stopped[1] and 9 < stopped[0] < FULL_DISK_STEPS, stopped
    assert ranks[1]["failures"] == []
