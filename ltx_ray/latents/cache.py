"""The latent cache: its key, its completion marker, and the lookup that trusts only verified shards.

One cache per storage, shared by its runs (`storage.latent_cache_path`, default `<storage_path>/latents`):
`<latents>/<key>/` holds one writer's folder per build, `<writer>/shards/*.parquet` and
`<writer>/report.json`, and `_COMPLETE.json`, written last: it publishes the cache and lists its
shards with their sizes and SHA-256. Readers read only the listed shards, so a writer's files are
never read before its marker lists them. One driver builds a key at a time, holding the key's lease
(`<key>/_LEASE.json`, `ltx_ray.lease`); a driver of another run that needs the same key waits for it
and reads the result. The holder alone deletes: a cache whose shards do not match its marker (named,
then rebuilt) and writer folders no marker lists (builds that died).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow.fs as pafs

from ltx_ray.config.schema import JobConfig
from ltx_ray.lease import LEASE_FILE, Lease, LeaseHeld
from ltx_ray.run_store import RunStore
from ltx_ray.storage import join

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


def find_cache(store: RunStore, key: str) -> LatentCache | None:
    """The complete, verified cache of `key`, or None. Reads only: what is wrong is `clean`'s, under the key's lease."""
    uri = cache_uri(store, key)
    marker, problem = _marker(store, uri)
    if marker is None or problem or _verify_shards(store, uri, marker["shards"]):
        return None
    report = json.loads(store.read(join(uri, marker["writer"], REPORT_FILE)))
    return LatentCache(uri=uri, key=key, hit=True, report=report, storage=store.storage, writer=marker["writer"],
                       shards=[s["path"] for s in marker["shards"]])


@contextmanager
def building(store: RunStore, key: str) -> Iterator[LatentCache | None]:
    """Hold the build of `key` for the block: yields None (build it), or the cache that the driver of another
    run built while this one waited for it (then no lease is held)."""
    uri = cache_uri(store, key)
    lease = Lease(store, join(uri, LEASE_FILE), label=f"latent cache {uri}")
    told = False
    while True:
        try:
            lease.acquire()
            break
        except LeaseHeld as held:
            if not told:
                h = held.holder
                log.info("latent cache %s is being built by another driver (pid %s on %s): waiting for it", uri,
                         h.get("pid", "?"), h.get("host", "?"))
                told = True
        time.sleep(min(5.0, lease.timeout / 4))
        cached = find_cache(store, key)
        if cached is not None:
            yield cached
            return
    try:
        yield find_cache(store, key)  # built by the driver this one waited for, or still to build
    finally:
        lease.release()


def clean(store: RunStore, key: str) -> None:
    """Under the key's lease: delete a cache whose marker or shards are wrong (named in the log), and writer
    folders no marker lists (builds that stopped before publishing)."""
    uri = cache_uri(store, key)
    marker, problem = _marker(store, uri)
    if marker is not None and not problem:
        problem = _verify_shards(store, uri, marker["shards"])
    keep, damaged = (marker or {}).get("writer"), None
    if problem:
        log.warning("latent cache %s is unusable (%s): deleting it and rebuilding", uri, problem)
        store.delete(join(uri, COMPLETE_MARKER))  # first: from here on nobody trusts its shards
        keep, damaged = None, (marker or {}).get("writer")
    for entry in store.list(uri):
        if entry.type != pafs.FileType.Directory or entry.base_name == keep:
            continue
        if entry.base_name != damaged:
            log.warning("deleting an incomplete latent cache write (listed by no %s): %s", COMPLETE_MARKER,
                        join(uri, entry.base_name))
        store.delete(join(uri, entry.base_name))


def _marker(store: RunStore, uri: str) -> tuple[dict | None, str]:
    """The cache's completion marker (None when there is none) and what is wrong with it ("" when nothing)."""
    where = join(uri, COMPLETE_MARKER)
    if not store.is_file(where):
        return None, ""
    try:
        marker = json.loads(store.read(where))
    except ValueError:
        return None, f"its {COMPLETE_MARKER} is damaged"
    if marker.get("format") != CACHE_FORMAT or not isinstance(marker.get("shards"), list):
        return None, f"its {COMPLETE_MARKER} is of an earlier format"
    return marker, ""


def _verify_shards(store: RunStore, uri: str, shards: list[dict]) -> str:
    """Why the marker's shards are not what it says ("" when every size and SHA-256 matches)."""
    for shard in shards:
        where = join(uri, shard["path"])
        info = store.info(where)
        if info.type != pafs.FileType.File:
            return f"{where} is missing"
        if info.size != shard["size"]:
            return f"{where} is {info.size} bytes, the marker says {shard['size']}"
        if store.sha256(where) != shard["sha256"]:
            return f"{where} does not match its checksum"
    return ""


def cache_uri(store: RunStore, key: str) -> str:
    """Where the latent cache of `key` lives: `<latents>/<key>`, shared by every run of the storage."""
    return join(store.latents, key)


def new_writer() -> str:
    """A writer prefix of its own for one build: nothing another writer of the same key does can touch it."""
    return f"w-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def listed_shards(store: RunStore, uri: str, writer: str) -> list[dict[str, Any]]:
    """The writer's shards as the marker lists them: path under the cache, size and SHA-256."""
    where = join(uri, writer, "shards")
    files = store.list(where)
    return [{"path": f"{writer}/shards/{f.base_name}", "size": f.size,
             "sha256": store.sha256(join(where, f.base_name))}
            for f in sorted(files, key=lambda f: f.base_name) if f.type == pafs.FileType.File]


def write_report(store: RunStore, uri: str, writer: str, report: dict[str, Any]) -> None:
    """The build's report, beside its shards."""
    _write_json(store, join(uri, writer, REPORT_FILE), report)


def publish(store: RunStore, uri: str, key: str, writer: str, shards: list[dict[str, Any]],
            report: dict[str, Any]) -> "LatentCache":
    """Write the completion marker, last: from here on the cache exists, holding exactly these shards."""
    _write_json(store, join(uri, COMPLETE_MARKER), {"key": key, "format": CACHE_FORMAT, "pairs": report["pairs_out"],
                                                    "writer": writer, "shards": shards})
    log.info("latent cache written: %s", uri)
    return LatentCache(uri=uri, key=key, hit=False, report=report, storage=store.storage, writer=writer,
                       shards=[s["path"] for s in shards])


def _write_json(store: RunStore, uri: str, data: dict) -> None:
    store.write(uri, json.dumps(data, indent=2).encode())
