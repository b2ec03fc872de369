"""Held-out pairs and the evaluation during training (`train.holdout_pairs`, `train.eval_every`).

Which pairs are held out and how they are deranged are pure functions, tested here without Ray; the
evaluation's independence of the world size runs the Ray-free trainer on gloo ranks
(tests/trainer_worker.py); one real job on the session's Ray cluster shows what a user gets: the W&B keys
at every evaluation, `best.json` and the best LoRA, the split in the debug dataset, and the result JSON.
"""

from __future__ import annotations

import itertools
import json
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from jobs import tiny_job
from ltx_ray.errors import ConfigError
from ltx_ray.latents import holdout
from ltx_ray.latents.reader import LatentIndex, SampleRow
from ltx_ray.train.evaluation import SIGMAS, Evaluator, improves, reference_warnings
from test_train_batches import _sample
from test_trainer import _run
from wandb_history import read_offline_history

EVAL_STEPS = 8
EVAL_EVERY = 4


def _index(names: list[str]) -> LatentIndex:
    return LatentIndex(uri="mem://", shards=(), samples=tuple(SampleRow(i, i, 0, n) for i, n in enumerate(names)))


def test_the_held_out_pairs_follow_from_their_names_whatever_their_order():
    names = [f"clip{i:02d}" for i in range(12)]
    chosen = holdout.holdout_names(names, 3)
    for order in (names[::-1], names[5:] + names[:5], sorted(names, key=lambda n: n[::-1])):
        assert holdout.holdout_names(order, 3) == chosen
    assert set(holdout.holdout_names(names, 4)) > set(chosen)  # one more held out keeps the three
    assert chosen == sorted(chosen) and len(set(chosen)) == 3


def test_a_split_trains_on_every_pair_but_the_held_out_ones_and_samples_as_many_training_pairs():
    index = _index([f"pair{i}" for i in range(7)])
    split = holdout.split(index, 2)
    assert set(split.holdout.names) == set(holdout.holdout_names(index.names, 2))
    assert not set(split.train.names) & set(split.holdout.names)
    assert set(split.train.names) | set(split.holdout.names) == set(index.names)
    assert [s.pair for s in split.train.samples] == sorted(s.pair for s in split.train.samples)
    assert len(split.train_sample) == 2 and set(split.train_sample.names) <= set(split.train.names)
    assert holdout.split(index, 0).train == index and not holdout.split(index, 0).evaluated


@pytest.mark.parametrize("held", [3, 4])
def test_holding_out_every_pair_is_refused_naming_the_field(held):
    with pytest.raises(ConfigError) as err:
        holdout.split(_index(["a", "b", "c"]), held)
    [problem] = err.value.problems
    assert problem.where == "train.holdout_pairs" and "at most 2" in problem.message


def test_validate_refuses_holding_out_every_pair_of_a_local_archive(sample_dataset, tiny_bundle):
    import subprocess

    from jobs import tiny_command

    base = tiny_command("validate", tiny_bundle, sample_dataset, "/tmp/unused-runs", "v")
    refused = subprocess.run([*base, "train.holdout_pairs=3"], capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert "train.holdout_pairs: holds out 3 of the archive's 3 accepted pair(s)" in refused.stderr
    assert subprocess.run([*base, "train.holdout_pairs=2"], capture_output=True, text=True).returncode == 0


def _evaluator(job, holdout_n: int, train_n: int, *, rank: int = 0, world: int = 1) -> Evaluator:
    sets = {"holdout": [_sample(10 + i) for i in range(holdout_n)], "train": [_sample(i) for i in range(train_n)]}
    return Evaluator(job, sets, rank=rank, world=world, device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("held, trained", [(1, 1), (2, 2), (3, 1)])
def test_the_swapped_reference_is_another_pairs_for_every_pair(tiny_bundle, sample_dataset, tmp_path, held, trained):
    job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "swap")
    ev = _evaluator(job, held, trained)
    used = []
    for split, position in ev.listed:
        own = ev.sets[split][position]
        batch = ev.batch(next(u for u in ev.units if (u.split, u.position, u.swapped) == (split, position, True)))
        plain = ev.batch(next(u for u in ev.units if (u.split, u.position, u.swapped) == (split, position, False)))
        other = ev.reference_of(split, position)
        assert other["index"] != own["index"]
        assert torch.equal(batch["ref_video"][0], other["ref_video"]) and torch.equal(batch["ref_audio"][0], other["ref_audio"])
        assert torch.equal(batch["video"][0], own["video"]) and torch.equal(batch["audio"][0], own["audio"])
        assert torch.equal(plain["ref_video"][0], own["ref_video"])
        assert batch["video"].shape[0] == len(SIGMAS)
        used.append(other["index"])
    assert sorted(used) == sorted(ev.sets[s][p]["index"] for s, p in ev.listed)  # a permutation: every reference lent once


def test_every_unit_is_evaluated_by_exactly_one_rank_and_zero3_ranks_run_as_many_forwards(tiny_bundle, sample_dataset,
                                                                                           tmp_path):
    for stage, world in itertools.product((2, 3), (1, 2, 3, 5)):
        job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "units", f"cluster.zero_stage={stage}")
        mine = [_evaluator(job, 2, 1, rank=r, world=world).mine() for r in range(world)]
        real = [u for units in mine for u in units if u is not None]
        assert sorted(real, key=str) == sorted(_evaluator(job, 2, 1).units, key=str)
        if stage == 3:
            assert len({len(units) for units in mine}) == 1  # ZeRO-3's forward is a collective


