"""The DeepSpeed config's ZeRO settings: sized for the LoRA, gradients in fp32, accepted by DeepSpeed 0.19.

The sizes come from `model_counts` of the tiny bundle and of the built-in 22B architecture; the last
test runs `deepspeed.initialize` and a bf16 step on the tiny model, in a process of its own (one gloo
rank, DeepSpeed's CPU accelerator), under ZeRO-2 and ZeRO-3, and reads back the buffers DeepSpeed
allocated.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest

from jobs import ROOT
from ltx_ray.config import load_config
from ltx_ray.estimate import memory
from ltx_ray.estimate.architecture import builtin_architecture, read_architecture
from ltx_ray.estimate.estimate import GIB, zero_layout
from ltx_ray.estimate.zero_settings import REDUCTIONS_PER_BACKWARD, zero_settings
from ltx_ray.model.av2av import LoraSettings
from ltx_ray.train.deepspeed_config import deepspeed_config

# DeepSpeed 0.19's defaults (deepspeed/runtime/zero/config.py), which the config replaces.
DEFAULT_REDUCE_BUCKET = 500_000_000
DEFAULT_PREFETCH_BUCKET = 50_000_000
# One feed-forward weight of the 22B: 4096 x 16384.
FEED_FORWARD_WEIGHT_22B = 4096 * 16384


@pytest.fixture(scope="module")
def counts_22b():
    return memory.model_counts(builtin_architecture(), LoraSettings(rank=32))


@pytest.fixture(scope="module")
def counts_tiny(tiny_bundle):
    return memory.model_counts(read_architecture(tiny_bundle.checkpoint), LoraSettings(rank=8))


def _job(*overrides: str):
    job, _ = load_config(ROOT / "conf" / "default.yaml", list(overrides))
    return job


@pytest.mark.parametrize("model", ["tiny", "22b"])
def test_reduce_bucket_is_an_eighth_of_the_lora_and_the_allgather_bucket_all_of_it(model, counts_tiny, counts_22b):
    counts = counts_tiny if model == "tiny" else counts_22b
    lora = counts["trainable_parameters"]
    for stage in (2, 3):
        zero = deepspeed_config(_job(f"cluster.zero_stage={stage}"), 8, counts=counts)["zero_optimization"]
        assert lora / REDUCTIONS_PER_BACKWARD <= zero["reduce_bucket_size"] <= lora / REDUCTIONS_PER_BACKWARD + 2
        assert lora <= zero["allgather_bucket_size"] <= lora + 1
        assert zero["reduce_bucket_size"] % 2 == zero["allgather_bucket_size"] % 2 == 0  # DeepSpeed's alignment
    if model == "22b":
        assert counts["lora_layers"] == 1152 and 213e6 < lora < 215e6
        # DeepSpeed's default bucket is larger than the whole LoRA: it would never fill during backward.
        assert zero["reduce_bucket_size"] * REDUCTIONS_PER_BACKWARD < DEFAULT_REDUCE_BUCKET


def test_gradients_are_reduced_and_accumulated_in_fp32_when_training_in_bf16(counts_22b):
    for stage in (2, 3):
        config = deepspeed_config(_job(f"cluster.zero_stage={stage}", "cluster.precision=bf16"), 8,
                                  counts=counts_22b)
        assert config["bf16"] == {"enabled": True}
        assert config["communication_data_type"] == "fp32"
        assert config["data_types"] == {"grad_accum_dtype": "fp32"}


@pytest.mark.parametrize("model", ["tiny", "22b"])
def test_zero3_keeps_what_is_smaller_than_an_adapted_weight_whole_and_prefetches_beyond_the_largest(
        model, counts_tiny, counts_22b):
    counts = counts_tiny if model == "tiny" else counts_22b
    zero = deepspeed_config(_job("cluster.zero_stage=3"), 8, counts=counts)["zero_optimization"]
    threshold = zero["stage3_param_persistence_threshold"]
    # Norms, biases, tables and the LoRA's A and B (rank x width) stay whole; no adapted weight does.
    assert threshold == counts["smallest_adapted_weight"] - 1
    assert zero["stage3_prefetch_bucket_size"] > counts["largest_parameter"]
    assert zero["stage3_max_live_parameters"] >= counts["block_parameters"] + zero["stage3_prefetch_bucket_size"]
    assert zero["stage3_max_reuse_distance"] >= 2 * counts["block_parameters"]
    if model == "22b":
        assert counts["smallest_adapted_weight"] == 2048 * 2048  # an audio attention projection
        assert 32 * 4096 <= threshold  # a rank-32 LoRA A of a video attention stays whole
        assert zero["stage3_prefetch_bucket_size"] > FEED_FORWARD_WEIGHT_22B > DEFAULT_PREFETCH_BUCKET
        # What stays whole on every rank is small next to the base (0.5 GB in bf16, of 38 GB).
        assert counts["small_parameters"] * 2 < 0.6e9


def test_the_estimate_reads_the_buffers_from_the_training_config(counts_22b):
    """The estimate lays out the dict `zero_settings` gives, which is the one deepspeed_config trains with."""
    lora = counts_22b["trainable_parameters"]
    for stage in (2, 3):
        job = _job(f"cluster.zero_stage={stage}", "cluster.precision=bf16", "cluster.use_gpu=true")
        config = deepspeed_config(job, 8, counts=counts_22b)
        estimated = zero_settings(counts_22b, stage=stage, overlap_comm=job.cluster.use_gpu)
        assert {k: config[k] for k in estimated} | {"zero_optimization": {
            k: config["zero_optimization"][k] for k in estimated["zero_optimization"]}} == estimated
        layout = zero_layout(counts_22b, config, world=8, element_bytes=2)
        bucket = config["zero_optimization"]["reduce_bucket_size"]
        if stage == 2:
            # Two bf16 buckets (overlap_comm), and the one being reduced: flattened (bf16) and cast (fp32).
            assert layout["ZeRO buffers"] == 2 * bucket * 2 + bucket * (2 + 4)
        else:
            # One fp32 bucket, and the one being reduced, concatenated in fp32.
            assert layout["ZeRO buffers"] == bucket * 4 + bucket * 4
            zero = config["zero_optimization"]
            working = counts_22b["block_parameters"] + zero["stage3_prefetch_bucket_size"]
            shards = -(-(counts_22b["base_parameters"] + lora) // 8)
            assert layout["parameters"] == (shards + counts_22b["small_parameters"] + working) * 2
        assert layout["ZeRO buffers"] < 0.4 * GIB  # DeepSpeed's default buckets: 2 x 5e8 x 2 B = 1.86 GiB
        assert layout["gradients"] == -(-lora // 8) * 4  # the rank's partition, summed in fp32


def test_an_unsized_config_reads_the_architecture_of_the_job_checkpoint(tiny_bundle, counts_tiny):
    job = _job(f"model.checkpoint={tiny_bundle.checkpoint}", "request.rank=8")
    assert deepspeed_config(job, 2) == deepspeed_config(job, 2, counts=counts_tiny)


# --- DeepSpeed 0.19 itself -------------------------------------------------------------------------------

# One gloo rank on DeepSpeed's CPU accelerator: for each config, the engine built as the training loop
# builds it (ZeRO-3: partitioned at load), the buffers DeepSpeed allocated, the config's bf16 micro-steps
# and their optimizer step.
_ENGINE = r"""
import json, sys
import torch, torch.distributed as dist
import deepspeed
from ltx_ray.estimate import memory
from ltx_ray.estimate.architecture import read_architecture, step_shapes
from ltx_ray.model.av2av import ReferenceScaling
from ltx_ray.model.loader import load_transformer
from ltx_ray.model.lora import apply_lora
from ltx_ray.model.objective import av2av_loss
from ltx_ray.train.zero3 import load_transformer_zero3

