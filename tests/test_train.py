"""Ray Train + DeepSpeed training on the session's two-node Ray cluster (2 CPU workers, gloo, tiny bundle).

The runs are few and shared between tests (each `fit` costs ~30 s of worker
start-up), and only where Ray is the subject: `reference_run` (fixtures_train.py,
shared with the `generate` tests) is an uninterrupted ZeRO-2 run with a
validation sample; the elastic run loses a node to a preemption. The loop's own
behaviours (bit-exact resume, another world size or ZeRO stage, storage faults)
are tested without Ray, in test_trainer_faults.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import boto3
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fixtures_cluster import drain_for_preemption
from fixtures_train import REFERENCE_STEPS
from jobs import ROOT, s3_overrides, tiny_job
from ltx_ray.model.lora import read_lora_metadata
from ltx_ray.train.driver import run_job
from ltx_ray.train.outputs import LORA_NAME
from wandb_history import read_offline_history as history

STEPS = 100  # the spec's minimum number_of_steps: what the `ltx-ray train` command runs
ELASTIC_STEPS = REFERENCE_STEPS  # the same run as the reference, but for the node it loses
ELASTIC_EVERY = 10  # the notice comes after the step-10 checkpoint; the just-in-time one lands a few steps later


def _lora_params(path: str) -> int:
    with safe_open(path, "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _transformer_params(checkpoint: Path) -> int:
    with safe_open(str(checkpoint), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("model.diffusion_model."))


def test_zero2_run_writes_the_lora_and_config_to_local_storage(reference_run):
    job, result, runs = reference_run
    assert result["lora_file"] == str(runs / "reference" / "outputs" / LORA_NAME)
    meta = read_lora_metadata(result["lora_file"])
    assert meta["training_type"] == "av2av_ic_lora" and meta["rank"] == "8" and meta["trigger_phrase"] == "av_st9le"
    config = json.loads(Path(result["config_file"]).read_text())
    assert config["number_of_steps"] == REFERENCE_STEPS and config["training_type"] == "av2av_ic_lora"
    assert result["billable_units"] == max(100, REFERENCE_STEPS)


def test_checkpoints_are_pruned_and_hold_no_frozen_base_weights(reference_run, tiny_bundle):
    job, result, runs = reference_run
    checkpoints = sorted((runs / "reference" / "checkpoints").glob("step_*"))
    assert len(checkpoints) == job.checkpoint.keep  # 4 were written (steps 8, 16, 24, 30), 3 kept
    state = json.loads((checkpoints[-1] / "progress.json").read_text())
    assert state["step"] == REFERENCE_STEPS
    # One world-size-free file of training state, no DeepSpeed per-rank files.
    assert sorted(p.name for p in checkpoints[-1].iterdir()) == [
        "_MANIFEST.json", "config.json", "lora.safetensors", "progress.json", "train_state.safetensors"]
    # Nothing else in the run's folder looks like a checkpoint: Ray Train is handed none.
    assert not list((runs / "reference").glob("checkpoint_*"))
    state_bytes = (checkpoints[-1] / "train_state.safetensors").stat().st_size
    lora = _lora_params(result["lora_file"])
    # fp32 LoRA master weights + two AdamW moments = 12 bytes per LoRA parameter, plus the header;
    # the frozen base alone would add 4 bytes per transformer parameter.
    assert state_bytes < 12 * lora + 64 * 1024
    assert state_bytes < 4 * _transformer_params(tiny_bundle.checkpoint)


def test_wandb_offline_run_holds_metrics_for_every_step(reference_run):
    _, _, runs = reference_run
    rows = history(runs / "reference" / "outputs" / "wandb" / "run-reference.wandb")
    steps = sorted({r["_step"] for r in rows if "loss" in r})
    assert steps == list(range(1, REFERENCE_STEPS + 1))
    for key in ("video_loss", "audio_loss", "sigma_video", "learning_rate", "grad_norm", "tokens_per_second"):
        assert key in rows[-1]
    peaks = [r["memory/peak_gib"] for r in rows if "loss" in r]
    assert len(peaks) == REFERENCE_STEPS and all(p > 0 for p in peaks)


def test_gradient_checkpointing_recomputes_ltx_core_blocks_in_the_ray_workers(reference_run):
    job, _, runs = reference_run
    assert job.cluster.gradient_checkpointing
    rows = history(runs / "reference" / "outputs" / "wandb" / "run-reference.wandb")
    # Step 1 of the tiny model's 2 blocks: each block's forward ran again in backward on rank 0.
    assert [r["memory/recomputed_blocks"] for r in rows if "memory/recomputed_blocks" in r] == [2]


def test_reel_has_video_and_audio_of_matching_duration(reference_run):
    _, result, _ = reference_run
    with av.open(result["video"]) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        v_seconds = float(video.duration * video.time_base)
        a_seconds = float(audio.duration * audio.time_base)
        frame = 1 / float(video.average_rate)
        # side by side: reference | generated
        assert video.codec_context.width == 2 * 512
    assert abs(v_seconds - a_seconds) <= frame


def test_zero3_run_to_an_s3_bucket(tmp_path, tiny_bundle, sample_dataset, s3_server, s3_bucket, reference_run):
    # With a validation sample: under ZeRO-3 every rank takes part in the preview's forward passes. A few steps
    # (two checkpoints): what ZeRO-3 changes in the loop itself is tested without Ray (test_trainer_faults.py).
    job = tiny_job(tiny_bundle, sample_dataset, f"s3://{s3_bucket}/runs", "zero3", "cluster.zero_stage=3",
                   "checkpoint.every=2", *s3_overrides(s3_server), validation=True, steps=4)
    result = run_job(job)
    assert result["lora_file"] == f"s3://{s3_bucket}/runs/zero3/outputs/{LORA_NAME}"
    assert result["video"] == f"s3://{s3_bucket}/runs/zero3/outputs/validation_reel.mp4"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    for name in (LORA_NAME, "config.json", "validation_reel.mp4", "wandb/run-zero3.wandb"):
        assert f"runs/zero3/outputs/{name}" in keys, name
    assert any(k.startswith("runs/zero3/checkpoints/step_") and k.endswith("lora.safetensors") for k in keys)
    local = tmp_path / "lora.safetensors"
    s3.download_file(s3_bucket, f"runs/zero3/outputs/{LORA_NAME}", str(local))
    # Gathered from the ZeRO-3 shards: the same keys and shapes as the ZeRO-2 LoRA.
    reference = load_file(reference_run[1]["lora_file"])
    gathered = load_file(str(local))
    assert {k: v.shape for k, v in gathered.items()} == {k: v.shape for k, v in reference.items()}


def test_of_two_drivers_started_together_one_is_refused_and_the_killed_others_rerun_takes_over_and_resumes(
        tmp_path, tiny_bundle, sample_dataset, ray_cluster):
    import socket

    runs = tmp_path / "runs"
    job = tiny_job(tiny_bundle, sample_dataset, str(runs), "driver-restart")
    args = [
        sys.executable, "-m", "ltx_ray", "train", str(ROOT / "conf" / "demo.yaml"),
        f"request.training_data_url={job.request.training_data_url}",
        f"model.checkpoint={job.model.checkpoint}", f"model.text_encoder={job.model.text_encoder}",
        f"storage.storage_path={runs}", "storage.run_name=driver-restart", "request.validation=[]",
        f"storage.latent_cache_path={job.storage.latent_cache_path}",  # the session's warm cache
        "cluster.resources_per_worker={CPU: 0.5}", "checkpoint.every=20",
        # Smaller than the estimate of any run: the driver's pre-flight must warn, and the run goes on.
        "cluster.gpu_memory_gb=0.5",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    # Two drivers of one run at once (a retried RayJob beside the first, a double click): one holds the run's
    # lease and trains, the other stops with exit 2 naming it, before any work.
    drivers = []
    for i in range(2):
        with open(tmp_path / f"driver-{i}.err", "w") as err:
            drivers.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                            start_new_session=True))
    deadline = time.time() + 120
    while all(d.poll() is None for d in drivers):
        assert time.time() < deadline, "neither driver was refused"
        time.sleep(0.2)
    (refused,) = [i for i, d in enumerate(drivers) if d.poll() is not None]
    first = drivers[1 - refused]
    message = (tmp_path / f"driver-{refused}.err").read_text()
    assert drivers[refused].returncode == 2, message[-2000:]
    assert "storage.run_name: run 'driver-restart' is held by another driver (owner " in message
    assert "Traceback" not in message

    manifests = lambda: sorted((runs / "driver-restart" / "checkpoints").glob("step_*/_MANIFEST.json"))  # noqa: E731
    deadline = time.time() + 400
    while not manifests():
        assert first.poll() is None, "the first driver ended before writing a checkpoint"
        assert time.time() < deadline, "no checkpoint within the time limit"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # as `kill -9` or the OOM killer: the driver releases nothing
    first.wait()
    # What the re-run sees: the newest verified checkpoint in storage, and the dead driver's lease, its heartbeat
    # fresh (storage.lease_timeout_s is 60 s).
    saved = json.loads((manifests()[-1].parent / "progress.json").read_text())["step"]
    assert 0 < saved < STEPS
    lease = json.loads((runs / "driver-restart" / "_LEASE.json").read_text())
    assert lease["pid"] == first.pid and time.time() - lease["heartbeat"] < 60

    # Run again at once: the lease's holder ran on this machine and its process is gone, so it is taken over.
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    (taken,) = [line for line in second.stderr.splitlines() if "taking over the lease" in line]
    assert taken.endswith(f"taking over the lease of run driver-restart from {lease['owner']} (pid {first.pid} on "
                          f"{socket.gethostname()}): that process has ended"), taken
    assert f"resuming from step {saved}" in second.stdout + second.stderr
    preflight = second.stderr.index("pre-flight: the training worker needs an estimated")
    assert "0.5 GiB of cluster.gpu_memory_gb=0.5" in second.stderr[preflight:preflight + 400]
    final = _final_checkpoint(runs / "driver-restart")
    assert json.loads((final / "progress.json").read_text())["step"] == STEPS
    assert not (runs / "driver-restart" / "_LEASE.json").exists()  # released on the way out
    # The LoRA published is the one the run trained, through its last step.
    published = load_file(str(runs / "driver-restart" / "outputs" / LORA_NAME))
    trained = load_file(str(final / "lora.safetensors"))
    assert published.keys() == trained.keys() and all(torch.equal(published[k], trained[k]) for k in trained)


def _final_checkpoint(run_dir: Path) -> Path:
    return max((p.parent for p in (run_dir / "checkpoints").glob("step_*/_MANIFEST.json")),
               key=lambda p: json.loads((p / "progress.json").read_text())["step"])


def _losses(run_dir: Path, run: str) -> dict[int, float]:
    """The loss of every step, from the run's W&B history."""
    return {r["_step"]: r["loss"] for r in history(run_dir / "outputs" / "wandb" / f"run-{run}.wandb") if "loss" in r}


