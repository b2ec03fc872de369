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
again with 2 of the 4 pairs held out and the evaluation at its default interval (`preview.every`:
at steps 0 and 100 of 100), side by side with the first: `eval_share` = the run's evaluation seconds
(`eval/seconds`, every evaluation) / its training seconds (`step_time`, every step) + those, and
the two runs' steps per second over the whole training loop (`fit`, worker start-up included).
Last line: `overhead_vs_bare=<ratio> data_stall_share=<fraction> checkpoint_stall_s=<seconds>
eval_share=<fraction> eval_steps_per_s_ratio=<with / without>`, then the benchmark's wall time
(the defaults keep it within 10 minutes on a quiet 2-core machine).
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
    # The same job holding 2 pairs out, evaluated at the default interval (train.eval_every unset: preview.every).
    evaluated, _ = load_config(ROOT / "conf" / "demo.yaml", [
        f"request.training_data_url={data.archive}", f"model.checkpoint={checkpoint}", f"model.text_encoder={gemma}",
        f"storage.storage_path={tmp / 'runs'}", "storage.run_name=bench-eval", "request.validation=[]",
        f"request.number_of_steps={args.steps}", "cluster.num_workers=1", "cluster.resources_per_worker={CPU: 1}",
        "cluster.gradient_checkpointing=false", f"checkpoint.every={args.checkpoint_every}",
        "train.holdout_pairs=2", "train.eval_every=null"])
    ray.init(address="local", num_cpus=2, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    plain_fit = run_training(job).seconds
    eval_fit = run_training(evaluated).seconds
    eval_rows = read_offline_history(Path(RunStore(evaluated.storage, "bench-eval").output("wandb")) / "run-bench-eval.wandb")
    eval_seconds = sum(r["eval/seconds"] for r in eval_rows if "eval/seconds" in r)
    eval_train_seconds = sum(r["step_time"] for r in eval_rows if "step_time" in r)
    evaluations = [r["_step"] for r in eval_rows if "eval/seconds" in r]
    eval_share = eval_seconds / (eval_seconds + eval_train_seconds)
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
    print(f"evaluation (2 held-out pairs, at steps {evaluations}): {eval_seconds:.2f} s against "
          f"{eval_train_seconds:.1f} s of training steps; whole loop {args.steps / plain_fit:.2f} steps/s without, "
          f"{args.steps / eval_fit:.2f} with (worker start-up included)")
    print(f"overhead_vs_bare={ray_median / bare_median:.2f} data_stall_share={statistics.median(stall):.4f} "
          f"checkpoint_stall_s={checkpoint_stall:.3f} eval_share={eval_share:.4f} "
          f"eval_steps_per_s_ratio={plain_fit / eval_fit:.3f}")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
