"""Safe extraction of the training archive.

Every entry is checked before a single byte is written: no absolute paths or
`..` (zip-slip), no names longer than a file system holds, no symlinks, no zip bombs (total size and per-entry
compression ratio), and unique file names across folders. macOS metadata and
hidden files are skipped. All problems are reported together.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ltx_ray.errors import DatasetError, Problem

# A clip dataset of a few hundred short pairs is a few GiB; 50 GiB is "something is wrong".
MAX_TOTAL_BYTES = 50 * 1024**3
MAX_ENTRIES = 100_000
# Video compresses barely at all; a ratio this high on a large entry is a bomb.
MAX_RATIO = 200
RATIO_MIN_BYTES = 1024 * 1024
CHUNK = 1024 * 1024
# The longest file or folder name ext4, XFS, APFS and NTFS hold (bytes of UTF-8 on the first three).
MAX_NAME_BYTES = 255


@dataclass
class Extracted:
    """What came out of an archive: kept files (archive name -> local path) and skipped names.

    Archive names use "/" separators; `members` maps each back to the entry
    name stored in the zip (they differ only for Windows-style backslashes).
    """

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def is_ignored(name: str) -> bool:
    """True for macOS metadata (`__MACOSX/`, `._*`) and hidden files or folders (`.name`)."""
    parts = PurePosixPath(name).parts
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


def extract_archive(
    archive: Path,
    dest_dir: Path,
    *,
    label: str | None = None,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
    max_entries: int = MAX_ENTRIES,
) -> Extracted:
    """Check every entry of a zip, then extract the kept files under `dest_dir`.

    Folders inside the archive are kept as folders. `label` names the archive
    in errors (e.g. the user's URL instead of a temporary download path).
    Raises `DatasetError` listing every problem; on failure nothing extracted
    is left behind. The archive itself is only read.
    """
    label = label or Path(archive).name
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(Problem(label, f"is not a valid .zip archive ({exc})")) from None
    with zf:
        infos = _check_entries(zf, label, max_total_bytes, max_ratio, max_entries)
        result = Extracted(root=Path(dest_dir))
        result.ignored = [i.filename for i in zf.infolist() if not i.is_dir() and is_ignored(_clean(i.filename))]
        dest_dir = Path(dest_dir)
        created = not dest_dir.exists()
        dest_dir.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            for info in infos:
                name = _clean(info.filename)
                target = dest_dir.joinpath(*PurePosixPath(name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    # Count real bytes too: the sizes in the headers are the bomb's own claim.
                    while block := src.read(CHUNK):
                        written += len(block)
                        if written > max_total_bytes:
                            limit = f"uncompressed size exceeds the {max_total_bytes} byte limit"
                            raise DatasetError(Problem(label, limit))
                        out.write(block)
                result.files[name] = target
                result.members[name] = info.filename
        except BaseException as exc:
            if created:
                shutil.rmtree(dest_dir, ignore_errors=True)
            else:
                for path in result.files.values():
                    path.unlink(missing_ok=True)
            if isinstance(exc, (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error)):
                raise DatasetError(Problem(label, f"is corrupt: {exc}")) from None
            raise
    return result


def _clean(name: str) -> str:
    # Zips made on Windows sometimes use backslashes; treat them as separators.
    return name.replace("\\", "/")


def _check_entries(
    zf: zipfile.ZipFile, label: str, max_total_bytes: int, max_ratio: float, max_entries: int
) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise DatasetError(Problem(label, f"has {len(infos)} entries; the limit is {max_entries}"))
    problems: list[Problem] = []
    kept: list[zipfile.ZipInfo] = []
    seen: dict[str, str] = {}
    total = 0
    for info in infos:
        name = _clean(info.filename)
        path = PurePosixPath(name)
        # Unsafe entries are refused even inside ignored folders: a zip carrying them is hostile.
        if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
            problems.append(Problem(info.filename, "entry escapes the archive folder (absolute path or '..'); refused"))
            continue
        too_long = [p for p in path.parts if len(p.encode("utf-8")) > MAX_NAME_BYTES]
        if too_long:
            problems.append(Problem(info.filename, f"a name in this path is {len(too_long[0].encode('utf-8'))} bytes "
                                                   f"long; file systems hold at most {MAX_NAME_BYTES}: shorten it "
                                                   "(for a pair, its <name> before _start.mp4 / _end.mp4)"))
            continue
        if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
            problems.append(Problem(info.filename, "symbolic links are not allowed in the archive"))
            continue
        if info.is_dir() or is_ignored(name):
            continue
        if info.flag_bits & 0x1:
            problems.append(Problem(info.filename, "is encrypted; upload an archive without a password"))
            continue
        total += info.file_size
        if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            problems.append(Problem(info.filename, f"compression ratio above {max_ratio:g}:1 (zip bomb?); refused"))
            continue
        # Names must be unique across folders; compare case-insensitively so
        # the archive also extracts on case-insensitive filesystems.
        key = path.name.casefold()
        if key in seen:
            problems.append(
                Problem(path.name, f"file name is not unique in the archive: {seen[key]} and {info.filename}")
            )
            continue
        seen[key] = info.filename
        kept.append(info)
    if total > max_total_bytes:
        problems.append(
            Problem(label, f"uncompressed size {total} bytes exceeds the {max_total_bytes} byte limit (zip bomb?)")
        )
    if problems:
        raise DatasetError(problems)
    return kept
