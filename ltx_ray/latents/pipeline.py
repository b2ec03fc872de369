"""`preprocess`: the training pairs -> latents in the storage's latent cache, with Ray Data.

In the order data flows:

1. on the driver: fetch the archive, hash it, and look the cache key up
   (`ltx_ray.latents.cache`); on a hit nothing else runs. On a miss: take the key's lease
   (or wait for the driver of another run that is building the same key), extract, pair and
   probe (cheap, and the 422-style errors belong before any cluster time), then stage
   the archive where every node can read it;
2. the Ray Data stages (`ltx_ray.latents.stages`): decode and fit each pair on CPU tasks,
   encode it on an actor pool;
3. the writer: Parquet shards under this build's own writer prefix, the report
   (`ltx_ray.latents.report`) beside them, then the completion marker, last, which lists
   the shards with their checksums and so publishes the cache.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data

from ltx_ray import lease, tempdirs
from ltx_ray.config.display import redact_url
from ltx_ray.config.naming import run_name as derive_run_name
from ltx_ray.config.schema import JobConfig
from ltx_ray.latents import cache as latent_cache, report as run_report
from ltx_ray.latents.cache import LatentCache, cache_key, cache_uri, find_cache
from ltx_ray.latents.holdout import EvalSplit, check_holdout
from ltx_ray.run_store import RunStore
from ltx_ray.fetch import content_hash, fetch
from ltx_ray.latents.stages import LARGE_BUFFER_ENV, Encode, decode_stage
from ltx_ray.errors import DatasetError, Problem
from ltx_ray.model.files import model_files
from ltx_ray.ray_cluster import init_ray
from ltx_ray.storage import is_local, join, local_path, resolve_filesystem, upload

log = logging.getLogger(__name__)

SPLIT_NAME = "split.json"  # in the debug dataset


def build_latent_cache(job: JobConfig, store: RunStore | None = None) -> LatentCache:
    """Return the latent cache for this job, building it with Ray Data on a miss (`store`: the run's)."""
    from ltx_ray.model.loader import model_identity

    files = model_files(job.model, job.storage)
    store = store or RunStore(job.storage, derive_run_name(job, files.generation))
    workdir = tempdirs.make("prep")
    try:
        archive = fetch(job.request.training_data_url, workdir, storage=job.storage)
        log.info("fetched %s (%.1f MB)", redact_url(job.request.training_data_url), archive.stat().st_size / 1e6)
        key = cache_key(job, content_hash(archive), model_identity(files, job.storage))
        cached = find_cache(store, key)
        if cached is None:
            with latent_cache.building(store, key) as cached:
                if cached is None:
                    latent_cache.clean(store, key)
                    rows, report = _plan(job, archive, workdir)
                    staged = _stage_archive(job, store, key, archive)
                    for row in rows:
                        row["archive_uri"] = staged
                    return _run_pipeline(job, store, key, rows, report)
        log.info("latent cache hit: %s (%d pairs); no clip is decoded", cached.uri, cached.report["pairs_out"])
        return cached
    finally:
        tempdirs.remove(workdir)


def _plan(job: JobConfig, archive: Path, workdir: Path) -> tuple[list[dict], dict[str, Any]]:
    """Extract, pair and probe on the driver: one row per accepted pair, naming its archive members."""
    from ltx_ray.clips.ingest import manifest_from_archive

    manifest = manifest_from_archive(archive, job.request, workdir, label=redact_url(job.request.training_data_url))
    check_holdout(job.train.holdout_pairs, len(manifest.pairs))  # before any clip is decoded
    log.info("%d pair(s) accepted, %d skipped%s", len(manifest.pairs), len(manifest.skipped),
             "".join(f"; {s.name}: {s.reason}" for s in manifest.skipped[:5]))
    rows = [
        {"index": i, "name": p.name, "caption": p.caption, "start_member": p.start_member, "end_member": p.end_member}
        for i, p in enumerate(manifest.pairs)
    ]
    report = {
        "archive_sha256": manifest.archive_sha256,
        "skipped": [{"name": s.name, "reason": s.reason} for s in manifest.skipped],
        "warnings": manifest.warnings,
    }
    return rows, report


def _stage_archive(job: JobConfig, store: RunStore, key: str, archive: Path) -> str:
    """A URI of the archive that every node can read: the user's own when it already is one."""
    source = job.request.training_data_url
    if not is_local(source) and source.split("://", 1)[0].lower() in ("s3", "gs", "gcs"):
        return source
    if is_local(source) and is_local(job.storage.storage_path):
        return str(local_path(source).absolute())
    # http(s) downloads, or a local archive with remote storage: copy it next to the run once.
    return store.upload(archive, join(store.inputs, f"{key}.zip"))


def publish_debug_dataset(job: JobConfig, cache: LatentCache, out_uri: str, split: EvalSplit | None = None) -> str | None:
    """Merge the per-pair debug zips of the cache into the `debug_dataset` output (when requested), with
    `split.json`: which pairs are trained on and which held out (`split`, `ltx_ray.latents.holdout`)."""
    if not job.request.debug_dataset:
        return None
    fs, path = resolve_filesystem(join(cache.writer_uri, "debug"), job.storage)
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)) if i.is_file)
    tmp = tempdirs.make("debug")
    try:
        merged = tmp / "debug_dataset.zip"
        with zipfile.ZipFile(merged, "w", compression=zipfile.ZIP_STORED) as out:
            for part in parts:
                with fs.open_input_file(part) as f, zipfile.ZipFile(f) as zf:
                    for item in zf.infolist():
                        out.writestr(item, zf.read(item))
            if split is not None:
                out.writestr(SPLIT_NAME, json.dumps(split_listing(split), indent=2))
        upload(merged, out_uri, job.storage)
    finally:
        tempdirs.remove(tmp)
    return out_uri


