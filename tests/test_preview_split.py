"""Validation previews split over the ranks (ZeRO-2): the same clips bit for bit, each rank its share of the passes.

The multi-process tests run `preview_split_worker.py` as real gloo ranks (env:// rendezvous on
127.0.0.1), and once alone with no process group for the single-process result to compare with.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs import ROOT, tiny_job
from ltx_ray.config import load_config
from ltx_ray.model.av2av import ReferenceScaling
from ltx_ray.model.loader import load_transformer
from ltx_ray.sample.conditioning import build_validation_set, load_validation_set
from ltx_ray.sample.preview import MIN_COLLECTIVE_TIMEOUT_S, Previewer, preview_timeout_s
from ltx_ray.sample.sampler import (
    Clip,
    Guidance,
    SamplerSettings,
    guidance_from_config,
    sample_av2av,
    sample_split,
    target_shape,
)

WORKER = Path(__file__).resolve().parent / "preview_split_worker.py"
STEPS = 2
PASSES = 4  # positive, negative (CFG), STG, modality isolation: the demo's guidance
# The preview of tests/test_sample.py: 512x512, 17 frames at 16 fps, the reference at half size and rate.
SIZES = ("request.reference_downscale_factor=2", "request.reference_temporal_scale_factor=2",
         "request.validation_number_of_frames=17", "request.number_of_frames=17", "request.validation_frame_rate=16",
         "request.aspect_ratio=1:1", "request.validation_aspect_ratio=1:1", f"preview.inference_steps={STEPS}")


def _overrides(tiny_bundle, sample_dataset, storage: Path, clips: int) -> list[str]:
    """conf/demo.yaml's overrides: the tiny bundle, `clips` validation clips (one reference, two prompts)."""
    prompts = ["av_st9le a moving square", "av_st9le a square at rest"][:clips]
    reference = sample_dataset.validation_ref
    validation = ", ".join(f"{{prompt: '{p}', reference_video_url: '{reference}'}}" for p in prompts)
    return [f"request.training_data_url={sample_dataset.archive}", f"model.checkpoint={tiny_bundle.checkpoint}",
            f"model.text_encoder={tiny_bundle.gemma_dir}", f"storage.storage_path={storage}",
            "storage.run_name=split", "tracking.mode=offline", f"request.validation=[{validation}]", *SIZES]


@pytest.fixture(scope="module")
def preview_jobs(tmp_path_factory, tiny_bundle, sample_dataset):
    """(overrides, encoded validation file) of the 1-clip and 2-clip previews."""
    jobs = {}
    for clips in (1, 2):
        overrides = _overrides(tiny_bundle, sample_dataset, tmp_path_factory.mktemp("runs"), clips)
        job, _ = load_config(ROOT / "conf" / "demo.yaml", overrides)
        jobs[clips] = overrides, build_validation_set(job, tmp_path_factory.mktemp("val") / "validation.safetensors")
    return jobs


