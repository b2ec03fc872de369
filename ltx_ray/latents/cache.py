"""The latent cache: its key, its completion marker, and the lookup that trusts only verified shards.

`<storage_path>/<run>/latents/<key>/` holds one writer's folder per build,
`<writer>/shards/*.parquet` and `<writer>/report.json`, and `_COMPLETE.json`, written
last: it publishes the cache and lists its shards with their sizes and SHA-256. Readers
read only the listed shards, so two writers can never mix theirs; a cache whose shards do
not match its marker is named, deleted and rebuilt, and writer folders no marker lists (a
writer that died) are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from ltx_ray.config.schema import JobConfig
from ltx_ray.storage import file_sha256, join, read_bytes, resolve_filesystem, retrying, storage_uri, write_bytes

log = logging.getLogger(__name__)

# 2: temporally subsampled references keep frames 0, 1, 1+k, ... (were 0, k, 2k, ...).
# 3: shards under a writer prefix, listed with sizes and checksums in the marker.
CACHE_FORMAT = 3
COMPLETE_MARKER = "_COMPLETE.json"
REPORT_FILE = "report.json"
# The tensors of a cached pair's `latents` blob (`ltx_ray.latents.blobs`), by the names the batches use.
LATENT_TENSORS = ("ref_video", "video", "ref_audio", "audio", "video_context", "audio_context", "context_mask")


@dataclass
class LatentCache:
    """A complete latent cache in storage."""

    uri: str
    key: str
    hit: bool
    report: dict[str, Any] = field(default_factory=dict)
    storage: Any = None
    writer: str = ""  # the writer prefix that holds this cache's files
    shards: list[str] = field(default_factory=list)  # their paths under `uri`, as the marker lists them

    @property
    def writer_uri(self) -> str:
        return join(self.uri, self.writer)

    def dataset(self):
        """The cached latents of the accepted pairs, as a Ray Dataset (the marker's shards, no others)."""
        import ray.data
        from ray.data.expressions import col

        fs, path = resolve_filesystem(self.uri, self.storage)
        ds = ray.data.read_parquet([join(path, s) for s in self.shards], filesystem=fs)
        ds = ds.select_columns(["index", "error", "latents"])
        return ds.filter(expr=col("error") == "").select_columns(["index", "latents"])


def cache_key(job: JobConfig, archive_sha256: str, model_identity: str) -> str:
    """A digest of everything that changes the latents: data, model and every preprocessing knob."""
    r = job.request
    identity = {
        "format": CACHE_FORMAT,
        "archive": archive_sha256,
        "model": model_identity,
        "resolution": r.resolution,
        "aspect_ratio": r.aspect_ratio,
        "number_of_frames": r.number_of_frames,
        "frame_rate": r.frame_rate,
        "reference_downscale_factor": r.reference_downscale_factor,
        "reference_temporal_scale_factor": r.reference_temporal_scale_factor,
        "auto_scale_input": r.auto_scale_input,
        "audio_normalize": r.audio_normalize,
        "audio_preserve_pitch": r.audio_preserve_pitch,
        "trigger_phrase": r.trigger_phrase,
        # The debug archive's per-pair parts are written by the decode stage, with the cache.
        "debug_dataset": r.debug_dataset,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def find_cache(job: JobConfig, run: str, key: str) -> LatentCache | None:
    """The complete, verified cache for `key`, or None.

    Writer folders that no marker lists are left over from a writer that stopped, and are deleted;
    a cache whose shards do not match its marker is named, deleted and rebuilt.
    """
    uri = cache_uri(job, run, key)
    fs, path = resolve_filesystem(uri, job.storage)
    entries = retrying(f"listing {uri}", lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)),
                       job.storage)
    names = {e.base_name: e for e in entries}
    marker, problem = None, ""
    if COMPLETE_MARKER in names:
        try:
            marker = json.loads(read_bytes(fs, join(path, COMPLETE_MARKER), job.storage, join(uri, COMPLETE_MARKER)))
            if marker.get("format") != CACHE_FORMAT or not isinstance(marker.get("shards"), list):
                marker, problem = None, f"its {COMPLETE_MARKER} is of an earlier format"
        except ValueError:
            problem = f"its {COMPLETE_MARKER} is damaged"
    if marker is not None:
        problem = _verify_shards(fs, path, uri, marker["shards"], job)
    if problem:
        log.warning("latent cache %s is unusable (%s): deleting it and rebuilding", uri, problem)
        retrying(f"deleting {uri}", lambda: fs.delete_dir(path), job.storage, where=uri)
        return None
    for name, entry in names.items():
        if entry.type == pafs.FileType.Directory and name != (marker or {}).get("writer"):
            log.warning("deleting an incomplete latent cache write (listed by no %s): %s", COMPLETE_MARKER,
                        join(uri, name))
            retrying(f"deleting {join(uri, name)}", lambda: fs.delete_dir(entry.path), job.storage)
    if marker is None:
        return None
    report = json.loads(read_bytes(fs, join(path, marker["writer"], REPORT_FILE), job.storage,
                                   join(uri, marker["writer"], REPORT_FILE)))
    return LatentCache(uri=uri, key=key, hit=True, report=report, storage=job.storage, writer=marker["writer"],
                       shards=[s["path"] for s in marker["shards"]])