def test_a_held_out_pair_among_the_samples_trained_on_stops_the_run(tmp_path, tiny_bundle):
    """The trainer checks what it was given: sample 0 both trained on and held out is refused before any step."""
    procs_out = _run(tmp_path, tiny_bundle, world=1, steps=1, eval={"holdout": [0], "train": [1]}, expect_failure=True)
    assert "the held-out pairs [0] are among the samples trained on" in procs_out[0]["log"]


def test_a_loss_that_is_not_finite_is_never_the_best():
    assert improves(2.0, None) and improves(1.0, {"loss": 2.0}) and not improves(2.0, {"loss": 2.0})
    assert not improves(float("nan"), None) and not improves(float("nan"), {"loss": 2.0})
    assert not improves(float("inf"), None)


def test_a_modality_near_one_gets_a_sentence_pointing_at_the_advice():
    summary = {"step": 100, "eval/holdout/reference_gain_video": 2.4, "eval/holdout/reference_gain_audio": 1.03}
    [sentence] = reference_warnings(summary)
    assert sentence.startswith("audio barely depends on its reference") and "1.03" in sentence
    assert "differing only by the intended transformation" in sentence
    assert reference_warnings({**summary, "eval/holdout/reference_gain_audio": 1.6}) == []


def test_the_evaluation_is_the_same_whatever_the_world_size_and_zero_stage(tmp_path, tiny_bundle):
    """Step 0's weights are the same everywhere: its evaluation must be too, to the bit (each figure is one rank's)."""
    sets = {"holdout": [4], "train": [0]}  # 4 units: under ZeRO-3 on 3 ranks one rank runs a padding forward
    overrides = ["train.eval_every=2", "checkpoint.every=100"]
    [one] = _run(tmp_path / "w1", tiny_bundle, world=1, steps=2, eval=sets, overrides=overrides)
    three = _run(tmp_path / "w3", tiny_bundle, world=3, steps=1, eval=sets,
                 overrides=[*overrides, "cluster.zero_stage=3", "cluster.global_batch_size=3"])
    assert sorted(one["evaluations"], key=int) == ["0", "2"]  # step 0, every 2, the last
    assert sorted(three[0]["evaluations"], key=int) == ["0", "1"]
    keys = {f"eval/{s}/{k}_{m}" for s in ("holdout", "train") for k in ("loss", "reference_gain") for m in ("video", "audio")}
    assert keys <= set(one["evaluations"]["0"])
    assert {f"eval/holdout/loss_audio_sigma_{s}" for s in SIGMAS} <= set(one["evaluations"]["0"])
    for rank in three:
        assert rank["evaluations"]["0"] == one["evaluations"]["0"]
    assert "ltx-ray: eval at step 0: held-out loss video" in one["log"]


@pytest.fixture(scope="module")
def holdout_run(tmp_path_factory, tiny_bundle, sample_dataset, ray_cluster):
    """The real job with 2 of the sample archive's 3 pairs held out, evaluated every 4 steps, keeping 1 checkpoint."""
    from ltx_ray.train.driver import run_job

    runs = tmp_path_factory.mktemp("runs")
    job = tiny_job(tiny_bundle, sample_dataset, str(runs), "holdout", "train.holdout_pairs=2",
                   f"train.eval_every={EVAL_EVERY}", "checkpoint.every=100", "checkpoint.keep=1",
                   "request.debug_dataset=true", "optimizer.warmup_steps=0", steps=EVAL_STEPS)
    return job, run_job(job), runs / "holdout"


def test_a_run_with_held_out_pairs_logs_the_evaluation_at_every_eval_step(holdout_run):
    _, _, run = holdout_run
    rows = [r for r in read_offline_history(run / "outputs" / "wandb" / "run-holdout.wandb")
            if "eval/holdout/loss_video" in r]
    assert [r["_step"] for r in rows] == [0, 4, 8]
    for row in rows:
        for split, key, m in itertools.product(("holdout", "train"), ("loss", "reference_gain"), ("video", "audio")):
            assert row[f"eval/{split}/{key}_{m}"] > 0
        assert row["eval/holdout/reference_gain_video"] == pytest.approx(
            sum(row[f"eval/holdout/reference_gain_video_sigma_{s}"] * row[f"eval/holdout/loss_video_sigma_{s}"]
                for s in SIGMAS) / sum(row[f"eval/holdout/loss_video_sigma_{s}"] for s in SIGMAS), rel=1e-5)


