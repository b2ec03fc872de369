"""The `ltx-ray` command: parse arguments, dispatch to a stage, map user errors to exit 2."""

from __future__ import annotations

import argparse
import logging
import sys

from ltx_ray.errors import UserError

log = logging.getLogger("ltx_ray")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ltx-ray",
        description="Train an LTX-2.3 audio+video IC-LoRA on Ray Train + DeepSpeed.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("validate", "check a config against the spec and print it resolved (exit 2 on errors)"),
        ("preprocess", "fetch, decode and encode the dataset into the latent cache"),
        ("train", "run the whole job: preprocess, train, validate, write outputs"),
    ):
        c = sub.add_parser(name, help=help_)
        c.add_argument("config", help="YAML config file (e.g. conf/default.yaml)")
        c.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. request.rank=64")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ltx_ray.config import dump_yaml, load_config

    try:
        job, _warnings = load_config(args.config, args.overrides)
        if args.command == "validate":
            sys.stdout.write(dump_yaml(job))
            return 0
        if args.command == "preprocess":
            from ltx_ray.data.pipeline import run_preprocess

            run_preprocess(job)
            return 0
        if args.command == "train":
            from ltx_ray.train.driver import run_job

            run_job(job)
            return 0
    except UserError as err:
        print(f"error: the request was rejected ({len(err.problems)} problem(s)):", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return err.exit_code
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
