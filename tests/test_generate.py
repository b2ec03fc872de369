"""`ltx-ray generate`: a LoRA trained by the job, run on a reference clip, gives an mp4 with picture and sound.

The LoRA is the session's `reference_run` (the real job on the tiny bundle);
refusals are checked in-process through the CLI's `main`, which returns the exit code.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures_data import TIME_GREY, grey
from jobs import ROOT
from ltx_ray.cli import main
from ltx_ray.config import load_config
from ltx_ray.model.lora import check_ic_lora, read_lora_metadata
from ltx_ray.sample.generate import GenerateRequest, prepare_reference

DEMO = ROOT / "conf" / "demo.yaml"


def _model_args(tiny_bundle) -> list[str]:
    return [f"model.checkpoint={tiny_bundle.checkpoint}", f"model.text_encoder={tiny_bundle.gemma_dir}"]


def _generate(tiny_bundle, lora, reference, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ltx_ray", "generate", str(DEMO), *_model_args(tiny_bundle), "--lora", str(lora),
         "--reference-video", str(reference), "--prompt", "av_st9le a moving square", "--out", str(out), *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def _streams(path: Path) -> tuple[int, float, float, int, str, str]:
    """(video frames, video seconds, audio seconds, width, video codec, audio codec) of an mp4."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video))
        v_seconds = float(video.duration * video.time_base)
        a_seconds = float(audio.duration * audio.time_base)
        return frames, v_seconds, a_seconds, video.codec_context.width, video.codec_context.name, \
            audio.codec_context.name


def _relabelled_lora(reference_run, tmp_path, name: str, **metadata: str) -> Path:
    """The job's LoRA with some metadata entries replaced."""
    source = reference_run[1]["lora_file"]
    path = tmp_path / name
    save_file(load_file(source), str(path), metadata={**read_lora_metadata(source), **metadata})
    return path


def test_generate_writes_an_mp4_with_video_and_audio_from_the_jobs_lora(reference_run, tiny_bundle,
                                                                         sample_dataset, tmp_path):
    job, result, _ = reference_run
    out = tmp_path / "out" / "generated.mp4"
    res = _generate(tiny_bundle, result["lora_file"], sample_dataset.validation_ref, out, "--side-by-side")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith(str(out))
    frames, v_seconds, a_seconds, width, vcodec, acodec = _streams(out)
    r = job.request
    assert (vcodec, acodec) == ("h264", "aac")
    assert frames == r.validation_number_of_frames
    assert v_seconds == pytest.approx(r.validation_number_of_frames / r.validation_frame_rate, abs=1e-3)
    assert abs(v_seconds - a_seconds) <= 1 / r.validation_frame_rate
    assert width == 2 * 512  # reference | generated at low 16:9


def test_reference_follows_the_loras_temporal_factor_the_official_way(reference_run, tiny_bundle, make_clip,
                                                                      tmp_path):
    lora_path = _relabelled_lora(reference_run, tmp_path, "t2.safetensors",
                                 reference_temporal_scale_factor="2", reference_downscale_factor="2")
    scaling = check_ic_lora(lora_path, tiny_bundle.files).scaling(frame_rate=16)
    assert (scaling.temporal, scaling.downscale) == (2, 2)
    job, _ = load_config(DEMO, [*_model_args(tiny_bundle), "request.validation_number_of_frames=17",
                                "request.validation_frame_rate=16"], training=False)
    clip = make_clip(frames=32, fps=16)  # each frame's grey level is its time
    req = GenerateRequest(lora=str(lora_path), reference_video=str(clip), prompt="p", side_by_side=True)
    scaled, shown = prepare_reference(job, req, scaling, tmp_path)
    assert shown.shape == (17, 288, 512, 3)
    assert scaled.video.shape == (9, 144, 256, 3)
    # Frames 0, 1, 3, 5, ... 15 of the 17: the VAE's first frame, then every 2nd from frame 1.
    np.testing.assert_allclose(grey(scaled.video), np.array([0, *range(1, 17, 2)]) / 16 * TIME_GREY, atol=3)


def test_generate_with_a_temporal_factor_2_lora_writes_the_requested_frames(reference_run, tiny_bundle,
                                                                              sample_dataset, tmp_path):
    lora = _relabelled_lora(reference_run, tmp_path, "t2.safetensors", reference_temporal_scale_factor="2")
    out = tmp_path / "t2.mp4"
    res = _generate(tiny_bundle, lora, sample_dataset.validation_ref, out, "request.validation_number_of_frames=17",
                    "request.validation_frame_rate=16")
    assert res.returncode == 0, res.stderr[-3000:]
    frames, v_seconds, _, width, _, _ = _streams(out)
    assert (frames, width) == (17, 512)
    assert v_seconds == pytest.approx(17 / 16, abs=1e-3)


