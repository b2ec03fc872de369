"""The training state a run resumes from: free of world size and ZeRO stage, and refused when it is not ours."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs import ROOT


# ZeRO-2 -> ZeRO-3 through the whole trainer: test_trainer_faults.py (a ZeRO-2 run resumed under ZeRO-3).
@pytest.mark.parametrize("saved_under, loaded_under", [(3, 2)])
def test_training_state_saved_under_one_zero_stage_continues_under_the_other(tmp_path, tiny_bundle, saved_under,
                                                                             loaded_under):
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "zero_stage_swap.py"), str(tiny_bundle.checkpoint),
         str(tiny_bundle.gemma_dir), str(tmp_path), str(saved_under), str(loaded_under)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["tensors"] > 0 and r["reload_max_diff"] == 0.0  # weights and both AdamW moments, exactly
    assert r["adam_step"] == [2.0, 2.0] and r["lr"][0] == r["lr"][1]
    # The next step is the same step: same loss, same update (up to the stages' float reduction order).
    assert r["next_loss"][0] == r["next_loss"][1]
    assert r["moved"] > 1e-5 and r["next_step_max_diff"] < 1e-6


def _old_run(storage, run: str) -> str:
    """A run folder as an earlier ltx-ray left it: Ray-managed checkpoint folders, no verified checkpoints."""
    ckpt = storage / run / "checkpoint_2026-11-01_10-00-00.000000"
    (ckpt / "deepspeed").mkdir(parents=True)
    (ckpt / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 64)
    (ckpt / "progress.json").write_text(json.dumps({"step": 50}))
    (storage / run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": ckpt.name}}))
    return ckpt.name


def _verified_checkpoint(run_dir, step: int, state: dict) -> None:
    """A checkpoint folder with its manifest, as `ltx_ray.train.checkpoint.publish` leaves one."""
    import hashlib

    folder = run_dir / "checkpoints" / f"step_{step:09d}"
    folder.mkdir(parents=True)
    (folder / "train_state.safetensors").write_bytes(b"")
    (folder / "progress.json").write_text(json.dumps(state))
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in folder.iterdir()}
    (folder / "_MANIFEST.json").write_text(json.dumps({"layout": "ltx-ray/checkpoint/1", "step": step,
                                                       "files": files}))


def _train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltx_ray", "train", str(ROOT / "conf" / "demo.yaml"),
                           "request.validation=[]", *overrides], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_a_run_whose_checkpoints_have_an_earlier_layout_is_refused_before_any_work(tmp_path):
    name = _old_run(tmp_path, "old")
    # The archive does not exist: the refusal must come before any data or cluster work.
    out = _train(f"storage.storage_path={tmp_path}", "storage.run_name=old",
                 f"request.training_data_url={tmp_path / 'never-read.zip'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{name}: this run's checkpoints were written by an earlier ltx-ray" in out.stderr
    assert "storage.run_name" in out.stderr and "Traceback" not in out.stderr


def test_resuming_with_another_global_batch_is_refused_naming_the_field(tmp_path):
    _verified_checkpoint(tmp_path / "run", 50, {"step": 50, "global_batch_size": 2})
    out = _train(f"storage.storage_path={tmp_path}", "storage.run_name=run", "cluster.global_batch_size=4",
                 f"request.training_data_url={tmp_path / 'never-read.zip'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cluster.global_batch_size: the run's checkpoint at step 50" in out.stderr
    assert "set cluster.global_batch_size=2 to continue it" in out.stderr
