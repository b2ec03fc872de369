#!/usr/bin/env python
"""GPU check: the product's own trainer on every GPU of this machine, then a real-width step against the estimate.

    python scripts/gpu_check.py            # CUDA: NCCL, bf16, one rank per GPU (one GPU is enough)
    python scripts/gpu_check.py --cpu      # the same checks on CPU: gloo, 2 ranks, tiny sizes (the suite runs it)

Needs no Ray and no W&B (`scripts/gpu_check.sh` packs what an air-gapped GPU machine lacks). Checks:
1. the tiny LTX-2.3 bundle trained by `Trainer` (ltx_ray.train.trainer) over a plain torch.distributed
   context (`DistContext`), bf16 on CUDA, gradient checkpointing on, ZeRO-2 then ZeRO-3, 3 steps each:
   finite loss, non-zero LoRA gradients, ltx-core's blocks recomputed in backward, the step-3 checkpoint
   written and loaded back into a new engine bit for bit, the held-out evaluation at steps 0 and 3 (bf16 forwards
   and CUDA generators on the device; its one all-reduce, NCCL, with more than one GPU), one preview with all four guidance passes
   (spread over the ranks under ZeRO-2) decoded tiled into the reel;
2. `ltx-ray generate` (`ltx_ray.sample.generate`) on the ZeRO-2 run's LoRA: an mp4 with video and audio;
3. a real-width step: the LTX-2.3 22B block configuration (`--cpu`: the tiny one) with 2 and 4 blocks at
   `conf/default.yaml`'s 768x768x89 + reference in bf16, through the product's engine (ZeRO-2 over every
   rank): peak memory and ms per block, extended to the model's 48 blocks, set against `ltx-ray estimate`
   for the same model (fails beyond 15 %), and MFU from the step's FLOPs.
Last line: `gpu_check: N/N ok estimate_vs_measured=... ms_per_block=... mfu=...`; exit 0 only when all pass.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = 3
MEMORY_TOLERANCE = 0.15
# Dense bf16 peak of the GPUs this check expects (NVIDIA's datasheets, SXM parts), for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU with gloo and the tiny sizes")
    p.add_argument("--world", type=int, default=None, help="ranks (default: every GPU; 2 with --cpu)")
    p.add_argument("--skip-real-width", action="store_true", help="only the tiny bundle's checks")
    a = p.parse_args()
    if "GPU_CHECK_WORKDIR" in os.environ:
        return _rank_main(a)
    os.environ["DS_ACCELERATOR"] = "cpu" if a.cpu else "cuda"
    import torch

    if not a.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (run with --cpu to check the path on CPU)", file=sys.stderr)
        return 2
    world = a.world or (2 if a.cpu else torch.cuda.device_count())
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    _prepare(work, cpu=a.cpu)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GPU_CHECK_WORKDIR": str(work), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
           "WANDB_MODE": "disabled"}
    procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:]], cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(world)]
    codes = [proc.wait() for proc in procs]
    return max(codes)


# --- the launcher's preparation: the tiny bundle, a reference clip, the validation set ------------------


def _prepare(work: Path, *, cpu: bool) -> None:
    from synthetic import write_sample_dataset
    from ltx_ray.model.tiny import write_tiny_bundle
    from ltx_ray.sample.conditioning import build_validation_set

    checkpoint, gemma = write_tiny_bundle(work / "bundle")
    data = write_sample_dataset(work / "data")
    job = _tiny_job(work, checkpoint, gemma, data.validation_ref, cpu=cpu, stage=2, world=1)
    build_validation_set(job, work / "validation.safetensors")
    (work / "inputs.json").write_text(json.dumps({"checkpoint": str(checkpoint), "gemma": str(gemma),
                                                  "reference": str(data.validation_ref)}))


def _tiny_job(work: Path, checkpoint, gemma, reference, *, cpu: bool, stage: int, world: int):
    from ltx_ray.config import load_config

    job, _ = load_config(ROOT / "conf" / "demo.yaml", [
        "request.training_data_url=unused.zip", f"model.checkpoint={checkpoint}", f"model.text_encoder={gemma}",
        f"request.validation=[{{prompt: 'av_st9le a moving square', reference_video_url: '{reference}'}}]",
        f"cluster.use_gpu={str(not cpu).lower()}", f"cluster.precision={'fp32' if cpu else 'bf16'}",
        f"cluster.zero_stage={stage}", f"cluster.num_workers={world}", "cluster.gradient_checkpointing=true",
        f"storage.storage_path={work / 'runs'}", "tracking.mode=disabled", f"checkpoint.every={STEPS}",
        f"preview.every={STEPS}", "preview.inference_steps=2", "train.holdout_pairs=2", f"train.eval_every={STEPS}"])
    job.request.number_of_steps = STEPS  # the spec's 100-step minimum is for requests, not for this check
    return job


# --- one rank ----------------------------------------------------------------------------------------------


class Checks:
    """Named pass/fail results; rank 0 prints them."""

    def __init__(self, rank: int):
        self.rank, self.results, self.figures = rank, [], {}

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.results.append((name, bool(ok)))
        if self.rank == 0 or not ok:
            if not ok and self.rank:
                name = f"{name} (rank {self.rank})"
            print(f"gpu_check: {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    def run(self, name: str, fn) -> None:
        """Run a group of checks; an exception fails the group (and is printed) instead of ending the check."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the check reports every failure, then exits non-zero
            traceback.print_exc()
            self.check(name, False, f"{type(exc).__name__}: {exc}")


