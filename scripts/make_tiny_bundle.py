#!/usr/bin/env python
"""Write a tiny bundle (a few seconds on a CPU).

LTX-2.3 (default): DIR/ltx-2.3-tiny.safetensors and DIR/gemma-3-tiny/. LTX-2.5 (`--version 2.5`): one file per
component, as Lightricks publishes 2.5: the transformer, the video VAE, the audio VAE with the vocoder, and a
Gemma-4 packed with its feature projection; the `model.*` overrides that point a job at them are printed.
"""

import argparse

from ltx_ray.model.tiny import write_tiny_bundle, write_tiny_bundle_25


def main() -> None:
    """Parse `--out DIR [--seed N] [--version 2.3|2.5]` and write the bundle there."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory, e.g. .cache/tiny-bundle")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--version", choices=("2.3", "2.5"), default="2.3", help="the LTX generation's format")
    args = parser.parse_args()
    if args.version == "2.3":
        checkpoint, gemma_dir = write_tiny_bundle(args.out, seed=args.seed)
        print(f"wrote {checkpoint} and {gemma_dir}")
        return
    f = write_tiny_bundle_25(args.out, seed=args.seed)
    print(f"model.checkpoint={f.transformer} model.video_vae={f.video_vae} model.audio_vae={f.audio_vae} "
          f"model.text_encoder={f.text_encoder}")


if __name__ == "__main__":
    main()