def _losses_of_every_attempt(run: str) -> dict[int, float]:
    """The loss of every step over all attempts of a run (a step redone after a restart: its last value).

    Offline, each attempt's rank 0 writes its own W&B run folder (`offline-run-<time>-<id>`) on its node, and
    only the last is copied to the outputs; the session's nodes share this machine's /tmp, so all are here.
    """
    from ltx_ray.train.outputs import local_wandb_dir

    losses: dict[int, float] = {}
    for attempt in sorted(Path(local_wandb_dir(run)).glob(f"wandb/offline-run-*-{run}")):
        losses.update({r["_step"]: r["loss"] for r in history(attempt / f"run-{run}.wandb") if "loss" in r})
    return losses


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory, tiny_bundle, sample_dataset, ray_nodes, reference_run):
    """An elastic run on [1, 2] workers whose second node is preempted mid-run (drained with a deadline, as a
    spot reclaim is, then removed): (result, run folder, the just-in-time checkpoint's trainer state)."""
    import threading

    import uuid

    runs = tmp_path_factory.mktemp("elastic")
    name = f"elastic-{uuid.uuid4().hex[:8]}"  # W&B's node-local folders are per run name: keep them this session's
    run_dir = runs / name
    job = tiny_job(tiny_bundle, sample_dataset, str(runs), name, f"checkpoint.every={ELASTIC_EVERY}",
                   "cluster.num_workers=[1, 2]", "cluster.resources_per_worker={CPU: 0.5, trainer_slot: 1}",
                   steps=ELASTIC_STEPS)
    # Once the node is gone, Ray Train waits this long for the resources of 2 workers before it starts on 1
    # (default 60 s); its controller takes the setting from the driver's environment.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
        outcome: dict = {}
        driver = threading.Thread(target=lambda: outcome.update(result=run_job(job)), daemon=True)
        driver.start()
        states = lambda: [json.loads((p.parent / "progress.json").read_text())  # noqa: E731
                          for p in (run_dir / "checkpoints").glob("step_*/_MANIFEST.json")]
        deadline = time.time() + 600
        while not any(s["step"] >= ELASTIC_EVERY for s in states()):
            assert driver.is_alive() and time.time() < deadline, "the run wrote no checkpoint"
            time.sleep(0.2)
        worker_node = ray_nodes.list_all_nodes()[1]
        drain_for_preemption(worker_node.node_id, deadline_s=60)
        while not any(s["reason"] == "preemption" for s in states()):
            assert driver.is_alive() and time.time() < deadline, "no just-in-time checkpoint after the notice"
            time.sleep(0.1)
        # Verified (its manifest is written last) while the node lives until its deadline.
        jit = next(s for s in states() if s["reason"] == "preemption")
        ray_nodes.remove_node(worker_node)  # the reclaim: the node and its worker are gone
        try:
            driver.join(timeout=600)
            assert not driver.is_alive(), "the run did not finish on the remaining node"
        finally:
            ray_nodes.add_node(num_cpus=2, resources={"trainer_slot": 1})
            ray_nodes.wait_for_nodes()
    return outcome["result"], run_dir, jit, name


