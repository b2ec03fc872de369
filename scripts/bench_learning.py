#!/usr/bin/env python
"""Prove the IC-LoRA learns: train it with the real job, generate held-out pairs with and without it, compare latents.

    .venv/bin/python scripts/bench_learning.py                                  # reference factors 1, 1
    .venv/bin/python scripts/bench_learning.py --downscale 2 --temporal 2       # factors 2, 2 (17 frames)
    options: --steps N --lr X --rank R --train-pairs N --held-out N --frames N
             --inference-steps N --resolution low --aspect 1:1 --workdir DIR --keep

What it does (all through the product's own commands, nothing mocked):
1. data: a synthetic audio+video transformation (`scripts/learning_pairs.py`):
   reference = a still frame in one saturated hue + a steady tone; target =
   horizontal stripes of the complementary colour on black + the tone with its
   octave below added. Hue and pitch are drawn per
   pair from two grids; the held-out pairs' lie between the training pairs'.
   Every caption is the same generic text, so only the reference can tell the
   model what to produce. Written with PyAV (`write_clip`) as a zip archive
   of `_start`/`_end`/`.txt` pairs; the tiny LTX-2.3 bundle with `write_tiny_bundle`.
2. train: `ltx-ray train conf/demo.yaml key=value ...` in a subprocess (its own
   local Ray, 2 CPU workers, DeepSpeed ZeRO-2); reads the LoRA from its result JSON.
3. generate: `ltx-ray generate` on each held-out reference with the LoRA
   (`--strength 1`) and without it (`--strength 0`, the plain base), saving
   the generated latents (`--latents-out`). Guidance off (CFG 1, STG 0,
   modality 1: the caption carries no information here), the same seed for both.
4. metrics: the true held-out targets fitted as training fits a clip
   (`fit_reference`, factor 1) and encoded by the same VAEs; per modality
   (video, audio), with mse the mean squared error over a latent:
     gain            = mean_i [mse(base_i, target_i) / mse(lora_i, target_i)]
     reference_use   = mean_i [mean_{j!=i} mse(lora_i, target_j)] / mse(lora_i, target_i)
   reference_use is above 1 only when each output follows its own reference. What bounds it,
   printed as `[limits]`: own_share (how much of a target's variance is its own rather than
   shared by every pair's) and error_over_spread (the LoRA's error / the mean distance between
   two pairs' targets; reference_use >= 1.5 needs about <= 2).

The training run holds out `--run-holdout` of its training pairs itself (`train.holdout_pairs`) and
evaluates them during the run (`ltx_ray.train.evaluation`): its reference gains by step are printed
before the last line, and the last evaluation's on it.

Last line: `gain_video=… gain_audio=… reference_use_video=… reference_use_audio=…
run_reference_gain_video=… run_reference_gain_audio=…`.
Targets: every gain >= 2, every reference_use >= 1.5; each factor setting within
20 minutes wall on a quiet 2-core machine (1200 steps; more steps learn more).
Work goes to `.cache/bench-learning/<tag>/`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI = str(ROOT / ".venv" / "bin" / "ltx-ray")
CONFIG = str(ROOT / "conf" / "demo.yaml")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--downscale", type=int, default=1, help="request.reference_downscale_factor")
    p.add_argument("--temporal", type=int, default=1, help="request.reference_temporal_scale_factor")
    p.add_argument("--frames", type=int, default=None,
                   help="frames of every clip (default: 8 x temporal + 1, the smallest the spec allows)")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--resolution", default="low")
    p.add_argument("--aspect", default="1:1", help="1:1: low 512x512 stays a multiple of 32 when halved")
    p.add_argument("--train-pairs", type=int, default=32)
    p.add_argument("--held-out", type=int, default=4)
    p.add_argument("--run-holdout", type=int, default=4,
                   help="train.holdout_pairs of the training run: that many of the training pairs are held out by "
                        "the product itself and evaluated during the run (its reference gains are printed last)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--no-feed-forward", dest="feed_forward", action="store_false",
                   help="LoRA on the attentions only (default: also the feed-forward layers, which the tiny "
                        "model needs for its per-token path)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (1 CPU each)")
    p.add_argument("--inference-steps", type=int, default=8)
    p.add_argument("--parallel", type=int, default=2, help="generate processes at a time")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the bundle")
    p.add_argument("--workdir", default=None, help="default: .cache/bench-learning/f<downscale>x<temporal>")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="keep the tiny bundle's random VAE latent statistics")
    p.add_argument("--skip-train", action="store_true", help="reuse the LoRA of a previous run in the workdir")
    return p.parse_args()


def calibrated_bundle(out_dir: Path, seed: int, *, clips: int = 8, width: int = 256, height: int = 256,
                      frames: int = 9, fps: int = 8) -> tuple[Path, Path]:
    """The tiny bundle (`write_tiny_bundle`), its VAEs' latent statistics measured on clips of this family.

    The same file format and weights; only `vae.` / `audio_vae.per_channel_statistics` (mean-of-means,
    std-of-means) change: set, as the real LTX-2.3 VAEs' are, to the per-channel mean and std of the
    raw latents, here of `clips` reference/target pairs with content drawn apart from the bench's
    (another seed), fitted and encoded like training data. Without it the random VAEs give latents of
    std ~0.1-0.3, so what differs between pairs is a small part of every latent next to the noise.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    import learning_pairs as lp
    from ltx_ray.clips.ingest import ReferenceFit, fit_reference
    from ltx_ray.clips.media import write_clip
    from ltx_ray.model.vae import audio_to_latents, video_to_latents
    from ltx_ray.model.loader import load_audio_encoder, load_video_encoder
    from ltx_ray.model.tiny import write_tiny_bundle

    checkpoint, gemma = write_tiny_bundle(out_dir, seed=seed)
    video_enc, audio_enc = load_video_encoder(checkpoint), load_audio_encoder(checkpoint)
    contents, _ = lp.draw_contents(clips, 0, seed=seed + 1000)
    n = frames + 8
    videos, audios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for c in contents:
            for video, sound in ((lp.reference_video(c, n, width, height), lp.reference_sound(c, n / fps)),
                                 (lp.target_video(c, n, width, height), lp.target_sound(c, n / fps))):
                clip = write_clip(Path(tmp) / "clip.mp4", video, fps, sound, lp.SOURCE_SAMPLE_RATE)
                fit = fit_reference(clip, None, ReferenceFit(width, height, frames, fps))
                videos.append(video_to_latents(video_enc, torch.from_numpy(fit.video)[None]).float())
                audios.append(audio_enc.patchifier.patchify(
                    audio_to_latents(audio_enc, torch.from_numpy(fit.audio)[None]).float()))
    with safe_open(str(checkpoint), "pt") as f:
        metadata, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    # Video statistics are per latent channel (dim 1); audio ones per patchified feature (last dim).
    for prefix, latents, dims, shape in (("vae", torch.cat(videos), (0, 2, 3, 4), (1, -1, 1, 1, 1)),
                                         ("audio_vae", torch.cat(audios), (0, 1), (1, 1, -1))):
        key = f"{prefix}.per_channel_statistics."
        std, mean = state[key + "std-of-means"].float(), state[key + "mean-of-means"].float()
        raw = latents * std.view(shape) + mean.view(shape)
        state[key + "mean-of-means"] = raw.mean(dims).to(torch.bfloat16).contiguous()
        state[key + "std-of-means"] = raw.std(dims).clamp(min=1e-3).to(torch.bfloat16).contiguous()
    save_file(state, str(checkpoint), metadata)
    return checkpoint, gemma


