#!/usr/bin/env python
"""Benchmark the training loop: Ray Train + DeepSpeed against a bare PyTorch loop, side by side.

    python scripts/bench_train.py [--steps 100]

Both loops train the tiny model's LoRA on the same cached latents, with the
same objective (`av2av_loss`), micro-batch 1, one CPU thread:
- the full job's loop: one Ray Train worker running DeepSpeed ZeRO-2
  (step times read from its offline W&B run, where the loop logs every step);
- a bare single-process loop: PEFT model + torch AdamW + grad clipping.
Medians skip the first 10 steps (warm-up). The job's run checkpoints every
`--checkpoint-every` steps; `checkpoint_stall_s` is the median time from the
log of a step that writes a checkpoint to the next step's, less the same for
steps that write none (the upload itself runs in the background). The held-out evaluation's cost (`train.holdout_pairs`, `ltx_ray.train.evaluation`): the same job
without and with 2 of the 4 pairs held out, the evaluation at its default interval (`preview.every`:
at steps 0 and 100 of 100), side by side; steps per second over the training loop (every step's
`step_time` plus every evaluation's `eval/seconds`, from the W&B histories) and over the whole fit.
`eval_share` = 1 - with / without, at conf/default.yaml's global batch of 8 (here 1 worker
accumulating 8 micro-steps; run-to-run noise in the step times is of the same order),
`eval_time_share` the share of that run's loop spent evaluating, `eval_share_batch1` = 1 - with /
without at one sample per step.
Last line: `overhead_vs_bare=<ratio> data_stall_share=<fraction> checkpoint_stall_s=<seconds>
eval_share=<fraction> eval_time_share=<fraction> eval_share_batch1=<fraction>`, then the benchmark's wall time (the defaults
keep it within 10 minutes on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
import torch  # noqa: E402

from ltx_ray.config import load_config  # noqa: E402
from ltx_ray.latents.pipeline import build_latent_cache  # noqa: E402
from ltx_ray.latents.reader import LatentIndex, LatentReader  # noqa: E402
from synthetic import write_sample_dataset  # noqa: E402
from ltx_ray.model.av2av import ReferenceScaling  # noqa: E402
from ltx_ray.model.loader import load_transformer  # noqa: E402
from ltx_ray.model.lora import apply_lora  # noqa: E402
from ltx_ray.model.objective import av2av_loss  # noqa: E402
from ltx_ray.model.tiny import write_tiny_bundle  # noqa: E402
from ltx_ray.train import batches  # noqa: E402
from ltx_ray.train.driver import run_training  # noqa: E402
from ltx_ray.run_store import RunStore  # noqa: E402
from wandb_history import read_offline_history  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 10


def bare_loop(job, samples, steps: int) -> list[float]:
    """Step times of a plain single-process PyTorch loop over the same data and objective."""
    torch.set_num_threads(1)
    torch.manual_seed(job.seed)
    model = apply_lora(load_transformer(job.model.checkpoint), job.request.rank, targets=job.model.lora_targets)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=job.request.learning_rate)
    times = []
    for step in range(steps):
        started = time.perf_counter()
        idx = batches.sample_indices(len(samples), seed=job.seed, step=step, positions=[0], global_batch_size=1)
        batch = batches.collate(samples, idx, torch.device("cpu"), torch.float32)
        generator = torch.Generator().manual_seed(step)
        loss, _ = av2av_loss(model, batch, generator, ReferenceScaling.from_request(job.request))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, job.optimizer.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return times


def evaluation_cost(data, checkpoint, gemma, tmp: Path, args, gbs: int) -> dict:
    """Steps per second of the job without and with held-out pairs (2 of 4), side by side: over the training
    loop (every step's time plus every evaluation's, from the runs' W&B histories) and over the whole fit."""
    out: dict = {}
    for holdout, key in ((0, "without"), (2, "with")):
        run = f"bench-eval-{gbs}-{holdout}"
        job, _ = load_config(ROOT / "conf" / "demo.yaml", [
            f"request.training_data_url={data.archive}", f"model.checkpoint={checkpoint}",
            f"model.text_encoder={gemma}", f"storage.storage_path={tmp / 'runs'}", f"storage.run_name={run}",
            "request.validation=[]", f"request.number_of_steps={args.steps}", "cluster.num_workers=1",
            "cluster.resources_per_worker={CPU: 1}", "cluster.gradient_checkpointing=false",
            f"cluster.global_batch_size={gbs}", f"checkpoint.every={args.steps}",
            f"train.holdout_pairs={holdout}", "train.eval_every=null"])
        fit = run_training(job).seconds
        rows = read_offline_history(Path(RunStore(job.storage, run).output("wandb")) / f"run-{run}.wandb")
        evaluated = sum(r["eval/seconds"] for r in rows if "eval/seconds" in r)
        out[key] = args.steps / (sum(r["step_time"] for r in rows if "step_time" in r) + evaluated)
        out[f"fit_{key}"] = args.steps / fit
        if holdout:
            out["eval_s"], out["steps"] = evaluated, [r["_step"] for r in rows if "eval/seconds" in r]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="at least 100, the spec's minimum (default 100)")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    checkpoint, gemma = write_tiny_bundle(tmp / "bundle")
    data = write_sample_dataset(tmp / "data", 4, fps=16, seconds=2.0, width=160, height=90)
    job, _ = load_config(
        ROOT / "conf" / "demo.yaml",
        [
            f"request.training_data_url={data.archive}", f"model.checkpoint={checkpoint}",
            f"model.text_encoder={gemma}", f"storage.storage_path={tmp / 'runs'}", "storage.run_name=bench",
            "request.validation=[]", f"request.number_of_steps={args.steps}", "cluster.num_workers=1",
            "cluster.resources_per_worker={CPU: 1}", "cluster.gradient_checkpointing=false",
            f"checkpoint.every={args.checkpoint_every}", "train.holdout_pairs=0",
        ],
    )
    ray.init(address="local", num_cpus=2, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    run_training(job)
    # The held-out evaluation's cost: the same job without and with 2 of the 4 pairs held out, evaluated at the
    # default interval (train.eval_every unset: preview.every), side by side, at conf/default.yaml's global batch
    # (8: 8 workers x micro-batch 1; here 1 worker accumulating 8) and at the benchmark's own (1).
    costs = {gbs: evaluation_cost(data, checkpoint, gemma, tmp, args, gbs) for gbs in (8, 1)}
    history = [r for r in read_offline_history(Path(RunStore(job.storage, "bench").output("wandb")) / "run-bench.wandb")
               if "step_time" in r]
    ray_steps = [r["step_time"] for r in history][WARMUP:]
    stall = [r["data_time"] / r["step_time"] for r in history][WARMUP:]
    stamps = {r["_step"]: r["_timestamp"] for r in history}
    after = {s: stamps[s + 1] - stamps[s] for s in stamps if s + 1 in stamps and s > WARMUP}
    with_checkpoint = [t for s, t in after.items() if s % args.checkpoint_every == 0]
    without = [t for s, t in after.items() if s % args.checkpoint_every]
    checkpoint_stall = statistics.median(with_checkpoint) - statistics.median(without)

    cache = build_latent_cache(job, RunStore(job.storage, "bench"))
    samples = list(LatentReader(LatentIndex.read(cache.uri, job.storage), job.storage))  # the whole (small) set
    ray.shutdown()
    bare = bare_loop(job, samples, args.steps)[WARMUP:]

    ray_median, bare_median = statistics.median(ray_steps), statistics.median(bare)
    print(f"median step: Ray Train + DeepSpeed {ray_median * 1000:.1f} ms, bare PyTorch {bare_median * 1000:.1f} ms")
    print(f"{len(with_checkpoint)} steps that checkpoint: {statistics.median(with_checkpoint) * 1000:.0f} ms to the "
          f"next step's log, others {statistics.median(without) * 1000:.0f} ms")
    for gbs, c in costs.items():
        print(f"evaluation, global batch {gbs} (2 held-out pairs, at steps {c['steps']}): {c['eval_s']:.2f} s; "
              f"steps/s without {c['without']:.2f}, with {c['with']:.2f} (training steps and evaluations; "
              f"whole fit, worker start-up included: {c['fit_without']:.2f} and {c['fit_with']:.2f})")
    print(f"overhead_vs_bare={ray_median / bare_median:.2f} data_stall_share={statistics.median(stall):.4f} "
          f"checkpoint_stall_s={checkpoint_stall:.3f} eval_share={1 - costs[8]['with'] / costs[8]['without']:.4f} "
          f"eval_time_share={costs[8]['eval_s'] * costs[8]['with'] / args.steps:.4f} "
          f"eval_share_batch1={1 - costs[1]['with'] / costs[1]['without']:.4f}")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