def test_preempted_node_gets_a_just_in_time_checkpoint_and_the_run_resumes_from_it(preempted_run):
    _, run_dir, jit, _ = preempted_run
    # Written at the notice, after the interval checkpoint that came before it, by both workers.
    assert ELASTIC_EVERY < jit["step"] < ELASTIC_STEPS and jit["step"] % ELASTIC_EVERY and jit["world_size"] == 2
    final = json.loads((_final_checkpoint(run_dir) / "progress.json").read_text())
    assert final["resumed_from"] == jit["step"] and final["world_size"] == 1


def test_elastic_run_continues_on_one_worker_and_finishes_exactly_its_steps(preempted_run):
    result, run_dir, jit, name = preempted_run
    final = json.loads((_final_checkpoint(run_dir) / "progress.json").read_text())
    assert final["step"] == ELASTIC_STEPS and final["reason"] == "final"
    assert sorted(_losses_of_every_attempt(name)) == list(range(1, ELASTIC_STEPS + 1))
    # The last attempt's W&B run, in the outputs, holds the steps after the resume.
    assert sorted(_losses(run_dir, name)) == list(range(jit["step"] + 1, ELASTIC_STEPS + 1))
    assert Path(result["lora_file"]).is_file() and result["lora_file"].startswith(str(run_dir / "outputs"))


def test_resume_on_fewer_workers_matches_the_uninterrupted_two_worker_run(preempted_run, reference_run):
    # Steps 1..k on 2 workers, then k+1..30 on 1 worker with accumulation 2, against 2 workers throughout.
    _, run_dir, _, name = preempted_run
    _, _, runs = reference_run
    elastic, uninterrupted = _losses_of_every_attempt(name), _losses(runs / "reference", "reference")
    worst = max(abs(elastic[s] - uninterrupted[s]) / abs(uninterrupted[s]) for s in uninterrupted)
    print(f"largest relative loss difference over {len(uninterrupted)} steps: {worst:.3g}")
    assert worst <= 1e-5
    a = load_file(str(_final_checkpoint(run_dir) / "train_state.safetensors"))
    b = load_file(str(_final_checkpoint(runs / "reference") / "train_state.safetensors"))
    params = [k for k in b if k.startswith("param/")]
    assert params and a.keys() == b.keys()
    largest = max(float((a[k] - b[k]).abs().max()) for k in params)
    print(f"largest absolute difference of the final fp32 LoRA tensors: {largest:.3g}")
    assert largest <= 1e-5
