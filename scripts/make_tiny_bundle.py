#!/usr/bin/env python
"""Write the tiny LTX-2.3 bundle: DIR/ltx-2.3-tiny.safetensors and DIR/gemma-3-tiny/ (a few seconds on a CPU)."""

import argparse

from ltx_ray.model.tiny import write_tiny_bundle


def main() -> None:
    """Parse `--out DIR [--seed N]` and write the bundle there."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output directory, e.g. .cache/tiny-bundle")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    args = parser.parse_args()
    checkpoint, gemma_dir = write_tiny_bundle(args.out, seed=args.seed)
    print(f"wrote {checkpoint} and {gemma_dir}")


if __name__ == "__main__":
    main()