def split_listing(split: EvalSplit) -> dict[str, list[str]]:
    """Which pairs a run trains on, holds out, and evaluates as its training sample, by name."""
    return {"train": split.train.names, "holdout": split.holdout.names, "eval_train_sample": split.train_sample.names}


def _run_pipeline(job: JobConfig, store: RunStore, key: str, rows: list[dict], report: dict[str, Any]) -> LatentCache:
    """Decode, encode and write the cache; the completion marker goes last."""
    c = job.cluster
    uri = cache_uri(store, key)
    fs, path = store.filesystem(uri)
    writer = latent_cache.new_writer()
    started = time.perf_counter()
    ds = decode_stage(job, rows, debug_uri=join(uri, writer, "debug"))
    ds = ds.map_batches(
        Encode,
        fn_constructor_kwargs={"files": model_files(job.model, job.storage), "use_gpu": c.use_gpu,
                               "precision": c.precision},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=c.encode_actors),
        num_gpus=1 if c.use_gpu else 0,
        num_cpus=1,
        runtime_env={"env_vars": LARGE_BUFFER_ENV},
    )
    ds.write_parquet(join(path, writer, "shards"), filesystem=fs)
    seconds = time.perf_counter() - started

    shards = latent_cache.listed_shards(store, uri, writer)
    table = pq.read_table([join(path, s["path"]) for s in shards], filesystem=fs, columns=run_report.COLUMNS)
    report = run_report.summarize(report, table.to_pylist(), seconds)
    latent_cache.write_report(store, uri, writer, report)
    if report["pairs_out"] == 0:
        raise DatasetError(
            [Problem(f["name"], f["reason"]) for f in report["failed"]]
            or Problem("request.training_data_url", "no pair could be preprocessed")
        )
    return latent_cache.publish(store, uri, key, writer, shards, report)


def run_preprocess(job: JobConfig) -> LatentCache:
    """`ltx-ray preprocess`: build (or find) the latent cache and print where it is."""
    # The model's files are checked before Ray starts: a mismatched set is refused at once.
    store = RunStore(job.storage, derive_run_name(job, model_files(job.model, job.storage).generation))
    init_ray(job)
    with lease.hold(store):
        cache = build_latent_cache(job, store)
    r = cache.report
    state = "found (cache hit, nothing decoded)" if cache.hit else "built"
    print(f"latent cache {state}: {cache.uri}")
    print(f"pairs in {r.get('pairs_in')}, pairs out {r.get('pairs_out')}, failed {len(r.get('failed', []))}")
    if job.train.holdout_pairs:
        from ltx_ray.latents.holdout import split
        from ltx_ray.latents.reader import LatentIndex

        held = split(LatentIndex.read(cache.uri, job.storage), job.train.holdout_pairs).holdout.names
        print(f"held out (train.holdout_pairs={job.train.holdout_pairs}, never trained on): {', '.join(held)}")
    return cache
