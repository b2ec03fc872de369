"""One rank of a Ray-free training run (`Trainer` over `DistContext`, gloo), for tests/test_trainer.py.

    RANK=r WORLD_SIZE=w MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/trainer_worker.py SPEC.json

SPEC: checkpoint, gemma, storage, steps, overrides (key=value), hear_preemption_at (rank -> the
number of the micro-step, counted from 1, at whose check this rank first hears of a preemption),
count_syncs (bool), eval (split -> the numbers of the `_sample`s of the held-out evaluation's sets), estimated_bytes (the run's memory estimate), latent_cache (the URI of a latent cache
holding `_sample(0..3)`, read through a `LatentReader` instead of the list), and two ways to interrupt the run as
step `k + 1` is about to start (after `k` completed steps):
  kill_at_step: k          every rank SIGKILLs itself, as a crashed machine does; rank 0 first waits until
                           the newest checkpoint in storage is the one `checkpoint.every` gives (so the
                           test knows where the resumed run goes on from).
  hold_at_step: {"step": k, "until": FILE}
                           every rank waits until FILE exists (rank 0 writes OUT/held when it is waiting):
                           the test does what it does to storage mid-run, then creates FILE.
Writes OUT/rank<r>.json: what the run did, as seen from inside this rank (`losses`: step -> loss).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from ltx_ray.config import load_config  # noqa: E402
from ltx_ray.train import step as step_module  # noqa: E402
from ltx_ray.train.context import DistContext  # noqa: E402
from ltx_ray.train.trainer import RunSetup, Trainer  # noqa: E402
from test_train_batches import _sample  # noqa: E402


class _HostSyncs(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (`.item()`, `float(t)`, `bool(t)`: aten._local_scalar_dense)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    job, _ = load_config(ROOT / "conf" / "demo.yaml", [
        "request.training_data_url=unused.zip", f"model.checkpoint={spec['checkpoint']}",
        f"model.text_encoder={spec['gemma']}", f"storage.storage_path={spec['storage']}", "request.validation=[]",
        "tracking.mode=disabled", "train.holdout_pairs=0", *spec.get("overrides", [])])
    # The spec's minimum of 100 steps is for requests; a test of the loop needs a few.
    job.request.number_of_steps = spec["steps"]
    record: dict = {"modes": [], "syncs_per_step": [], "done": []}
    calls = {"micro": 0}
    hear_at = spec.get("hear_preemption_at", {}).get(str(rank))

    def heard() -> bool:
        calls["micro"] += 1
        return hear_at is not None and calls["micro"] >= hear_at

    samples = [_sample(i) for i in range(4)]
    if spec.get("latent_cache"):  # the same samples, read from a cache as a Ray worker reads them
        from ltx_ray.latents.reader import LatentIndex, LatentReader

        per_step = job.cluster.micro_batch_size * job.cluster.accumulation_steps(int(os.environ["WORLD_SIZE"]))
        samples = LatentReader(LatentIndex.read(spec["latent_cache"]), capacity=2 * per_step)
    # spec "eval": {"holdout": [sample numbers], "train": [...]}: the held-out evaluation's sets.
    evaluated = {split: [_sample(i) for i in numbers] for split, numbers in spec["eval"].items()} if spec.get("eval") \
        else None
    ctx = DistContext(samples, use_gpu=False, timeout_s=60, preemption=heard, eval_samples=evaluated)
    run = spec.get("run", "trainer-test")
    trainer = Trainer(RunSetup(job=job, run_name=run,
                               checkpoint_path=spec["checkpoint"], wandb_dir=str(Path(spec["storage"]) / "wandb"),
                               estimated_bytes=spec.get("estimated_bytes")), ctx)
    original_step = step_module.train_step

    def interrupt(done: int) -> None:
        """What the spec asks for as step `done + 1` starts."""
        if spec.get("kill_at_step") == done:
            if rank == 0:
                from ltx_ray.run_store import RunStore
                from ltx_ray.train.checkpoint import latest

                every = job.checkpoint.every
                while (newest := latest(RunStore(job.storage, run))) is None or newest.step < done // every * every:
                    time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        hold = spec.get("hold_at_step")
        if hold and hold["step"] == done:
            if rank == 0:
                (Path(spec["out"]) / "held").write_text(str(done))
            while not Path(hold["until"]).exists():
                time.sleep(0.05)

    def observed_step(engine, samples, job_, step, *args, **kwargs):
        interrupt(step)
        record["done"].append(step + 1)
        blocks = [m for n, m in engine.module.named_modules() if n.endswith("transformer_blocks")][0]
        handle = blocks[0].register_forward_pre_hook(
            lambda module, _: record["modes"].append(module.training))
        try:
            if spec.get("count_syncs"):
                with _HostSyncs() as syncs:
                    out = original_step(engine, samples, job_, step, *args, **kwargs)
                record["syncs_per_step"].append(syncs.count)
                return out
            return original_step(engine, samples, job_, step, *args, **kwargs)
        finally:
            handle.remove()

    import ltx_ray.train.trainer as trainer_module

    trainer_module.train_step = observed_step
    trainer.train()
    record.update(recomputed_blocks=trainer.recomputed_blocks, failures=[str(p) for p in ctx.failures],
                  micro_checks=calls["micro"], peak_gib=[m.memory_peak_gib for m in trainer.history],
                  losses={done: loss for done, loss in zip(record["done"], (m.loss for m in trainer.history))},
                  evaluations={e.step: {k: v for k, v in e.metrics().items() if k != "eval/seconds"}
                               for e in trainer.evaluations})
    (Path(spec["out"]) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