def _rank_main(a) -> int:
    import torch

    from ltx_ray.train.context import DistContext

    work = Path(os.environ["GPU_CHECK_WORKDIR"])
    inputs = json.loads((work / "inputs.json").read_text())
    cpu = a.cpu
    world = int(os.environ["WORLD_SIZE"])
    samples = _tiny_samples(inputs["checkpoint"])
    # Four to train on, two held out: the evaluation's forwards on the device (its all-reduce with 2+ GPUs).
    ctx = DistContext(samples[:4], use_gpu=not cpu, timeout_s=600,
                      eval_samples={"holdout": samples[4:], "train": samples[:2]})
    checks = Checks(ctx.rank)
    if ctx.rank == 0:
        device = torch.cuda.get_device_name(ctx.device) if not cpu else "CPU"
        print(f"gpu_check: {world} rank(s) on {device}, torch {torch.__version__}", flush=True)
    lora = {}
    for stage in (2, 3):
        checks.run(f"zero{stage}", lambda stage=stage: _train_tiny(checks, ctx, work, inputs, stage, world, cpu, lora))
    if ctx.rank == 0:
        checks.run("generate", lambda: _generate(checks, work, inputs, lora.get(2), cpu))
    torch.distributed.barrier()
    if not a.skip_real_width:
        checks.run("real-width step", lambda: _real_width(checks, ctx, inputs, world, cpu))
    # Every rank runs the same checks: the count is that of the rank with the most failures.
    failed = torch.tensor([sum(not ok for _, ok in checks.results)], device=ctx.device)
    torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
    passed = len(checks.results) - int(failed.item())
    if ctx.rank == 0:
        f = checks.figures
        print(f"gpu_check: {passed}/{len(checks.results)} ok estimate_vs_measured={f.get('ratio', 'n/a')} "
              f"ms_per_block={f.get('ms_per_block', 'n/a')} mfu={f.get('mfu', 'n/a')}", flush=True)
    torch.distributed.destroy_process_group()
    return 0 if passed == len(checks.results) else 1


def _tiny_samples(checkpoint: str) -> list[dict]:
    """Six random latent samples of the demo config's shapes for the tiny bundle (the same on every rank)."""
    import torch

    from ltx_ray.config import load_config
    from ltx_ray.estimate.architecture import read_architecture, training_shapes
    from ltx_ray.estimate.memory import random_batch

    job, _ = load_config(ROOT / "conf" / "demo.yaml", ["request.training_data_url=unused.zip",
                                                        f"model.checkpoint={checkpoint}", "request.validation=[]"])
    arch = read_architecture(checkpoint)
    torch.manual_seed(0)
    batch = random_batch(arch, training_shapes(job, arch), 6, torch.float32)
    return [{**{k: v[i] for k, v in batch.items()}, "index": i} for i in range(6)]