def run_cli(args: list[str], log: Path, env: dict | None = None) -> str:
    """Run `ltx-ray ARGS`, output to `log`; return its stdout; raise with the log's tail on failure."""
    with open(log, "w") as out:
        proc = subprocess.run([CLI, *args], stdout=subprocess.PIPE, stderr=out, text=True, env=env, cwd=ROOT)
        out.write("\n--- stdout ---\n" + proc.stdout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"ltx-ray {args[0]} failed (exit {proc.returncode}), log {log}:\n{tail}")
    return proc.stdout


def result_json(stdout: str) -> dict:
    """The result JSON `ltx-ray train` prints last (progress bars may share its first line)."""
    start = stdout.rfind('{\n  "run_name"')
    if start < 0:
        raise SystemExit("ltx-ray train printed no result JSON")
    return json.JSONDecoder().raw_decode(stdout[start:])[0]


def run_reference_gains(runs: Path, run: str) -> dict[int, dict[str, float]]:
    """The training run's held-out reference gains at each evaluation, from its offline W&B history."""
    from wandb_history import read_offline_history

    files = sorted((runs / run / "outputs" / "wandb").glob("run-*.wandb"))
    rows = read_offline_history(files[-1]) if files else []
    return {int(r["_step"]): {m: r[f"eval/holdout/reference_gain_{m}"] for m in ("video", "audio")}
            for r in rows if "eval/holdout/reference_gain_video" in r}


