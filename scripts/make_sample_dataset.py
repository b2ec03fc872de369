"""Write the synthetic sample dataset: DIR/av2av_pairs.zip and DIR/validation_ref.mp4.

    python scripts/make_sample_dataset.py --out .cache/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import write_sample_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the sample dataset."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--pairs", type=int, default=10, help="number of clip pairs (default 10)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: seconds x fps)")
    p.add_argument("--fps", type=float, default=16, help="frame rate of the clips (default 16)")
    p.add_argument("--seconds", type=float, default=2.0, help="clip length when --frames is not given (default 2)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    args = p.parse_args(argv)
    out = write_sample_dataset(
        args.out, args.pairs,
        frames=args.frames, fps=args.fps, seconds=args.seconds, width=args.width, height=args.height,
    )
    print(f"wrote {out.archive} and {out.validation_ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
