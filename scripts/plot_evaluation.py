#!/usr/bin/env python
"""Draw a run's held-out evaluation from its W&B history: the README's "Is it learning?" plot.

    .venv/bin/python scripts/plot_evaluation.py runs/demo/outputs/wandb [--out docs/is-it-learning.png]

Reads the offline run file(s) under the folder (`run-*.wandb`, every (re)start of the run, in order;
`scripts/wandb_history.py`) and draws three panels over the optimizer steps: the training loss of each
step (noisy: a random σ per sample); the evaluation's loss per modality on the held-out pairs (solid) and
on the fixed training sample (dashed): their gap is overfitting; and the held-out reference gain per
modality (a wrong reference's loss / the own reference's; 1, drawn, means the reference is ignored).
Needs matplotlib (`pip install matplotlib`; not a dependency of the product).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wandb_history import read_offline_history  # noqa: E402

COLOURS = {"video": "tab:blue", "audio": "tab:orange"}


def history(folder: Path) -> list[dict]:
    """Every logged row of the run files under `folder` (or the file itself), oldest run file first."""
    files = [folder] if folder.is_file() else sorted(folder.rglob("run-*.wandb"))
    if not files:
        raise SystemExit(f"no W&B run file (run-*.wandb) under {folder}")
    return [row for f in files for row in read_offline_history(f)]


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, the last value logged at each step."""
    points = {int(r["_step"]): float(r[key]) for r in rows if key in r}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wandb", type=Path, help="the run's W&B folder (e.g. runs/demo/outputs/wandb) or a run file")
    p.add_argument("--out", type=Path, default=Path("docs/is-it-learning.png"))
    p.add_argument("--title", default=None)
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = history(a.wandb)
    if not any("eval/holdout/loss_video" in r for r in rows):
        raise SystemExit(f"{a.wandb}: no held-out evaluation logged (the run had train.holdout_pairs=0)")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for m, colour in COLOURS.items():
        axes[0].plot(*series(rows, f"{m}_loss"), color=colour, alpha=0.45, lw=1, label=f"{m} (training step)")
        axes[1].plot(*series(rows, f"eval/holdout/loss_{m}"), "o-", color=colour, label=f"{m}, held-out pairs")
        axes[1].plot(*series(rows, f"eval/train/loss_{m}"), "s--", color=colour, alpha=0.7,
                     label=f"{m}, training pairs")
        axes[2].plot(*series(rows, f"eval/holdout/reference_gain_{m}"), "o-", color=colour, label=m)
    axes[2].axhline(1.0, color="grey", lw=1, ls=":", label="1: the reference is ignored")
    titles = ("training loss (a random σ per sample)", "evaluation loss (σ ladder, fixed noise)",
              "held-out reference gain (wrong ref. / own)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if a.title:
        fig.suptitle(a.title, fontsize=11)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
