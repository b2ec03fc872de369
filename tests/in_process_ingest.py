"""The whole ingest in this process, for tests: what the Ray Data pipeline does pair by pair, in one call."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ltx_ray.clips.ingest import FittedPair, Manifest, SkippedPair, build_manifest, fit_pair, write_debug_archive
from ltx_ray.config.schema import RequestConfig, StorageConfig


@dataclass
class IngestReport:
    """What `ingest` made of the archive: fitted pairs, skipped pairs with reasons, warnings."""

    accepted: list[FittedPair]
    skipped: list[SkippedPair]
    warnings: list[str]
    archive_sha256: str
    debug_archive: Path | None = None
    # The manifest the pairs came from; its extracted clips (`root`) are already removed.
    manifest: Manifest | None = field(default=None, repr=False)


def ingest(request: RequestConfig, workdir: Path, storage: StorageConfig | None = None) -> IngestReport:
    """Turn `request.training_data_url` into fitted pairs in this process.

    Runs `build_manifest`, fits every pair, and with `request.debug_dataset`
    writes `<workdir>/debug_dataset.zip`. The extracted clips are removed
    before returning, on success and on failure.
    """
    manifest = build_manifest(request, workdir, storage)
    try:
        fitted = [fit_pair(p, request) for p in manifest.pairs]
    finally:
        shutil.rmtree(manifest.root, ignore_errors=True)
    debug = write_debug_archive(fitted, Path(workdir) / "debug_dataset.zip", request) if request.debug_dataset else None
    return IngestReport(fitted, manifest.skipped, manifest.warnings, manifest.archive_sha256, debug, manifest)
