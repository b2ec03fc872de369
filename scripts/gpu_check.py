#!/usr/bin/env python
"""GPU check: the tiny job's training step on CUDA in bf16 (1 worker, ZeRO-2) against the memory estimate.

    .venv/bin/python scripts/gpu_check.py [--steps 5] [--device cuda] [key=value ...]

What a GPU machine can tell that this project's CPU suite cannot:
1. builds the tiny LTX-2.3 bundle and loads its transformer on the device in
   bf16 through the product's loader, with the job's LoRA (`apply_lora`), and
   wraps it in DeepSpeed ZeRO-2 with the job's own config (`deepspeed_config`,
   world size 1, a one-process NCCL group);
2. runs `--steps` training steps of the product's av2av loss on random latents
   of the config's shapes, and reports the last step's wall time and
   `torch.cuda.max_memory_allocated` (the step's peak, after a reset);
3. prints the estimator's prediction for the same config (`ltx-ray estimate`:
   the training worker's modelled bytes, i.e. without the CUDA-context
   allowance, which `max_memory_allocated` does not see either) and the ratio.
Last line: `measured_gib=... estimated_gib=... ratio=... step_s=...`.
`--device cpu` runs the same path on CPU (gloo; the peak then comes from the
estimator's own tracker on real tensors) to check the script where no GPU is.
Nothing in the test suite depends on this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", a.device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")

    import deepspeed
    import torch
    import torch.distributed as dist

    from ltx_ray.config.load import load_config
    from ltx_ray.estimate.architecture import read_architecture, training_shapes
    from ltx_ray.estimate.estimate import GIB, estimate
    from ltx_ray.estimate.memory import random_batch
    from ltx_ray.model.loader import load_transformer
    from ltx_ray.model.lora import apply_lora
    from ltx_ray.model.objective import av2av_loss
    from ltx_ray.model.tiny import write_tiny_bundle
    from ltx_ray.train.deepspeed_config import deepspeed_config

    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu to check the script's path", file=sys.stderr)
        return 2
    checkpoint, gemma = write_tiny_bundle(Path(tempfile.mkdtemp(prefix="gpu-check-")) / "bundle")
    job, _ = load_config(ROOT / "conf" / "demo.yaml", [
        f"model.checkpoint={checkpoint}", f"model.text_encoder={gemma}", "request.training_data_url=unused.zip",
        f"cluster.use_gpu={str(a.device == 'cuda').lower()}", "cluster.precision=bf16", "cluster.zero_stage=2",
        "cluster.num_workers=1", "request.validation=[]", *a.overrides,
    ], training=False)
    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device("cpu")
    dist.init_process_group("nccl" if a.device == "cuda" else "gloo")
    torch.manual_seed(job.seed)
    transformer = load_transformer(checkpoint, dtype=torch.bfloat16, device=device)
    if job.cluster.gradient_checkpointing:
        transformer.set_gradient_checkpointing(True)
    model = apply_lora(transformer, job.request.rank, targets=job.model.lora_targets,
                       include_feed_forward=job.model.lora_include_feed_forward)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for t in trainable:
        t.data = t.data.to(device=device, dtype=torch.bfloat16)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=deepspeed_config(job, 1))
    arch = read_architecture(checkpoint)
    shapes = training_shapes(job, arch)
    batch = {k: v.to(device) for k, v in random_batch(arch, shapes, job.cluster.micro_batch_size, torch.bfloat16).items()}
    r = job.request

    def step(generator) -> None:
        loss, _ = av2av_loss(engine, batch, generator, reference_downscale_factor=r.reference_downscale_factor,
                             reference_temporal_scale_factor=r.reference_temporal_scale_factor,
                             frame_rate=float(r.frame_rate))
        engine.backward(loss)
        engine.step()

    seconds = 0.0
    for i in range(a.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        step(torch.Generator(device=device).manual_seed(i))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    if device.type == "cuda":
        measured = torch.cuda.max_memory_allocated()
        what = f"torch.cuda.max_memory_allocated of step {a.steps} on {torch.cuda.get_device_name(0)}"
    else:
        from ltx_ray.estimate.memory import training_step

        measured = training_step(arch, shapes, lora_rank=r.rank, lora_targets=job.model.lora_targets,
                                 include_feed_forward=job.model.lora_include_feed_forward, fake=False,
                                 gradient_checkpointing=job.cluster.gradient_checkpointing, gpu_attention=False,
                                 frame_rate=float(r.frame_rate)).peak
        what = "the estimator's tracker on a real CPU step (no DeepSpeed buffers)"
    est = estimate(job, alternatives=False)
    use = est.use("training worker")
    print(f"step time {seconds:.3f} s ({a.steps} steps, the last timed); measured peak {measured / GIB:.3f} GiB "
          f"({what})")
    print(f"estimate: modelled {use.modelled / GIB:.3f} GiB ("
          + ", ".join(f"{k} {v / GIB:.3f}" for k, v in use.kinds.items())
          + f"), with allowance {use.total / GIB:.3f} GiB")
    print(f"measured_gib={measured / GIB:.3f} estimated_gib={use.modelled / GIB:.3f} "
          f"ratio={use.modelled / measured:.2f} step_s={seconds:.3f}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