checkpoint, configs, rank = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo")
arch = read_architecture(checkpoint)
shapes = step_shapes(arch, resolution="low", aspect_ratio="1:1", frames=9, scaling=ReferenceScaling(frame_rate=8))
report = {}
for name, config in configs.items():
    torch.manual_seed(0)
    if config["zero_optimization"]["stage"] == 3:
        transformer = load_transformer_zero3(checkpoint, config, dtype=torch.bfloat16)
    else:
        transformer = load_transformer(checkpoint, dtype=torch.bfloat16)
    model = apply_lora(transformer, rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.to(torch.bfloat16)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=config)
    opt = engine.optimizer
    seen = {"optimizer": type(opt).__name__, "communication": str(engine.communication_data_type),
            "data_types": [str(t) for t in engine.get_data_types()]}

    def buckets():
        return sorted((b.numel(), str(b.dtype)) for bucket in opt.ipg_buckets.values()
                      for b in (bucket.buffer if isinstance(bucket.buffer, list) else [bucket.buffer]))

    if config["zero_optimization"]["stage"] == 3:
        seen["buckets"] = buckets()
        seen["grad_partitions"] = [opt.grad_partitions_flat_buffer.numel(), str(opt.grad_partitions_flat_buffer.dtype)]
        persistent = [p for p in engine.module.parameters() if p.ds_persist]
        seen["persistent"] = sum(p.ds_numel for p in persistent)
        seen["largest_persistent"] = max(p.ds_numel for p in persistent)
    else:  # ZeRO-2 allocates its buckets when backward starts and frees them when it ends
        def look(grad):
            seen.setdefault("buckets", buckets())

        trainable[0].register_hook(look)
    losses = []
    for micro in range(engine.gradient_accumulation_steps()):
        batch = memory.random_batch(arch, shapes, 1, torch.bfloat16)
        loss, _ = av2av_loss(engine, batch, torch.Generator().manual_seed(micro), shapes.scaling)
        engine.backward(loss)
        losses.append(float(loss))
        if config["zero_optimization"]["stage"] == 2:
            partition = opt.averaged_gradients[0].flat_partition
            seen.setdefault("grad_partitions", [partition.numel(), str(partition.dtype), partition.data_ptr()])
            seen["same_partition_every_micro_step"] = partition.data_ptr() == seen["grad_partitions"][2]
        engine.step()  # an optimizer step at the last micro-step only
    lora_b = [p for n, p in engine.module.named_parameters() if ".lora_B." in n]
    with deepspeed.zero.GatheredParameters(lora_b):
        seen["lora_b_moved"] = all(bool(p.detach().abs().sum() > 0) for p in lora_b)  # B starts at zero
    seen.update(losses=losses, global_steps=engine.global_steps)
    report[name] = seen
    engine.destroy()
