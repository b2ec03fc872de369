"""A step is the same step at any world size: its samples and their noise follow from (seed, step, place)."""

from __future__ import annotations

import pytest
import torch

from ltx_ray.model import loader
from ltx_ray.model.lora import apply_lora
from ltx_ray.model.objective import av2av_loss
from ltx_ray.train import batches

CPU = torch.device("cpu")


def _sample(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return {
        "ref_video": torch.randn(16, 1, 2, 2, generator=g), "video": torch.randn(16, 1, 2, 2, generator=g),
        "ref_audio": torch.randn(2, 4, 16, generator=g), "audio": torch.randn(2, 4, 16, generator=g),
        "video_context": torch.randn(128, 32, generator=g), "audio_context": torch.randn(128, 32, generator=g),
        "context_mask": torch.ones(128, dtype=torch.int64), "index": i,
    }


def _step_plan(world: int, accumulation: int, *, step: int, global_batch: int, num_samples: int, seed: int = 7):
    """{place in the global batch: (sample index, that sample's first noise draws)} over every rank and micro-step."""
    plan = {}
    for rank in range(world):
        for micro in range(accumulation):
            positions = batches.micro_batch_positions(micro_step=micro, rank=rank, world_size=world,
                                                      micro_batch_size=global_batch // (world * accumulation))
            idx = batches.sample_indices(num_samples, seed=seed, step=step, positions=positions,
                                         global_batch_size=global_batch)
            for p, i, g in zip(positions, idx, batches.noise_generators(seed, step, positions, CPU)):
                assert p not in plan, f"place {p} trained twice"
                plan[p] = (i, torch.randn(4, generator=g).tolist())
    return plan


@pytest.mark.parametrize("step", [0, 3, 11])
def test_which_samples_a_step_trains_on_and_their_noise_do_not_depend_on_world_size(step):
    plans = [_step_plan(w, a, step=step, global_batch=4, num_samples=7) for w, a in ((1, 4), (2, 2), (4, 1))]
    assert sorted(plans[0]) == [0, 1, 2, 3]
    assert plans[0] == plans[1] == plans[2]
    # ...and differ from step to step.
    assert plans[0] != _step_plan(1, 4, step=step + 1, global_batch=4, num_samples=7)


def test_one_step_at_world_size_1_with_accumulation_2_has_the_mean_gradient_of_world_size_2(tiny_bundle):
    torch.manual_seed(0)
    model = apply_lora(loader.load_transformer(tiny_bundle.checkpoint), 8)
    with torch.no_grad():  # LoRA B starts at zero; give every adapter a gradient
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.02)
    trainable = [p for p in model.parameters() if p.requires_grad]
    samples = [_sample(i) for i in range(5)]
    step, seed, global_batch = 2, 7, 2

    def grads_of(rank: int, world: int, micro: int, scale: float) -> list[torch.Tensor]:
        positions = batches.micro_batch_positions(micro_step=micro, rank=rank, world_size=world, micro_batch_size=1)
        idx = batches.sample_indices(len(samples), seed=seed, step=step, positions=positions,
                                     global_batch_size=global_batch)
        loss, _ = av2av_loss(model, batches.collate(samples, idx, CPU, torch.float32),
                             batches.noise_generators(seed, step, positions, CPU))
        grads = torch.autograd.grad(loss * scale, trainable)
        return [g.detach() for g in grads]

    # World size 1, accumulation 2: DeepSpeed scales each micro-step's loss by 1/2 and sums the gradients.
    accumulated = [a + b for a, b in zip(grads_of(0, 1, 0, 0.5), grads_of(0, 1, 1, 0.5))]
    # World size 2, accumulation 1: each rank's gradient, averaged by the all-reduce.
    averaged = [(a + b) / 2 for a, b in zip(grads_of(0, 2, 0, 1.0), grads_of(1, 2, 0, 1.0))]
    assert sum(float(g.abs().sum()) for g in accumulated) > 0
    for a, b in zip(accumulated, averaged):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