def mse(a, b) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


def main() -> int:
    a = parse_args()
    frames = a.frames or 8 * a.temporal + 1
    tag = f"f{a.downscale}x{a.temporal}"
    work = Path(a.workdir or ROOT / ".cache" / "bench-learning" / tag).resolve()
    phases: dict[str, float] = {}
    t_all = time.perf_counter()

    # ---- 1. data and bundle ------------------------------------------------------------------
    t0 = time.perf_counter()
    from ltx_ray.config.resolution import bucket_size
    from learning_pairs import write_learning_pairs
    from ltx_ray.model.tiny import write_tiny_bundle

    width, height = bucket_size(a.resolution, a.aspect)
    if not a.skip_train:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if a.calibrate:
        checkpoint, gemma = calibrated_bundle(work / "bundle", a.seed)
    else:
        checkpoint, gemma = write_tiny_bundle(work / "bundle", seed=a.seed)
    data = write_learning_pairs(work / "data", a.train_pairs, a.held_out, frames=frames, fps=a.fps,
                                width=width, height=height, seed=a.seed)
    phases["data"] = time.perf_counter() - t0
    print(f"[data] {a.train_pairs} training pairs in {data.archive}, {a.held_out} held-out pairs in "
          f"{data.archive.parent / 'held_out'} ({width}x{height}, {frames} frames at {a.fps} fps), caption "
          f"{data.caption!r} for all; {phases['data']:.0f} s", flush=True)

    common = [
        f"model.checkpoint={checkpoint}", f"model.text_encoder={gemma}",
    ]
    train_overrides = common + [
        f"request.training_data_url={data.archive}",
        f"request.number_of_frames={frames}", f"request.frame_rate={a.fps}",
        f"request.resolution={a.resolution}", f"request.aspect_ratio={a.aspect}",
        f"request.reference_downscale_factor={a.downscale}",
        f"request.reference_temporal_scale_factor={a.temporal}",
        f"request.number_of_steps={a.steps}", f"request.learning_rate={a.lr}", f"request.rank={a.rank}",
        "request.validation=[]",
        # The spec's scaling rules apply to the validation size too, even without previews.
        f"request.validation_number_of_frames={frames}", f"request.validation_frame_rate={a.fps}",
        f"request.validation_resolution={a.resolution}", f"request.validation_aspect_ratio={a.aspect}",
        f"model.lora_include_feed_forward={str(a.feed_forward).lower()}",
        f"cluster.num_workers={a.workers}",
        f"optimizer.warmup_steps={a.warmup}", f"optimizer.lr_scheduler={a.scheduler}",
        f"checkpoint.every={a.steps}", f"preview.every={a.steps}",
        f"train.holdout_pairs={a.run_holdout}", f"train.eval_every={max(1, a.steps // 8)}",
        f"storage.storage_path={work / 'runs'}", f"storage.run_name=bench-{tag}",
        "tracking.mode=offline",  # the run's evaluation is read back from its W&B history
    ]

    # ---- 2. train -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray's own temp dir: a plain ray.init() joins any Ray instance already running on this
    # machine (through /tmp/ray/ray_current_cluster) instead of starting a local one.
    ray_tmp = tempfile.mkdtemp(prefix="blray-", dir="/tmp")
    env["RAY_TMPDIR"] = ray_tmp
    lora_file = work / "runs" / f"bench-{tag}" / "outputs" / "ic_lora_av2av.safetensors"
    if not a.skip_train:
        print("[train] ltx-ray train conf/demo.yaml " + " ".join(train_overrides), flush=True)
        try:
            stdout = run_cli(["train", CONFIG, *train_overrides], work / "train.log", env)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        lora_file = Path(result_json(stdout)["lora_file"])
    phases["train"] = time.perf_counter() - t0
    print(f"[train] LoRA {lora_file}; {phases['train']:.0f} s", flush=True)

    # ---- 3. generate --------------------------------------------------------------------------
    t0 = time.perf_counter()
    guidance = [
        "preview.video_cfg_scale=1", "preview.audio_cfg_scale=1", "request.stg_scale=0",
        "preview.video_modality_scale=1", "preview.audio_modality_scale=1",
        "preview.guidance_rescale=0",
        f"preview.inference_steps={a.inference_steps}",
    ]
    gen_overrides = common + [
        f"request.validation_number_of_frames={frames}", f"request.validation_frame_rate={a.fps}",
        f"request.validation_resolution={a.resolution}", f"request.validation_aspect_ratio={a.aspect}",
    ] + guidance
    print("[generate] settings: " + " ".join(guidance) + " seed=42 (the config's), the same for LoRA and base",
          flush=True)
    gen_dir = work / "generated"
    gen_dir.mkdir(exist_ok=True)
    gen_env = dict(env, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // a.parallel)))

    def generate(item):
        pair, kind, strength = item
        out = gen_dir / f"{pair.name}_{kind}"
        args = ["generate", CONFIG, *gen_overrides, "--lora", str(lora_file),
                "--reference-video", str(pair.reference), "--prompt", data.caption, "--strength", str(strength),
                "--out", f"{out}.mp4", "--latents-out", f"{out}.safetensors"]
        started = time.perf_counter()
        run_cli(args, Path(f"{out}.log"), gen_env)
        print(f"[generate] {pair.name} {kind} (strength {strength}) {time.perf_counter() - started:.0f} s",
              flush=True)
        return Path(f"{out}.safetensors")

    jobs = [(p, kind, s) for p in data.held_out for kind, s in (("lora", 1.0), ("base", 0.0))]
    print("[generate] e.g. ltx-ray generate conf/demo.yaml " + " ".join(gen_overrides)
          + f" --lora {lora_file} --reference-video {data.held_out[0].reference} --prompt {data.caption!r}"
          " --strength 1 --out OUT.mp4 --latents-out OUT.safetensors", flush=True)
    with ThreadPoolExecutor(max_workers=a.parallel) as pool:
        paths = list(pool.map(generate, jobs))
    phases["generate"] = time.perf_counter() - t0

    # ---- 4. metrics ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    import torch
    from safetensors.torch import load_file

    from ltx_ray.clips.ingest import ReferenceFit, fit_reference
    from ltx_ray.model.vae import audio_to_latents, video_to_latents
    from ltx_ray.model.loader import load_audio_encoder, load_video_encoder

    video_enc = load_video_encoder(checkpoint, dtype=torch.float32)
    audio_enc = load_audio_encoder(checkpoint, dtype=torch.float32)
    targets, outs = [], {"lora": [], "base": []}
    for pair in data.held_out:
        fitted = fit_reference(pair.target, None, ReferenceFit(width, height, frames, a.fps))
        targets.append({
            "video": video_to_latents(video_enc, torch.from_numpy(fitted.video)[None]).float(),
            "audio": audio_to_latents(audio_enc, torch.from_numpy(fitted.audio)[None]).float(),
        })
    for (pair, kind, _), path in zip(jobs, paths):
        outs[kind].append(load_file(str(path)))
    n = len(targets)
    results, table = {}, []
    for m in ("video", "audio"):
        for i in range(n):
            for kind in ("lora", "base"):
                if outs[kind][i][m].shape != targets[i][m].shape:
                    raise SystemExit(f"{m} latents of {kind} {tuple(outs[kind][i][m].shape)} != target "
                                     f"{tuple(targets[i][m].shape)}")
        own = [mse(outs["lora"][i][m], targets[i][m]) for i in range(n)]
        base = [mse(outs["base"][i][m], targets[i][m]) for i in range(n)]
        cross = [[mse(outs["lora"][i][m], targets[j][m]) for j in range(n)] for i in range(n)]
        results[f"gain_{m}"] = sum(base[i] / own[i] for i in range(n)) / n
        results[f"reference_use_{m}"] = sum(
            (sum(cross[i][j] for j in range(n) if j != i) / (n - 1)) / own[i] for i in range(n)) / n
        table.append((m, own, base, cross))
        # What bounds reference use: how much of a target is its own (not shared by every pair's target), and
        # the LoRA's error against the distance between two pairs' targets. An output j's target away adds
        # about that distance to the error, so reference_use >= 1.5 needs own error <= 2x the distance.
        mean_target = torch.stack([t[m] for t in targets]).mean(0)
        spread = sum(mse(targets[i][m], targets[j][m]) for i in range(n) for j in range(n) if j != i) / (n * (n - 1))
        results[f"own_share_{m}"] = (sum(mse(t[m], mean_target) for t in targets)
                                     / sum(float(t[m].double().var()) for t in targets))
        results[f"error_over_spread_{m}"] = (sum(own) / n) / spread
    phases["metrics"] = time.perf_counter() - t0
    total = time.perf_counter() - t_all

    names = [p.name for p in data.held_out]
    for m, own, base, cross in table:
        print(f"\n[metrics] {m}: mse of each output against each true target (latent space)")
        print(f"  {'':14s}" + "".join(f"{'tgt ' + nm:>12s}" for nm in names))
        for i, nm in enumerate(names):
            print(f"  {'lora ' + nm:14s}" + "".join(f"{cross[i][j]:12.4f}" for j in range(n)))
        for i, nm in enumerate(names):
            print(f"  {'base ' + nm:14s}" + f"{base[i]:12.4f} (own target)  gain {base[i] / own[i]:.2f}")
    print("\n[limits] " + "; ".join(
        f"{m}: {results[f'own_share_{m}']:.0%} of a held-out target's variance is its own (the rest every pair's "
        f"target shares), LoRA error {results[f'error_over_spread_{m}']:.2f}x the distance between two targets"
        for m in ("video", "audio")) + " (reference_use >= 1.5 needs about <= 2x)")
    print("\n[time] " + " ".join(f"{k}={v:.0f}s" for k, v in phases.items()) + f" total={total:.0f}s "
          f"(reference factors {a.downscale}, {a.temporal}; {frames} frames at {width}x{height}; "
          f"{a.steps} steps lr {a.lr} rank {a.rank}; {a.inference_steps} inference steps)")
    line = " ".join(f"{k}={results[k]:.2f}" for k in
                    ("gain_video", "gain_audio", "reference_use_video", "reference_use_audio"))
    run_gains = run_reference_gains(work / "runs", f"bench-{tag}")
    print("[run] the training run's own held-out evaluation (train.holdout_pairs="
          f"{a.run_holdout}), by step: " + "; ".join(
              f"{step}: video {g['video']:.2f} audio {g['audio']:.2f}" for step, g in run_gains.items()))
    (work / "results.json").write_text(json.dumps({**results, "run_reference_gains": run_gains, "phases_s": phases,
                                                   "total_s": total, "args": vars(a)}, indent=1))
    last = run_gains[max(run_gains)] if run_gains else {"video": float("nan"), "audio": float("nan")}
    print(line + f" run_reference_gain_video={last['video']:.2f} run_reference_gain_audio={last['audio']:.2f}")
    print(f"wall time: {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