def _train_tiny(checks: Checks, ctx, work: Path, inputs: dict, stage: int, world: int, cpu: bool, lora: dict):
    import torch

    from ltx_ray.config.resolution import bucket_size
    from ltx_ray.estimate.estimate import estimate
    from ltx_ray.model.vae import validation_tiling
    from ltx_ray.sample.sampler import guidance_from_config
    from ltx_ray.train import checkpoint as ckpt, train_state
    from ltx_ray.model.av2av import precision_dtype
    from ltx_ray.train.engine import build_engine
    from ltx_ray.run_store import RunStore
    from ltx_ray.train.trainer import RunSetup, Trainer

    job = _tiny_job(work, inputs["checkpoint"], inputs["gemma"], inputs["reference"], cpu=cpu, stage=stage,
                    world=world)
    run = f"zero{stage}"
    estimated = estimate(job, alternatives=False, gpu_attention=not cpu).use("training worker").modelled
    trainer = Trainer(RunSetup(job=job, run_name=run, checkpoint_path=inputs["checkpoint"],
                               wandb_dir=str(work / "wandb"),
                               validation_file=str(work / "validation.safetensors"), estimated_bytes=estimated), ctx)
    trainer.train()
    torch.distributed.barrier()  # rank 0's checkpoint writer has finished uploading
    h = trainer.history
    name = f"zero{stage}"
    checks.check(f"{name} {len(h)} steps, finite loss", len(h) == STEPS and all(math.isfinite(m.loss) for m in h),
                 ", ".join(f"{m.loss:.4f}" for m in h))
    checks.check(f"{name} non-zero LoRA gradients", all(m.grad_norm > 0 and math.isfinite(m.grad_norm) for m in h),
                 ", ".join(f"{m.grad_norm:.3g}" for m in h))
    checks.check(f"{name} gradient checkpointing active", trainer.recomputed_blocks > 0,
                 f"{trainer.recomputed_blocks} block forwards recomputed in step 1")
    checks.check(f"{name} memory measured", h[0].memory_peak_gib > 0, f"{h[0].memory_peak_gib:.3f} GiB in step 1")
    evaluations = trainer.evaluations
    figures = [v for e in evaluations for v in e.metrics().values()]
    checks.check(f"{name} held-out evaluation at steps 0 and {STEPS}",
                 [e.step for e in evaluations] == [0, STEPS] and all(math.isfinite(v) and v > 0 for v in figures),
                 "; ".join(e.line() for e in evaluations))
    # The checkpoint, loaded back into a fresh engine, gives back exactly the state it holds.
    store = RunStore(job.storage, run)
    final = ckpt.latest(store)
    engine = build_engine(job, inputs["checkpoint"], world, ctx.device, precision_dtype(job.cluster.precision))
    restored = ckpt.restore(engine, store, ctx.rank)
    tensors, _ = train_state.gather(engine)
    saved, _ = train_state.read(Path(final.uri.removeprefix("file://")))
    diff = max(float((tensors[k] - saved[k]).abs().max()) for k in saved)
    checks.check(f"{name} checkpoint round trip", final.step == STEPS and restored["step"] == STEPS and diff == 0.0,
                 f"step {final.step}, {len(saved)} tensors, max difference {diff}")
    passes = guidance_from_config(job, engine.module).passes
    reel = Path(store.output(f"validation_step_{STEPS:06d}.mp4").removeprefix("file://"))
    # The preview's clip is wider than one of the official validation's tiles: decoded tile by tile.
    width, height = bucket_size(job.request.validation_resolution, job.request.validation_aspect_ratio)
    tile = validation_tiling().spatial_config.tile_size_in_pixels
    checks.check(f"{name} preview", len(passes) == 4 and reel.is_file() and max(width, height) > tile,
                 f"passes {', '.join(passes)}; {width}x{height} decoded in {tile} px tiles; {reel.name}")
    lora[stage] = str(Path(final.uri.removeprefix("file://")) / ckpt.LORA_FILE)
    del engine
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def _generate(checks: Checks, work: Path, inputs: dict, lora_file: str | None, cpu: bool) -> None:
    from ltx_ray.clips.media.probe import probe
    from ltx_ray.sample.generate import GenerateRequest, generate

    job = _tiny_job(work, inputs["checkpoint"], inputs["gemma"], inputs["reference"], cpu=cpu, stage=2, world=1)
    out = generate(job, GenerateRequest(lora=lora_file, reference_video=inputs["reference"],
                                        prompt="av_st9le a moving square", out=str(work / "generated.mp4")))
    info = probe(Path(out))
    checks.check("generate on the LoRA", info.has_audio and info.frames > 0,
                 f"{Path(out).name}: {info.width}x{info.height}, {info.frames} frames, audio {info.has_audio}")


# --- the real-width step -------------------------------------------------------------------------------------