print("REPORT " + json.dumps(report), flush=True)
dist.destroy_process_group()
"""


def _one_rank(script: str, *args: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_deepspeed_accepts_the_config_and_allocates_what_the_estimate_counts_zero2_and_zero3(tiny_bundle,
                                                                                            counts_tiny):
    """bf16 on the GPU settings (overlap_comm on), one rank, two micro-steps and a step per ZeRO stage."""
    common = (f"model.checkpoint={tiny_bundle.checkpoint}", "request.rank=8", "cluster.precision=bf16",
              "cluster.use_gpu=true", "cluster.num_workers=1", "cluster.global_batch_size=2")
    configs = {f"zero{stage}": deepspeed_config(_job(*common, f"cluster.zero_stage={stage}"), 1)
               for stage in (2, 3)}
    assert configs["zero2"]["gradient_accumulation_steps"] == 2
    out = _one_rank(_ENGINE, str(tiny_bundle.checkpoint), json.dumps(configs), "8")
    report = json.loads(out.split("REPORT ", 1)[1])
    lora = counts_tiny["trainable_parameters"]
    for name, seen in report.items():
        zero = configs[name]["zero_optimization"]
        bucket = zero["reduce_bucket_size"]
        layout = zero_layout(counts_tiny, configs[name], world=1, element_bytes=2)
        assert seen["communication"] == "torch.float32"
        assert seen["data_types"] == ["torch.bfloat16", "torch.float32"]
        assert seen["global_steps"] == 1 and all(math.isfinite(x) for x in seen["losses"]) and seen["lora_b_moved"]
        numel, dtype = seen["grad_partitions"][:2]
        assert dtype == "torch.float32" and lora <= numel <= lora + 2  # one rank's partition, summed in fp32
        assert layout["gradients"] == lora * 4
        if name == "zero2":
            assert seen["optimizer"] == "DeepSpeedZeroOptimizer"
            # overlap_comm: two buckets of reduce_bucket_size in bf16, as the estimate holds them.
            assert seen["buckets"] == [[bucket, "torch.bfloat16"]] * 2
            assert layout["ZeRO buffers"] == 2 * bucket * 2 + min(bucket, lora) * (2 + 4)
            assert seen["same_partition_every_micro_step"]
        else:
            assert seen["optimizer"] == "DeepSpeedZeroOptimizer_Stage3"
            assert seen["buckets"] == [[bucket, "torch.float32"]]
            assert layout["ZeRO buffers"] == bucket * 4 + min(bucket, lora) * 4
            # Exactly the tensors the estimate keeps whole on every rank.
            assert seen["persistent"] == counts_tiny["small_parameters"] > 0
            assert seen["largest_persistent"] <= zero["stage3_param_persistence_threshold"]