def test_the_best_checkpoint_is_published_kept_and_named_in_the_result(holdout_run):
    from ltx_ray.train.checkpoint import LORA_FILE
    from ltx_ray.train.outputs import BEST_LORA_NAME, BEST_NAME

    _, result, run = holdout_run
    best = json.loads((run / "outputs" / BEST_NAME).read_text())
    rows = {r["_step"]: r for r in read_offline_history(run / "outputs" / "wandb" / "run-holdout.wandb")
            if "eval/holdout/loss_video" in r}
    lowest = min((4, 8), key=lambda s: rows[s]["eval/holdout/loss_video"] + rows[s]["eval/holdout/loss_audio"])
    assert best["step"] == lowest == result["best_step"]
    assert best["loss_video"] == pytest.approx(rows[lowest]["eval/holdout/loss_video"])
    assert best["loss"] == pytest.approx(rows[lowest]["eval/holdout/loss_video"] + rows[lowest]["eval/holdout/loss_audio"])
    assert result["best_lora_file"] == str(run / "outputs" / BEST_LORA_NAME)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == sorted({f"step_{EVAL_STEPS:09d}", f"step_{lowest:09d}"})  # keep=1, and the best
    published = load_file(result["best_lora_file"])
    stored = load_file(str(run / "checkpoints" / f"step_{lowest:09d}" / LORA_FILE))
    assert published.keys() == stored.keys() and all(torch.equal(published[k], stored[k]) for k in stored)
    assert result["lora_file"].endswith("ic_lora_av2av.safetensors")  # the spec's output stays the final step's


def test_the_held_out_pairs_are_never_in_a_training_batch_and_the_debug_dataset_lists_them(holdout_run):
    from ltx_ray.latents.pipeline import build_latent_cache
    from ltx_ray.train import batches

    job, result, run = holdout_run
    with zipfile.ZipFile(result["debug_dataset"]) as zf:
        listed = json.loads(zf.read("split.json"))
    assert len(listed["holdout"]) == 2 and len(listed["train"]) == 1 and not set(listed["holdout"]) & set(listed["train"])
    # What the workers trained on, as they recorded it in the final checkpoint: the pairs of their samples.
    state = json.loads((run / "checkpoints" / f"step_{EVAL_STEPS:09d}" / "progress.json").read_text())
    index = LatentIndex.read(build_latent_cache(job).uri)  # a cache hit: nothing decoded
    name_of = {row.pair: row.name for row in index.samples}
    assert [name_of[p] for p in state["trained_pairs"]] == listed["train"]
    assert sorted(state["holdout"]) == sorted(listed["holdout"]) == sorted(json.loads(
        (run / "outputs" / "best.json").read_text())["held_out_pairs"])
    # and every batch of the run is drawn from those samples alone (sample k of the k-th trained pair)
    gbs = job.cluster.global_batch_size
    for step in range(EVAL_STEPS):
        drawn = batches.sample_indices(len(state["trained_pairs"]), seed=job.seed, step=step,
                                       positions=list(range(gbs)), global_batch_size=gbs)
        assert {name_of[state["trained_pairs"][i]] for i in drawn} <= set(listed["train"])


def test_a_run_is_not_continued_with_other_held_out_pairs_unless_it_is_complete(tmp_path, tiny_bundle, sample_dataset):
    from ltx_ray.run_store import RunStore
    from ltx_ray.train.checkpoint import STATE_FILE, check_holdout_names, check_resumable, latest, publish

    job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "resume", "train.holdout_pairs=1", steps=10)
    store = RunStore(job.storage, "resume")
    local = tmp_path / "local"
    local.mkdir()
    state = {"step": 5, "global_batch_size": job.cluster.global_batch_size, "holdout_pairs": 1, "holdout": ["b"]}
    (local / STATE_FILE).write_text(json.dumps(state))
    publish(local, store, 5, keep=3)
    assert check_resumable(job, store).step == 5
    check_holdout_names(latest(store), store, ["b"])
    with pytest.raises(ConfigError, match="held out \\['b'\\], this archive's cache now gives \\['c'\\]"):
        check_holdout_names(latest(store), store, ["c"])
    other = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "resume", "train.holdout_pairs=2", steps=10)
    with pytest.raises(ConfigError) as err:
        check_resumable(other, store)
    assert err.value.problems[0].where == "train.holdout_pairs"
    other.request.number_of_steps = 5  # the checkpoint is the last step: only its outputs are published again
    assert check_resumable(other, store).step == 5


def test_pruning_keeps_the_best_checkpoint_beside_the_newest(tmp_path):
    from ltx_ray.config.schema import StorageConfig
    from ltx_ray.run_store import RunStore
    from ltx_ray.train.checkpoint import STATE_FILE, publish, scan

    store = RunStore(StorageConfig(storage_path=str(tmp_path)), "prune")
    for step, best in ((1, None), (2, 2), (3, 2), (4, 2), (5, 5)):
        local = tmp_path / f"local{step}"
        local.mkdir()
        (local / STATE_FILE).write_text(json.dumps({"step": step, "best": best and {"step": best, "loss": 1.0}}))
        publish(local, store, step, keep=1)
        kept = sorted(c.step for c in scan(store)[0])
        assert kept == sorted({step, best} - {None})