def _real_width(checks: Checks, ctx, inputs: dict, world: int, cpu: bool) -> None:
    import torch

    from ltx_ray.config import load_config
    from ltx_ray.estimate.architecture import builtin_architecture, read_architecture, training_shapes
    from ltx_ray.estimate.estimate import GIB, estimate
    from ltx_ray.estimate.memory import random_batch
    from ltx_ray.model.av2av import precision_dtype

    if cpu:
        config, overrides = ROOT / "conf" / "demo.yaml", [f"model.checkpoint={inputs['checkpoint']}",
                                                          "cluster.precision=fp32"]
        arch = read_architecture(inputs["checkpoint"])
    else:  # a path that does not exist: the estimator takes the built-in 22B configuration, as this check does
        config, overrides = ROOT / "conf" / "default.yaml", ["model.checkpoint=ltx-2.3-22b-dev.safetensors",
                                                             "cluster.precision=bf16"]
        arch = builtin_architecture()
    job, _ = load_config(config, ["request.training_data_url=unused.zip", "request.validation=[]",
                                  f"cluster.use_gpu={str(not cpu).lower()}", "cluster.zero_stage=2",
                                  f"cluster.num_workers={world}", "cluster.gradient_checkpointing=true",
                                  "tracking.mode=disabled", *overrides], training=False)
    depth = int(arch.transformer["num_layers"])
    shapes = training_shapes(job, arch)
    dtype = precision_dtype(job.cluster.precision)
    torch.manual_seed(ctx.rank)
    batch = random_batch(arch, shapes, 1, dtype)
    samples = [{**{k: v[0] for k, v in batch.items()}, "index": 0}]
    measured = {}
    for blocks in (2, 4):
        measured[blocks] = _blocks_step(job, arch, blocks, samples, ctx, dtype)
        if ctx.rank == 0:
            peak, seconds, flops = measured[blocks]
            print(f"gpu_check: {blocks} blocks: peak {peak / GIB:.2f} GiB, step {seconds * 1000:.0f} ms, "
                  f"{flops / 1e12:.2f} TFLOP", flush=True)
    (p2, t2, f2), (p4, t4, f4) = measured[2], measured[4]
    per_block_bytes, per_block_s, per_block_flops = (p4 - p2) / 2, (t4 - t2) / 2, (f4 - f2) / 2
    at_depth = p2 + per_block_bytes * (depth - 2)
    est = estimate(job, alternatives=False, gpu_attention=not cpu).use("training worker").modelled
    ratio = est / at_depth
    checks.figures["ratio"] = f"{ratio:.2f}"
    checks.figures["ms_per_block"] = f"{per_block_s * 1000:.1f}"
    checks.check(f"real-width memory at {depth} blocks within {MEMORY_TOLERANCE:.0%} of the estimate",
                 abs(ratio - 1) <= MEMORY_TOLERANCE,
                 f"measured {at_depth / GIB:.2f} GiB (2 blocks {p2 / GIB:.2f}, +{per_block_bytes / GIB:.3f} per block), "
                 f"estimated {est / GIB:.2f} GiB")
    peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if not cpu and k in torch.cuda.get_device_name()), None)
    if peak_flops is not None and per_block_s > 0:
        mfu = per_block_flops / per_block_s / peak_flops
        checks.figures["mfu"] = f"{mfu:.2f}"
    checks.check("real-width step time per block positive", per_block_s > 0, f"{per_block_s * 1000:.1f} ms")


def _blocks_step(job, arch, blocks: int, samples, ctx, dtype) -> tuple[int, float, float]:
    """(peak bytes, seconds, model FLOPs) of the second of two training steps of a `blocks`-block model."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ltx_ray.model.tiny import initialised
    from ltx_ray.model.transformer import TransformerConfigurator
    from ltx_ray.train.engine import build_engine
    from ltx_ray.train.step import StepShape, train_step
    from ltx_ray.train.trainer import PeakMemory

    config = copy.deepcopy(arch.config)
    config["transformer"]["num_layers"] = blocks
    torch.manual_seed(job.seed)
    with torch.device(ctx.device):
        transformer = initialised(TransformerConfigurator.from_config(config)).to(dtype)
    engine = build_engine(job, transformer, ctx.world_size, ctx.device, dtype)
    c = job.cluster
    shape = StepShape(rank=ctx.rank, world=ctx.world_size, accumulation=c.accumulation_steps(ctx.world_size),
                      micro_batch_size=c.micro_batch_size, global_batch_size=c.global_batch_size)
    train_step(engine, samples, job, 0, shape, ctx.device, dtype)  # AdamW's state exists from here on
    memory = PeakMemory(engine, ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    memory.start()
    started = time.perf_counter()
    train_step(engine, samples, job, 1, shape, ctx.device, dtype)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - started
    peak = memory.stop()
    # Model FLOPs: the step as executed, less the blocks' second forward (gradient checkpointing's recompute).
    with FlopCounterMode(display=False) as counter:
        train_step(engine, samples, job, 2, shape, ctx.device, dtype)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        engine.module(**_forward_inputs(engine, samples, job, ctx.device, dtype))
    flops = counter.get_total_flops() - forward.get_total_flops()
    del engine, transformer
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return peak, seconds, flops


def _forward_inputs(engine, samples, job, device, dtype) -> dict:
    """The transformer's inputs of one training micro-batch (`video`, `audio`, no perturbations)."""
    import torch

    from ltx_ray.model.av2av import ReferenceScaling
    from ltx_ray.model.objective import av2av_inputs
    from ltx_ray.train import batches

    batch = batches.collate(samples, [0], device, dtype)
    video, audio = av2av_inputs(batch, [torch.Generator(device=device).manual_seed(0)],
                                ReferenceScaling.from_request(job.request))
    return {"video": video.modality, "audio": audio.modality, "perturbations": None}


if __name__ == "__main__":
    raise SystemExit(main())
