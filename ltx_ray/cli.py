"""The `ltx-ray` command: parse arguments, dispatch to a stage, map user errors to exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ltx_ray import console, tempdirs
from ltx_ray.errors import UserError

log = logging.getLogger("ltx_ray")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ltx-ray",
        description="Train an LTX-2.3 or LTX-2.5 audio+video IC-LoRA on Ray Train + DeepSpeed.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    # Every command: quiet by default (our lines, one progress bar or line per stage, everyone's warnings).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="also print the INFO output of Ray, Ray Data, Ray Train and DeepSpeed, their progress "
                             "displays, and the workers' lines with their (name pid=...) prefix; the complete logs "
                             "are in Ray's session folder either way (e.g. /tmp/ray/session_latest/logs)")
    for name, help_ in (
        ("validate", "check a config against the spec and print it resolved (exit 2 on errors)"),
        ("preprocess", "fetch, decode and encode the dataset into the latent cache"),
        ("train", "run the whole job: preprocess, train, validate, write outputs"),
    ):
        c = sub.add_parser(name, help=help_, parents=[common])
        c.add_argument("config", help="YAML config file (e.g. conf/default.yaml)")
        c.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. request.rank=64")
        if name == "validate":
            c.add_argument("--explain", action="store_true",
                           help="print every field as path=value, resolved, with its description and rule")
    e = sub.add_parser(
        "estimate",
        parents=[common],
        help="GPU memory per GPU of the config's run (training workers, rank 0's previews, an encoder actor), "
             "estimated on CPU from the real architecture",
        description="The transformer's architecture comes from model.checkpoint's safetensors header (read by "
                    "range, locally or remotely; LTX-2.5's VAE and Gemma-4 files too), or from a built-in copy of the LTX-2.3 22B "
                    "configuration.",
    )
    e.add_argument("config", help="YAML config file (e.g. conf/default.yaml)")
    e.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. cluster.zero_stage=3")
    e.add_argument("--json", action="store_true", help="print the estimate as JSON")
    e.add_argument("--exact-depth", action="store_true",
                   help="run every transformer block (minutes for the 48-block model) instead of two probe depths")
    e.add_argument("--cpu-attention", action="store_true",
                   help="count attention as CPU SDPA runs it, not as a GPU's fused kernel holds it")
    g = sub.add_parser(
        "generate",
        parents=[common],
        help="run a trained av2av IC-LoRA on a reference clip and write the generated mp4 (video + audio)",
        description="Frames, frame rate, resolution and aspect ratio come from the config's request.validation_* "
                    "fields, steps and guidance from preview.*; override them as key=value.",
    )
    g.add_argument("config", help="YAML config file (the one the LoRA was trained with, or conf/default.yaml)")
    g.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. request.validation_number_of_frames=49")
    g.add_argument("--lora", required=True, help="the IC-LoRA file: a path or an s3://, gs://, http(s):// URI")
    g.add_argument("--reference-video", required=True, help="the reference clip (path or URI)")
    g.add_argument("--reference-audio", help="the reference's sound, when the video has none (path or URI)")
    g.add_argument("--prompt", required=True, help="the caption, with the LoRA's trigger phrase")
    g.add_argument("--negative-prompt", help="default: the config's request.validation_negative_prompt")
    g.add_argument("--strength", type=float, default=1.0, help="LoRA strength (default 1.0)")
    g.add_argument("--seed", type=int, help="default: the config's seed")
    g.add_argument("--out", default="generated.mp4", help="output mp4: a path or an s3:// / gs:// URI")
    g.add_argument("--side-by-side", action="store_true", help="put the reference on the left of the output")
    g.add_argument("--latents-out", help="also save the generated latents (safetensors: video, audio)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    # Overrides may also follow the options (`generate CONFIG --lora L key=value`); argparse's
    # intermixed parsing does not work with subcommands, so take the leftover key=value items here.
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *rest]
    console.setup(verbose=args.verbose)
    # `kill`, `ray job stop` and a pod's termination send SIGTERM: exit through the `finally` blocks, so
    # temporary folders go and the run's lease is released.
    tempdirs.exit_cleanly_on_sigterm()
    from ltx_ray.config import dump_yaml, explain, load_config

    try:
        job, _warnings = load_config(args.config, args.overrides, training=args.command not in ("generate", "estimate"))
        if args.command == "train" and not args.verbose and not job.cluster.use_gpu:
            from ltx_ray.train.deepspeed_config import deepspeed_accelerator  # no DeepSpeed import

            # DeepSpeed's accelerator, before this process (and a local Ray instance's, which inherit its
            # environment) imports DeepSpeed: told, it does not warn that it guessed the CPU.
            os.environ.setdefault("DS_ACCELERATOR", deepspeed_accelerator(job))
        if args.command == "validate":
            if os.path.isfile(job.request.training_data_url):
                from ltx_ray.latents.holdout import check_local_archive

                check_local_archive(job.train.holdout_pairs, job.request.training_data_url)
            sys.stdout.write(explain(job) if args.explain else dump_yaml(job))
            return 0
        if args.command == "preprocess":
            from ltx_ray.latents.pipeline import run_preprocess

            run_preprocess(job)
            return 0
        if args.command == "train":
            from ltx_ray.train.driver import run_job

            run_job(job)
            return 0
        if args.command == "estimate":
            from ltx_ray.estimate.estimate import as_json, estimate, format_table

            est = estimate(job, exact_depth=args.exact_depth, gpu_attention=not args.cpu_attention)
            print(as_json(est) if args.json else format_table(est))
            return 0
        if args.command == "generate":
            from ltx_ray.sample.generate import GenerateRequest, generate

            out = generate(job, GenerateRequest(
                lora=args.lora, reference_video=args.reference_video, reference_audio=args.reference_audio,
                prompt=args.prompt, negative_prompt=args.negative_prompt, strength=args.strength, seed=args.seed,
                out=args.out, side_by_side=args.side_by_side, latents_out=args.latents_out,
            ))
            print(out)
            return 0
    except UserError as err:
        print(f"error: {err.headline} ({len(err.problems)} problem(s)):", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return err.exit_code
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
