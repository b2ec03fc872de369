"""The av2av IC-LoRA step on the tiny transformer: reference tokens are clean context, only targets are scored."""

import pytest
import torch

from ltx_ray.model import loader
from ltx_ray.model.lora import apply_lora
from ltx_ray.model.objective import av2av_inputs, av2av_loss


def _batch(seed=1, b=1, video=(1, 2, 2), audio=4):
    g = torch.Generator().manual_seed(seed)
    return {
        "ref_video": torch.randn(b, 16, *video, generator=g),
        "video": torch.randn(b, 16, *video, generator=g),
        "ref_audio": torch.randn(b, 2, audio, 16, generator=g),
        "audio": torch.randn(b, 2, audio, 16, generator=g),
        "video_context": torch.randn(b, 128, 32, generator=g),
        "audio_context": torch.randn(b, 128, 32, generator=g),
        "context_mask": torch.ones(b, 128, dtype=torch.int64),
    }


@pytest.fixture
def transformer(tiny_bundle):
    torch.manual_seed(0)
    return loader.load_transformer(tiny_bundle.checkpoint)


def test_reference_tokens_get_timestep_0_and_targets_get_sigma():
    video_in, audio_in = av2av_inputs(_batch(b=2), torch.Generator().manual_seed(0))
    for inputs, n_ref in ((video_in, 4), (audio_in, 4)):
        t = inputs.modality.timesteps
        assert inputs.reference_tokens == n_ref
        assert torch.all(t[:, :n_ref] == 0)
        assert torch.allclose(t[:, n_ref:], inputs.sigma[:, None].expand_as(t[:, n_ref:]))
        assert torch.all(inputs.sigma > 0)
    # Video and audio noise levels are drawn independently.
    assert not torch.equal(video_in.sigma, audio_in.sigma)


def test_timesteps_stay_float32_with_bf16_latents():
    batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _batch(b=2).items()}
    fp32_in = av2av_inputs(_batch(b=2), torch.Generator().manual_seed(0))
    for inputs, same in zip(av2av_inputs(batch, torch.Generator().manual_seed(0)), fp32_in):
        m = inputs.modality
        assert m.latent.dtype == torch.bfloat16
        assert m.sigma.dtype == torch.float32 and m.timesteps.dtype == torch.float32
        # The σ the noise was mixed with, exactly: not rounded to bf16 (0.5789 -> 0.5781).
        assert torch.equal(m.sigma, same.sigma) and torch.equal(m.timesteps, same.modality.timesteps)
        assert not torch.equal(m.sigma, m.sigma.to(torch.bfloat16).float())


def test_bf16_transformer_trains_on_float32_timesteps(tiny_bundle):
    model = apply_lora(loader.load_transformer(tiny_bundle.checkpoint, dtype=torch.bfloat16), 4)
    batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _batch().items()}
    loss, _ = av2av_loss(model, batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_reference_tokens_are_clean_and_targets_are_noised_towards_the_velocity_target():
    batch = _batch()
    video_in, _ = av2av_inputs(batch, torch.Generator().manual_seed(0))
    ref = batch["ref_video"].flatten(2).transpose(1, 2)
    x0 = batch["video"].flatten(2).transpose(1, 2)
    latent = video_in.modality.latent
    assert torch.equal(latent[:, :4], ref)
    noise = video_in.target + x0
    s = video_in.sigma.view(-1, 1, 1)
    assert torch.allclose(latent[:, 4:], (1 - s) * x0 + s * noise, atol=1e-6)


def test_reference_tokens_do_not_contribute_to_loss(transformer):
    batch = _batch()
    loss, _ = av2av_loss(transformer, batch, torch.Generator().manual_seed(3))

    def perturb_reference_outputs(module, args, kwargs, output):
        video_pred, audio_pred = output
        video_pred, audio_pred = video_pred.clone(), audio_pred.clone()
        video_pred[:, :4] += 100.0
        audio_pred[:, :4] -= 100.0
        return video_pred, audio_pred

    handle = transformer.register_forward_hook(perturb_reference_outputs, with_kwargs=True)
    try:
        perturbed, _ = av2av_loss(transformer, batch, torch.Generator().manual_seed(3))
    finally:
        handle.remove()
    assert torch.equal(loss, perturbed)


def test_loss_is_video_loss_plus_audio_loss_with_both_reported(transformer):
    loss, m = av2av_loss(transformer, _batch(), torch.Generator().manual_seed(0))
    assert torch.allclose(loss, m["video_loss"] + m["audio_loss"])
    assert m["video_tokens"] == 4 and m["audio_tokens"] == 4
    assert 0 < m["sigma_video"] <= 1 and 0 < m["sigma_audio"] <= 1


def test_overfitting_one_batch_with_the_lora_lowers_video_and_audio_loss_5x(transformer):
    model = apply_lora(transformer, 16)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    batch = _batch()
    history = []
    for _ in range(100):
        loss, m = av2av_loss(model, batch, torch.Generator().manual_seed(123))  # same σ and ε every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((float(m["video_loss"]), float(m["audio_loss"])))
    (v0, a0), (v1, a1) = history[0], history[-1]
    assert v1 * 5 <= v0, history[::10]
    assert a1 * 5 <= a0, history[::10]


def test_frozen_base_carries_no_gradients_or_optimizer_state(transformer):
    model = apply_lora(transformer, 8)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    loss, _ = av2av_loss(model, _batch(), torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        assert param.requires_grad == is_lora, name
        assert (param.grad is not None) == is_lora, name
    assert set(optimizer.state) == set(trainable)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(transformer):
    from ltx_ray.model.lora import set_gradient_checkpointing

    model = apply_lora(transformer, 8)
    model.train()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    grads = []
    for enabled in (False, True):
        set_gradient_checkpointing(model, enabled)
        model.zero_grad()
        loss, _ = av2av_loss(model, _batch(), torch.Generator().manual_seed(0))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def peak_step_memory_bytes(step) -> int:
    """Peak CPU memory allocated by torch while running `step()`, at operator granularity.

    Replays the profiler's per-operator net allocations (and the frees it logs
    outside operators) in time order; on a GPU use `torch.cuda.max_memory_allocated`.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_peak_memory_of_one_training_step_is_reported(transformer, capsys):
    model = apply_lora(transformer, 8)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = _batch(video=(2, 9, 16), audio=50)  # 288 video + 50 audio target tokens, doubled by references

    def step():
        loss, _ = av2av_loss(model, batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    peak = peak_step_memory_bytes(step)
    with capsys.disabled():
        print(f"\npeak memory of one tiny training step: {peak / 2**20:.1f} MiB")
    assert 0 < peak < 2**30
