"""One rank of a Ray-free training run (`Trainer` over `DistContext`, gloo), for tests/test_trainer.py.

    RANK=r WORLD_SIZE=w MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/trainer_worker.py SPEC.json

SPEC: checkpoint, gemma, storage, steps, overrides (key=value), hear_preemption_at (rank -> the
number of the micro-step, counted from 1, at whose check this rank first hears of a preemption),
count_syncs (bool), estimated_bytes (the run's memory estimate). Writes OUT/rank<r>.json: what the run did, as seen from inside this rank.
"""

from __future__ import annotations

import json
import os
import sys
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
        "tracking.mode=disabled", *spec.get("overrides", [])])
    # The spec's minimum of 100 steps is for requests; a test of the loop needs a few.
    job.request.number_of_steps = spec["steps"]
    record: dict = {"modes": [], "syncs_per_step": []}
    calls = {"micro": 0}
    hear_at = spec.get("hear_preemption_at", {}).get(str(rank))

    def heard() -> bool:
        calls["micro"] += 1
        return hear_at is not None and calls["micro"] >= hear_at

    ctx = DistContext([_sample(i) for i in range(4)], use_gpu=False, timeout_s=60, preemption=heard)
    trainer = Trainer(RunSetup(job=job, run_name=spec.get("run", "trainer-test"),
                               checkpoint_path=spec["checkpoint"], wandb_dir=str(Path(spec["storage"]) / "wandb"),
                               lora_metadata={"rank": str(job.request.rank)},
                               estimated_bytes=spec.get("estimated_bytes")), ctx)
    original_step = step_module.train_step

    def observed_step(engine, *args, **kwargs):
        blocks = [m for n, m in engine.module.named_modules() if n.endswith("transformer_blocks")][0]
        handle = blocks[0].register_forward_pre_hook(
            lambda module, _: record["modes"].append(module.training))
        try:
            if spec.get("count_syncs"):
                with _HostSyncs() as syncs:
                    out = original_step(engine, *args, **kwargs)
                record["syncs_per_step"].append(syncs.count)
                return out
            return original_step(engine, *args, **kwargs)
        finally:
            handle.remove()

    import ltx_ray.train.trainer as trainer_module

    trainer_module.train_step = observed_step
    trainer.train()
    record.update(recomputed_blocks=trainer.recomputed_blocks, failures=[str(p) for p in ctx.failures],
                  micro_checks=calls["micro"], peak_gib=[m.memory_peak_gib for m in trainer.history])
    (Path(spec["out"]) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
