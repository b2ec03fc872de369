"""Held-out pairs (`train.holdout_pairs`): cached with the others, never trained on, evaluated.

Which pairs are held out follows from their names alone: the `n` names first in the order of a
keyed hash (`holdout_names`), so the same archive always holds out the same pairs whatever the
order of its zip members, and adding a pair moves at most one pair in or out. The evaluation sets
beside them (`EvalSplit.train_sample`) are as many training pairs, the next in the same order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from ltx_ray.errors import ConfigError, Problem
from ltx_ray.latents.reader import LatentIndex

FIELD = "train.holdout_pairs"


def hash_order(names: Iterable[str]) -> list[str]:
    """The names in the order of their keyed BLAKE2b digest: stable, independent of how they were listed."""
    def key(name: str) -> tuple[bytes, str]:
        return hashlib.blake2b(name.encode(), digest_size=16, key=b"ltx-ray-holdout").digest(), name

    return sorted(set(names), key=key)


def holdout_names(names: Iterable[str], n: int) -> list[str]:
    """The `n` pairs held out of `names`, sorted by name."""
    return sorted(hash_order(names)[:n])


def check_holdout(n: int, pairs: int) -> None:
    """Refuse (a 422, naming the field) holding out `n` of `pairs` accepted pairs when it leaves none to train on."""
    if n and n >= pairs:
        raise ConfigError(Problem(FIELD, f"holds out {n} of the archive's {pairs} accepted pair(s), leaving none to "
                                         f"train on: set it to at most {pairs - 1}, or add pairs"))


def check_local_archive(n: int, archive: str) -> None:
    """`ltx-ray validate`'s check of `n` held-out pairs against a local archive's pairs, by name (no clip is read;
    preprocessing, which also drops clips too short, checks the pairs it accepts again)."""
    import zipfile
    from pathlib import Path, PurePosixPath

    from ltx_ray.clips.archive import is_ignored
    from ltx_ray.clips.pairs import match_pairs

    if not n or not zipfile.is_zipfile(archive):
        return
    with zipfile.ZipFile(archive) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir() and not is_ignored(i.filename)]
    pairs, _ = match_pairs({name: Path(PurePosixPath(name).name) for name in names}, label=archive)
    check_holdout(n, len(pairs))


@dataclass(frozen=True)
class EvalSplit:
    """A run's samples cut by `train.holdout_pairs`: what it trains on and what it evaluates."""

    train: LatentIndex  # every sample not held out (all of them without held-out pairs)
    holdout: LatentIndex  # the held-out pairs
    train_sample: LatentIndex  # as many training pairs as held-out ones, fixed: the evaluation's "train" split

    @property
    def evaluated(self) -> bool:
        return len(self.holdout) > 0


def split(index: LatentIndex, n: int) -> EvalSplit:
    """Cut a complete cache's index: `n` pairs held out (refused when none would be left to train on)."""
    check_holdout(n, len(index))
    order = hash_order(index.names)
    held = set(order[:n])
    return EvalSplit(train=index.subset(name for name in index.names if name not in held),
                     holdout=index.subset(held), train_sample=index.subset(order[n:2 * n]))
