"""The Ray-free trainer on a plain torch.distributed (gloo) group: what only a GPU run would otherwise show."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import ROOT


def _start(tmp_path, tiny_bundle, *, world: int, steps: int, overrides=(), storage: str | None = None,
           **spec) -> tuple[list[subprocess.Popen], Path]:
    """Start `tests/trainer_worker.py` on `world` gloo ranks (storage: `tmp_path/runs` unless given)."""
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"checkpoint": str(tiny_bundle.checkpoint), "gemma": str(tiny_bundle.gemma_dir),
                                     "storage": storage or str(tmp_path / "runs"), "out": str(out), "steps": steps,
                                     "overrides": [f"cluster.num_workers={world}", *overrides], **spec}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = [open(out / f"rank{r}.log", "w") for r in range(world)]  # a pipe nobody reads would stall a rank
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "trainer_worker.py"), str(spec_file)], cwd=ROOT,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=logs[r], stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    for f in logs:
        f.close()
    return procs, out


def _finish(procs: list[subprocess.Popen], out: Path, *, killed: bool = False,
            expect_failure: bool = False) -> list[dict]:
    """Wait for every rank; each rank's record (with its `log`), or only its `log` where it was to kill itself
    (`killed`) or to fail (`expect_failure`: an exit status other than 0)."""
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    records = []
    for r, p in enumerate(procs):
        log = (out / f"rank{r}.log").read_text()
        if killed:
            assert p.returncode == -signal.SIGKILL, log[-4000:]
            records.append({"log": log})
        elif expect_failure:
            assert p.returncode not in (0, -signal.SIGKILL), log[-4000:]
            records.append({"log": log})
        else:
            assert p.returncode == 0, log[-4000:]
            records.append(json.loads((out / f"rank{r}.json").read_text()) | {"log": log})
    return records


def _run(tmp_path, tiny_bundle, *, world: int, steps: int, overrides=(), killed: bool = False,
         expect_failure: bool = False, **spec) -> list[dict]:
    """Run `tests/trainer_worker.py` on `world` gloo ranks; each rank's record."""
    return _finish(*_start(tmp_path, tiny_bundle, world=world, steps=steps, overrides=overrides, **spec),
                   killed=killed, expect_failure=expect_failure)


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, tiny_bundle):
    """2 steps on 1 rank with gradient checkpointing and an estimate of 1 GiB: rank 0's record."""
    [rank0] = _run(tmp_path_factory.mktemp("checkpointed"), tiny_bundle, world=1, steps=2, estimated_bytes=2**30,
                   overrides=["cluster.gradient_checkpointing=true", "checkpoint.every=100"])
    return rank0


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_bundle):
    """1 step on 1 rank without gradient checkpointing and an estimate of 1 KiB (far below any step): rank 0's."""
    [rank0] = _run(tmp_path_factory.mktemp("plain"), tiny_bundle, world=1, steps=1, estimated_bytes=1024,
                   overrides=["cluster.gradient_checkpointing=false"])
    return rank0


def test_gradient_checkpointing_recomputes_ltx_core_blocks_with_the_model_in_train_mode(checkpointed_run):
    # 2 blocks, 1 micro-step: each block's forward runs again in backward.
    assert checkpointed_run["recomputed_blocks"] == 2
    # The LTXModel itself trains, not only its PEFT wrapper.
    assert checkpointed_run["modes"] and all(checkpointed_run["modes"])


def test_without_gradient_checkpointing_no_block_is_recomputed(plain_run):
    assert plain_run["recomputed_blocks"] == 0


def test_every_step_measures_its_peak_memory_and_step_1_is_set_against_the_estimate(checkpointed_run):
    log = checkpointed_run["log"]
    assert len(checkpointed_run["peak_gib"]) == 2 and all(0 < p < 1 for p in checkpointed_run["peak_gib"])
    assert "ltx-ray: memory: measured 0.0" in log and "estimated 1.00 GiB" in log
    assert "exceeds the estimate" not in log


def test_a_step_1_peak_over_the_estimate_by_more_than_15_percent_is_warned_about(plain_run):
    assert "exceeds the estimate (0.00 GiB) by more than 15%" in plain_run["log"]


def test_host_reads_per_step_do_not_grow_with_the_micro_steps(tmp_path, tiny_bundle):
    [one] = _run(tmp_path / "a", tiny_bundle, world=1, steps=2, count_syncs=True,
                 overrides=["cluster.global_batch_size=1"])
    [four] = _run(tmp_path / "b", tiny_bundle, world=1, steps=2, count_syncs=True,
                  overrides=["cluster.global_batch_size=4"])
    # Losses and sigmas are summed on the device and read once per step, however many micro-steps it has.
    assert four["syncs_per_step"][-1] == one["syncs_per_step"][-1], (one["syncs_per_step"], four["syncs_per_step"])


def test_ranks_hearing_of_a_preemption_at_different_micro_steps_checkpoint_the_same_step_together(tmp_path,
                                                                                                 tiny_bundle):
    # Rank 1 hears of it at its 3rd micro-step check (step 3, after 2 completed steps); rank 0 never does.
    ranks = _run(tmp_path, tiny_bundle, world=2, steps=4, hear_preemption_at={"1": 3},
                 overrides=["checkpoint.every=100"])
    assert all(not r["failures"] for r in ranks)
    folders = sorted(p.name for p in (tmp_path / "runs" / "trainer-test" / "checkpoints").iterdir())
    # The just-in-time checkpoint holds step 2, and the final one step 4.
    assert folders == ["step_000000002", "step_000000004"]
    state = json.loads((tmp_path / "runs" / "trainer-test" / "checkpoints" / "step_000000002" /
                        "progress.json").read_text())
    assert state["reason"] == "preemption"