def _verify_shards(fs: pafs.FileSystem, root: str, uri: str, shards: list[dict], job: JobConfig) -> str:
    """Why the marker's shards are not what it says ("" when every size and SHA-256 matches)."""
    for shard in shards:
        where = join(uri, shard["path"])
        info = retrying(f"looking up {where}", lambda: fs.get_file_info(join(root, shard["path"])), job.storage)
        if info.type != pafs.FileType.File:
            return f"{where} is missing"
        if info.size != shard["size"]:
            return f"{where} is {info.size} bytes, the marker says {shard['size']}"
        if file_sha256(fs, join(root, shard["path"]), job.storage, where) != shard["sha256"]:
            return f"{where} does not match its checksum"
    return ""


def cache_uri(job: JobConfig, run: str, key: str) -> str:
    """Where the latent cache of `key` lives: `<storage_path>/<run>/latents/<key>`."""
    return storage_uri(job.storage, run, "latents", key)


def new_writer() -> str:
    """A writer prefix of its own for one build: nothing another writer of the same key does can touch it."""
    return f"w-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def listed_shards(job: JobConfig, uri: str, writer: str) -> list[dict[str, Any]]:
    """The writer's shards as the marker lists them: path under the cache, size and SHA-256."""
    fs, path = resolve_filesystem(uri, job.storage)
    where = join(uri, writer, "shards")
    files = retrying(f"listing {where}", lambda: fs.get_file_info(pafs.FileSelector(join(path, writer, "shards"))),
                     job.storage)
    return [{"path": f"{writer}/shards/{f.base_name}", "size": f.size,
             "sha256": file_sha256(fs, f.path, job.storage, join(where, f.base_name))}
            for f in sorted(files, key=lambda f: f.base_name) if f.type == pafs.FileType.File]


def write_report(job: JobConfig, uri: str, writer: str, report: dict[str, Any]) -> None:
    """The build's report, beside its shards."""
    fs, path = resolve_filesystem(uri, job.storage)
    _write_json(fs, join(path, writer, REPORT_FILE), report, job)


def publish(job: JobConfig, uri: str, key: str, writer: str, shards: list[dict[str, Any]],
            report: dict[str, Any]) -> "LatentCache":
    """Write the completion marker, last: from here on the cache exists, holding exactly these shards."""
    fs, path = resolve_filesystem(uri, job.storage)
    _write_json(fs, join(path, COMPLETE_MARKER), {"key": key, "format": CACHE_FORMAT, "pairs": report["pairs_out"],
                                                  "writer": writer, "shards": shards}, job)
    log.info("latent cache written: %s", uri)
    return LatentCache(uri=uri, key=key, hit=False, report=report, storage=job.storage, writer=writer,
                       shards=[s["path"] for s in shards])


def _write_json(fs: pafs.FileSystem, path: str, data: dict, job: JobConfig) -> None:
    write_bytes(fs, path, json.dumps(data, indent=2).encode(), job.storage)
