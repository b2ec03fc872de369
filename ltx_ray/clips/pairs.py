"""Pair the extracted files: `<name>_start.<ext>` with `<name>_end.<ext>` and an optional `<name>.txt`.

Pairing is by file name alone (folders do not matter, names are unique
across the archive); video extensions are case-insensitive and the two clips
of a pair may use different containers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping

from ltx_ray.errors import DatasetError, Problem

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi")
CAPTION_EXTENSION = ".txt"
RECOMMENDED_PAIRS = 10


@dataclass(frozen=True)
class PairFiles:
    """One training pair on local disk: reference (`start`), target (`end`) and optional caption."""

    name: str
    start: Path
    end: Path
    caption_path: Path | None = None


def match_pairs(files: Mapping[str, Path], label: str = "archive") -> tuple[list[PairFiles], list[str]]:
    """Pair archive files (archive name -> local path); return the pairs sorted by name and warnings.

    Raises `DatasetError` listing every `_start` without `_end`, `_end` without
    `_start`, clip with an unsupported extension, and doubled role (e.g.
    `a_start.mp4` and `a_start.mov`); also when no pair is found at all.
    Files that are neither clips nor captions are reported in the warnings.
    """
    problems: list[Problem] = []
    warnings: list[str] = []
    starts: dict[str, tuple[str, Path]] = {}
    ends: dict[str, tuple[str, Path]] = {}
    captions: dict[str, tuple[str, Path]] = {}
    for archive_name, path in sorted(files.items()):
        base = PurePosixPath(archive_name).name
        stem, ext = _split(base)
        ext_l = ext.lower()
        role = "start" if stem.endswith("_start") else "end" if stem.endswith("_end") else None
        if ext_l == CAPTION_EXTENSION:
            captions[stem] = (archive_name, path)
            continue
        if role is None:
            warnings.append(f"{archive_name}: ignored (neither <name>_start/_end clip nor <name>.txt caption)")
            continue
        if ext_l not in VIDEO_EXTENSIONS:
            supported = " ".join(VIDEO_EXTENSIONS)
            unsupported = f"unsupported video format {ext or '(none)'!r}; use one of {supported}"
            problems.append(Problem(archive_name, unsupported))
            continue
        name = stem[: -len("_" + role)]
        if not name:
            problems.append(Problem(archive_name, f"clip name is empty before '_{role}'"))
            continue
        table = starts if role == "start" else ends
        if name in table:
            twice = f"pair {name!r} has two _{role} clips: {table[name][0]} and {archive_name}"
            problems.append(Problem(archive_name, twice))
            continue
        table[name] = (archive_name, path)

    for name, (archive_name, _) in starts.items():
        if name not in ends:
            problems.append(Problem(archive_name, f"has no matching {name}_end.<ext> target clip"))
    for name, (archive_name, _) in ends.items():
        if name not in starts:
            problems.append(Problem(archive_name, f"target has no matching {name}_start.<ext> reference clip"))
    if problems:
        raise DatasetError(problems)

    names = sorted(set(starts) & set(ends))
    if not names:
        raise DatasetError(Problem(label, "contains no <name>_start.<ext> / <name>_end.<ext> clip pairs"))
    for stem, (archive_name, _) in sorted(captions.items()):
        if stem not in starts:
            warnings.append(f"{archive_name}: ignored (caption without a {stem}_start/{stem}_end pair)")
    if len(names) < RECOMMENDED_PAIRS:
        warnings.append(f"only {len(names)} pair(s) found. Aim for at least {RECOMMENDED_PAIRS} pairs.")
    pairs = [
        PairFiles(name, starts[name][1], ends[name][1], captions[name][1] if name in captions else None)
        for name in names
    ]
    return pairs, warnings


def read_caption(pair: PairFiles, trigger_phrase: str = "") -> tuple[str, str | None]:
    """The pair's training caption (UTF-8, stripped, trigger phrase first) and a warning if it is empty.

    Raises `DatasetError` naming the file when it is not valid UTF-8.
    """
    text = ""
    if pair.caption_path is not None:
        try:
            # utf-8-sig: editors on Windows add a BOM that would otherwise end up in the prompt.
            text = pair.caption_path.read_text(encoding="utf-8-sig").strip()
        except UnicodeDecodeError as exc:
            raise DatasetError(Problem(pair.caption_path.name, f"caption is not valid UTF-8 ({exc.reason})")) from None
    warning = None
    if not text:
        why = "caption file is empty" if pair.caption_path is not None else "has no caption file"
        used = "the trigger phrase alone" if trigger_phrase else "an empty caption"
        warning = f"{pair.name}: {why}; training with {used}"
    trigger = trigger_phrase.strip()
    # A caption that already starts with the trigger keeps it once, not twice.
    if trigger and not (text == trigger or text.startswith(trigger + " ")):
        text = f"{trigger} {text}".strip()
    return text, warning


def _split(base: str) -> tuple[str, str]:
    stem, dot, ext = base.rpartition(".")
    return (stem, "." + ext) if dot and stem else (base, "")
