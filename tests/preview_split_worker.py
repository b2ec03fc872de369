"""Run by test_preview_split.py as one process of a validation preview on the tiny bundle (CPU, fp32).

    python tests/preview_split_worker.py SPEC_JSON OUT_DIR

With RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in the environment the process joins a gloo
group (env:// rendezvous) as that rank, as the trainer's workers do; without them it runs alone,
with no process group. SPEC_JSON: {"overrides": [...] (conf/demo.yaml dotlist), "validation_file":
path, "run": bool (the whole `Previewer.run`, reel included, instead of `Previewer.sample`)}.
Writes OUT_DIR/rank<r>.json (the transformer's forward calls, the reel's path or null) and, for
`sample`, OUT_DIR/rank<r>.safetensors (every clip's latents).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ltx_ray.config import load_config  # noqa: E402
from ltx_ray.model.loader import load_transformer  # noqa: E402
from ltx_ray.sample.preview import Previewer  # noqa: E402

CPU = torch.device("cpu")


def main(spec_json: str, out: str) -> None:
    # One thread in every process, the lone one too: the split must be the only difference between runs.
    torch.set_num_threads(1)
    spec = json.loads(spec_json)
    rank = 0
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    job, _ = load_config(ROOT / "conf" / "demo.yaml", spec["overrides"])
    model = load_transformer(job.model.checkpoint, dtype=torch.float32, device=CPU)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    previewer = Previewer(job, Path(spec["validation_file"]), rank, CPU, torch.float32)
    reel = None
    if spec["run"]:
        reel = previewer.run(model, 7, Path(out) / f"reels-rank{rank}")
    else:
        latents = previewer.sample(model)
        tensors = {f"{kind}{i}": t.contiguous()
                   for i, pair in enumerate(latents) for kind, t in zip(("video", "audio"), pair)}
        save_file(tensors, str(Path(out) / f"rank{rank}.safetensors"))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"forwards": len(forwards), "reel": reel and str(reel)}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