@pytest.fixture(scope="module")
def preview_on(preview_jobs, tmp_path_factory):
    """`preview_on(world, clips, run=False)`: each process's (latents, forward calls, reel) of that preview.

    world 0: one process without a process group. Cached: tests that read the same run share it.
    """

    @cache
    def run(world: int, clips: int, run: bool = False) -> list[dict]:
        overrides, validation_file = preview_jobs[clips]
        out = tmp_path_factory.mktemp(f"split-w{world}-c{clips}")
        spec = json.dumps({"overrides": overrides, "validation_file": str(validation_file), "run": run})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        procs = []
        for rank in range(max(world, 1)):
            env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            if world:
                env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank),
                           WORLD_SIZE=str(world))
            procs.append(subprocess.Popen([sys.executable, str(WORKER), spec, str(out)], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
        results = []
        for rank in range(max(world, 1)):
            result = json.loads((out / f"rank{rank}.json").read_text())
            if not run:
                tensors = load_file(str(out / f"rank{rank}.safetensors"))
                result["latents"] = [(tensors[f"video{i}"], tensors[f"audio{i}"]) for i in range(clips)]
            results.append(result)
        return results

    return run


# Two ranks sharing one clip's passes evenly, and three ranks two clips' unevenly (8 units over 3 ranks).
SPLITS = pytest.mark.parametrize("world, clips", [(2, 1), (3, 2)], ids=["2ranks-1clip", "3ranks-2clips"])


@SPLITS
def test_preview_split_over_ranks_gives_every_rank_the_single_process_latents_bit_for_bit(preview_on, world, clips):
    alone = preview_on(0, clips)[0]["latents"]
    for rank, result in enumerate(preview_on(world, clips)):
        assert len(result["latents"]) == clips
        for (video, audio), (video_alone, audio_alone) in zip(result["latents"], alone):
            assert torch.equal(video, video_alone), f"rank {rank} of {world}: video differs"
            assert torch.equal(audio, audio_alone), f"rank {rank} of {world}: audio differs"


@SPLITS
def test_preview_split_over_ranks_runs_on_each_rank_only_its_share_of_the_passes(preview_on, world, clips):
    """Unit k = (clip, pass) runs on rank k % world, one forward per unit and step; alone, every unit runs here."""
    alone = preview_on(0, clips)[0]["forwards"]
    assert alone == clips * PASSES * STEPS
    units = clips * PASSES
    forwards = [result["forwards"] for result in preview_on(world, clips)]
    assert forwards == [len(range(rank, units, world)) * STEPS for rank in range(world)]
    assert max(forwards) < alone and sum(forwards) == alone


def test_preview_run_on_two_ranks_returns_the_reel_on_rank_0_and_none_on_rank_1(preview_on):
    rank0, rank1 = preview_on(2, 1, run=True)
    assert rank0["reel"] is not None and Path(rank0["reel"]).stat().st_size > 0
    assert rank0["reel"].endswith("validation_step_000007.mp4")
    assert rank1["reel"] is None


# --- in one process --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_clip_job(preview_jobs):
    overrides, validation_file = preview_jobs[1]
    job, _ = load_config(ROOT / "conf" / "demo.yaml", overrides)
    return job, validation_file


@pytest.fixture(scope="module")
def transformer(tiny_bundle):
    return load_transformer(tiny_bundle.checkpoint).eval()


def test_split_sampler_alone_gives_the_one_by_one_samplers_clips(preview_jobs, transformer):
    """Without a process group, `sample_split` is `sample_av2av` with its passes one by one, clip by clip."""
    overrides, validation_file = preview_jobs[2]
    job, _ = load_config(ROOT / "conf" / "demo.yaml", overrides)
    r, guidance = job.request, guidance_from_config(job, transformer)
    conds = [cond for _, cond, _ in load_validation_set(validation_file)]
    settings = SamplerSettings(ReferenceScaling.from_request(r, validation=True), STEPS, guidance)
    clips = [Clip(c, target_shape(r, c), 10 + i) for i, c in enumerate(conds)]
    split = sample_split(transformer, clips, settings)
    unbatched = SamplerSettings(settings.scaling, STEPS, Guidance(guidance.video, guidance.audio, batched=False))
    for i, clip in enumerate(clips):
        one = sample_av2av(transformer, clip, unbatched)
        assert torch.equal(split[i][0], one[0]) and torch.equal(split[i][1], one[1])


def _live_decoders() -> int:
    """Video decoders, audio decoders and vocoders alive in this process."""
    from ltx_core.model.audio_vae import AudioDecoder, Vocoder, VocoderWithBWE
    from ltx_core.model.video_vae import VideoDecoder

    gc.collect()
    return sum(issubclass(type(o), (VideoDecoder, AudioDecoder, Vocoder, VocoderWithBWE)) for o in gc.get_objects())


def test_preview_run_on_rank_0_keeps_no_decoder_after_writing_the_reel(one_clip_job, transformer, tmp_path):
    job, validation_file = one_clip_job
    before = _live_decoders()
    previewer = Previewer(job, validation_file, 0, torch.device("cpu"), torch.float32)
    reel = previewer.run(transformer, 3, tmp_path)
    assert reel is not None and reel.stat().st_size > 0
    assert _live_decoders() == before


def test_the_reel_is_the_clip_renderers_each_clip_beside_its_reference(preview_jobs, transformer, tmp_path,
                                                                       monkeypatch):
    """Previews write their reel through `ClipRenderer`, the renderer `ltx-ray generate` writes its clip with."""
    import av

    from ltx_ray.sample.render import ClipRenderer

    overrides, validation_file = preview_jobs[2]
    job, _ = load_config(ROOT / "conf" / "demo.yaml", overrides)
    written, write = [], ClipRenderer.write

    def spy(self, path, latents, references=None):
        written.append((path, len(latents), [r.shape for r in references]))
        return write(self, path, latents, references)

    monkeypatch.setattr(ClipRenderer, "write", spy)
    reel = Previewer(job, validation_file, 0, torch.device("cpu"), torch.float32).run(transformer, 3, tmp_path)
    assert written == [(reel, 2, [(17, 512, 512, 3)] * 2)]
    with av.open(str(reel)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, sum(1 for _ in container.decode(stream))) == (2 * 512, 2 * 17)


class _Wrapper(torch.nn.Module):
    """A wrapper whose own mode says nothing of the wrapped model's (as PEFT's or DeepSpeed's)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return self.model(**kwargs)


def test_preview_gives_each_module_its_own_training_mode_back(one_clip_job, tiny_bundle):
    job, validation_file = one_clip_job
    inner = load_transformer(tiny_bundle.checkpoint).train()
    wrapper = _Wrapper(inner)
    wrapper.training = False  # DeepSpeed never calls .train(): the wrapper may say eval while the model trains
    seen = []
    inner.register_forward_pre_hook(lambda module, *_: seen.append(module.training))
    Previewer(job, validation_file, 0, torch.device("cpu"), torch.float32).sample(wrapper)
    assert seen and not any(seen)  # sampled in eval mode
    assert not wrapper.training
    assert all(m.training for m in inner.modules())  # gradient checkpointing needs the LTXModel in train mode


# --- the collective timeout a preview needs ----------------------------------------------------------


def _default_job(*overrides: str):
    """conf/default.yaml (the spec's defaults: 960x960, 89 frames, 30 steps, ZeRO-2) with two validation clips."""
    clips = "request.validation=[{prompt: a, reference_video_url: a.mp4}, {prompt: b, reference_video_url: b.mp4}]"
    job, _ = load_config(ROOT / "conf" / "default.yaml", ["request.training_data_url=x.zip", clips, *overrides],
                         training=False)
    return job


def test_preview_timeout_is_never_below_rays_default(tiny_bundle, sample_dataset, tmp_path):
    tiny = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "t", validation=True)
    none = tiny_job(tiny_bundle, sample_dataset, str(tmp_path), "t")
    assert MIN_COLLECTIVE_TIMEOUT_S == 1800
    assert preview_timeout_s(tiny, 1) == preview_timeout_s(none, 1) == 1800
    for world in (1, 2, 8, 64):
        assert preview_timeout_s(_default_job(), world) >= 1800
        assert preview_timeout_s(_default_job("cluster.zero_stage=3"), world) >= 1800


def test_preview_timeout_grows_with_the_previews_size():
    base = preview_timeout_s(_default_job(), 1)
    assert base > 1800
    assert preview_timeout_s(_default_job("request.validation_number_of_frames=121"), 1) > base
    assert preview_timeout_s(_default_job("preview.inference_steps=60"), 1) > base
    one_clip = _default_job("request.validation=[{prompt: a, reference_video_url: a.mp4}]")
    assert preview_timeout_s(one_clip, 1) < base
    assert preview_timeout_s(_default_job("request.validation_resolution=medium"), 1) < base


def test_preview_timeout_shrinks_with_more_zero2_ranks_but_not_under_zero3():
    zero2 = [preview_timeout_s(_default_job(), world) for world in (1, 2, 4)]
    assert zero2[0] > zero2[1] > zero2[2]
    zero3 = [preview_timeout_s(_default_job("cluster.zero_stage=3"), world) for world in (1, 2, 4)]
    assert zero3[0] == zero3[1] == zero3[2] > zero2[1]