def test_generate_writes_its_clip_with_the_previews_renderer(reference_run, tiny_bundle, sample_dataset, tmp_path,
                                                             monkeypatch):
    """`ltx-ray generate` renders through `ClipRenderer`, as the previews do (tests/test_preview_split.py)."""
    from ltx_ray.sample.generate import generate
    from ltx_ray.sample.render import ClipRenderer

    written, write = [], ClipRenderer.write

    def spy(self, path, latents, references=None):
        written.append((path, len(latents), [r.shape for r in references]))
        return write(self, path, latents, references)

    monkeypatch.setattr(ClipRenderer, "write", spy)
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # what `generate` would set, undone after
    job, _ = load_config(DEMO, _model_args(tiny_bundle), training=False)
    out = tmp_path / "generated.mp4"
    req = GenerateRequest(lora=reference_run[1]["lora_file"], reference_video=str(sample_dataset.validation_ref),
                          prompt="av_st9le a moving square", out=str(out), side_by_side=True)
    assert generate(job, req) == str(out)
    assert written == [(out, 1, [(job.request.validation_number_of_frames, 288, 512, 3)])]


def _refused(capsys, caplog, tiny_bundle, tmp_path, lora, reference, *extra: str) -> str:
    """Run `ltx-ray generate` in-process; assert exit 2 with no model loaded; return stderr."""
    caplog.set_level(logging.INFO, logger="ltx_ray")
    code = main(["generate", str(DEMO), *_model_args(tiny_bundle), "--lora", str(lora),
                 "--reference-video", str(reference), "--prompt", "p", "--out", str(tmp_path / "o.mp4"), *extra])
    assert code == 2
    assert not [r for r in caplog.records if r.getMessage().startswith("loaded ")], "a model was loaded"
    assert not (tmp_path / "o.mp4").exists()
    return capsys.readouterr().err


def test_a_file_that_is_not_an_av2av_ic_lora_is_refused_naming_it(reference_run, tiny_bundle, sample_dataset,
                                                                 tmp_path, capsys, caplog):
    ref = sample_dataset.validation_ref
    text = tmp_path / "notes.safetensors"
    text.write_text("not a tensor file")
    err = _refused(capsys, caplog, tiny_bundle, tmp_path, text, ref)
    assert "notes.safetensors" in err and "not a readable LoRA file" in err
    # The checkpoint itself: a safetensors file, but no LoRA in it.
    err = _refused(capsys, caplog, tiny_bundle, tmp_path, tiny_bundle.checkpoint, ref)
    assert tiny_bundle.checkpoint.name in err and "not an LTX LoRA file" in err
    v2v = _relabelled_lora(reference_run, tmp_path, "v2v.safetensors", training_type="v2v_ic_lora")
    err = _refused(capsys, caplog, tiny_bundle, tmp_path, v2v, ref)
    assert "v2v.safetensors" in err and "not an av2av IC-LoRA" in err


def test_a_lora_whose_layers_do_not_fit_the_checkpoint_is_refused_naming_them(reference_run, tiny_bundle,
                                                                             sample_dataset, tmp_path, capsys,
                                                                             caplog):
    tensors = load_file(reference_run[1]["lora_file"])
    key = "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 8, dtype=tensors[key].dtype)
    tensors["diffusion_model.transformer_blocks.7.attn1.to_q.lora_A.weight"] = tensors.pop(
        "diffusion_model.transformer_blocks.1.attn1.to_q.lora_A.weight")
    tensors["diffusion_model.transformer_blocks.7.attn1.to_q.lora_B.weight"] = tensors.pop(
        "diffusion_model.transformer_blocks.1.attn1.to_q.lora_B.weight")
    wrong = tmp_path / "wrong.safetensors"
    save_file(tensors, str(wrong), metadata=read_lora_metadata(reference_run[1]["lora_file"]))
    err = _refused(capsys, caplog, tiny_bundle, tmp_path, wrong, sample_dataset.validation_ref)
    assert "wrong.safetensors" in err and "does not fit the checkpoint" in err
    assert "transformer_blocks.0.attn1.to_q" in err and "transformer_blocks.7.attn1.to_q" in err


def test_a_silent_reference_without_reference_audio_is_refused_naming_it(reference_run, tiny_bundle, make_clip,
                                                                        tmp_path, capsys, caplog):
    silent = make_clip(audio=None)
    err = _refused(capsys, caplog, tiny_bundle, tmp_path, reference_run[1]["lora_file"], silent)
    assert str(silent) in err and "no audio track" in err and "--reference-audio" in err


def test_an_unreadable_reference_clip_is_refused_naming_it(reference_run, tiny_bundle, tmp_path, capsys, caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 4096)
    err = _refused(capsys, caplog, tiny_bundle, tmp_path, reference_run[1]["lora_file"], broken)
    assert str(broken) in err and "cannot be read" in err


def test_a_frame_count_the_loras_temporal_factor_cannot_subsample_is_refused(reference_run, tiny_bundle,
                                                                            sample_dataset, tmp_path, capsys,
                                                                            caplog):
    lora = _relabelled_lora(reference_run, tmp_path, "t2.safetensors", reference_temporal_scale_factor="2")
    err = _refused(capsys, caplog, tiny_bundle, tmp_path, lora, sample_dataset.validation_ref)  # demo: 9 frames
    assert "t2.safetensors (reference_temporal_scale_factor=2)" in err and "validation_number_of_frames=9" in err


def test_generate_asks_for_expandable_cuda_segments_when_the_user_has_not_set_the_allocator(monkeypatch):
    from ltx_ray.sample.generate import use_expandable_segments

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_generate_keeps_the_users_own_allocator_setting(monkeypatch):
    from ltx_ray.sample.generate import use_expandable_segments

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:512")  # torch 2.9's name for it
    use_expandable_segments()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
