"""ZeRO-3's partitioned load of the transformer (`ltx_ray.train.zero3`), on real gloo ranks."""

import json
from pathlib import Path

import pytest
import torch

from ltx_ray.train.zero3 import load_transformer_zero3


# Run on each of two gloo ranks. DeepSpeed's CPU accelerator answers `is_fp16_supported()` from
# oneDNN, so it differs between CPUs (None on an AMD EPYC without AVX512-FP16, True on a recent
# Xeon); the script gives each answer in turn, so every machine checks both kinds.
_ZERO3_LOAD = r"""
import json, math, sys
import torch, torch.distributed as dist
import deepspeed
from deepspeed.accelerator import get_accelerator
from ltx_ray.model.loader import load_transformer
from ltx_ray.train.zero3 import load_transformer_zero3

checkpoint, ds_config, dtype = sys.argv[1], json.loads(sys.argv[2]), getattr(torch, sys.argv[3])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
reference = dict(load_transformer(checkpoint, dtype=dtype).named_parameters())
accelerator = get_accelerator()
for fp16_answer in (None, True):
    accelerator.is_fp16_supported = lambda: fp16_answer
    model = load_transformer_zero3(checkpoint, ds_config, dtype=dtype)
    params = dict(model.named_parameters())
    assert reference.keys() == params.keys()
    for name, p in params.items():
        assert p.dtype == dtype, f"{name} is {p.dtype} (fp16 supported: {fp16_answer})"
        assert p.ds_tensor.dtype == dtype, f"{name}'s shard is {p.ds_tensor.dtype} (fp16 supported: {fp16_answer})"
        assert p.numel() == 0, f"{name} is held whole on rank {rank}"
        assert p.ds_tensor.numel() == math.ceil(p.ds_numel / world), name
    for name, p in params.items():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            assert p.data.dtype == dtype and torch.equal(p.data, reference[name]), \
                f"{name} differs from the unpartitioned load"
    held = sum(p.ds_tensor.numel() for p in params.values())
    total = sum(p.ds_numel for p in params.values())
    print(f"fp16 supported {fp16_answer}: rank {rank} holds {held} of {total} in {dtype}", flush=True)
dist.destroy_process_group()
"""


def _run_ranks(script: str, *args: str, world: int = 2) -> list[str]:
    """Run `script` as `world` gloo ranks on this machine; returns their stdouts (asserting each exits 0)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(world):
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world)}
        procs.append(subprocess.Popen([sys.executable, "-c", script, *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


@pytest.mark.parametrize("generation, precision", [("2.3", "fp32"), ("2.5", "bf16")])
def test_zero3_load_partitions_the_base_in_the_requested_dtype_whatever_the_cpu(tiny_bundle, tiny_bundle_25,
                                                                                generation, precision):
    """Two ranks, the job's own DeepSpeed config: every parameter and shard is in the job's precision
    (whatever the accelerator says of fp16), no parameter is ever whole on a rank, each rank holds its
    1/world slice, and gathered they are the weights. LTX-2.5's transformer too: its keyframe marker is
    partitioned like every weight, and its video feed-forward has no biases to hold."""
    import re

    from ltx_ray.config import load_config
    from ltx_ray.train.deepspeed_config import deepspeed_config

    job, _ = load_config(Path(__file__).resolve().parents[1] / "conf" / "demo.yaml",
                         ["cluster.zero_stage=3", f"cluster.precision={precision}"])
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    checkpoint = tiny_bundle.checkpoint if generation == "2.3" else tiny_bundle_25.transformer
    outputs = _run_ranks(_ZERO3_LOAD, str(checkpoint), json.dumps(deepspeed_config(job, 2)), dtype)
    for out in outputs:
        held = re.findall(rf"fp16 supported (\w+): rank \d holds (\d+) of (\d+) in torch.{dtype}", out)
        assert [answer for answer, _, _ in held] == ["None", "True"], out
        # Each rank holds about half (ZeRO pads each tensor's last slice), never the whole model.
        for _, part, total in held:
            assert int(part) < 0.6 * int(total)


def test_zero3_load_refuses_a_dtype_its_deepspeed_config_does_not_give(tiny_bundle):
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
    with pytest.raises(ValueError, match="bf16"):
        load_transformer_zero3(tiny_bundle.checkpoint, config, dtype=torch.float32)
