"""Run by test_train_state.py in a fresh process (one gloo rank): train 2 steps under ZeRO `A`, gather and save
the training state, load it into a new engine under ZeRO `B`, and print JSON comparing one more step on each.

    python tests/zero_stage_swap.py CHECKPOINT GEMMA_DIR OUT_DIR STAGE_A STAGE_B
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ltx_ray.config import load_config  # noqa: E402
from ltx_ray.model.objective import av2av_loss  # noqa: E402
from ltx_ray.train import batches, train_state  # noqa: E402
from ltx_ray.train.engine import build_engine  # noqa: E402
from test_train_batches import _sample  # noqa: E402

CPU = torch.device("cpu")


def main(checkpoint: str, gemma: str, out: str, stage_a: int, stage_b: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo")
    samples = [_sample(i) for i in range(3)]

    def engine_for(stage: int):
        job, _ = load_config(ROOT / "conf" / "demo.yaml", [
            "request.training_data_url=unused.zip", f"model.checkpoint={checkpoint}", f"model.text_encoder={gemma}",
            f"cluster.zero_stage={stage}", "cluster.num_workers=1", "cluster.gradient_checkpointing=false"])
        return build_engine(job, checkpoint, 1, CPU, torch.float32)

    def step(engine, n: int) -> float:
        idx = batches.sample_indices(len(samples), seed=1, step=n, positions=[0], global_batch_size=1)
        loss, _ = av2av_loss(engine, batches.collate(samples, idx, CPU, torch.float32),
                             batches.noise_generators(1, n, [0], CPU))
        engine.backward(loss)
        engine.step()
        return float(loss)

    a = engine_for(stage_a)
    for n in range(2):
        step(a, n)
    tensors, meta = train_state.gather(a)
    train_state.save(tensors, meta, Path(out))
    b = engine_for(stage_b)
    train_state.load(b, *train_state.read(Path(out)))
    reloaded, meta_b = train_state.gather(b)
    loss_a, loss_b = step(a, 2), step(b, 2)
    after_a, _ = train_state.gather(a)
    after_b, _ = train_state.gather(b)
    print(json.dumps({
        "tensors": len(tensors),
        "reload_max_diff": max(float((tensors[k] - reloaded[k]).abs().max()) for k in tensors),
        "adam_step": [meta["adam_step"], meta_b["adam_step"]],
        "lr": [a.get_lr()[0], b.get_lr()[0]],
        "next_loss": [loss_a, loss_b],
        "next_step_max_diff": max(float((after_a[k] - after_b[k]).abs().max()) for k in after_a),
        "moved": max(float((after_a[k] - tensors[k]).abs().max()) for k in tensors if k.startswith("param/")),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
