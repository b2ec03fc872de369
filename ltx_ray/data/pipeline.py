"""Ray Data preprocessing: pairs -> decoded, fitted clips -> latents, cached in the run's storage.

Stages, in the order data flows:

1. on the driver: fetch the archive, hash it, and look the cache key up; on a
   hit nothing else runs. On a miss: extract, pair and probe (cheap, and the
   422-style errors belong before any cluster time), then stage the archive
   where every node can read it;
2. `decode_fit` (CPU tasks, `map_batches`, a few pairs per task, one output block
   per pair): read the two clips of a pair out of the staged archive and fit them
   (`ltx_ray.data.ingest`);
3. `Encode` (an actor pool, one GPU per actor on GPU clusters): the video VAE
   encoder, audio VAE encoder and text encoder load once per actor and turn
   each pair into latents and caption embeddings;
4. the writer: Parquet shards with fixed-shape tensor columns under a prefix
   of its own, `<storage_path>/<run>/latents/<key>/<writer>/shards/`, then
   `report.json` beside them, then `<key>/_COMPLETE.json` last: it publishes
   the cache and lists its shards with their sizes and SHA-256. Readers read
   only the listed shards, so two writers can never mix theirs; a cache whose
   shards do not match its marker is named, deleted and rebuilt, and writer
   folders no marker lists (a writer that died) are removed.

A pair that fails inside the pipeline travels on as a row with an `error`
and empty tensors, so the report names it and its reason; training reads
only the rows without one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data

from ltx_ray import tempdirs
from ltx_ray.config.load import redact_url, run_name as derive_run_name
from ltx_ray.config.schema import JobConfig
from ltx_ray.data.fetch import content_hash, fetch
from ltx_ray.errors import DatasetError, Problem
from ltx_ray.storage import is_local, join, local_path, resolve_filesystem, retrying, storage_uri, upload

log = logging.getLogger(__name__)

# 2: temporally subsampled references keep frames 0, 1, 1+k, ... (were 0, k, 2k, ...).
# 3: shards under a writer prefix, listed with sizes and checksums in the marker.
CACHE_FORMAT = 3
COMPLETE_MARKER = "_COMPLETE.json"
REPORT_FILE = "report.json"
# The fitted clips in a decoded row's `media` blob: tensor name -> `FittedPair` field.
MEDIA_FIELDS = {"ref_video": "reference_video", "video": "target_video", "ref_audio": "reference_audio",
                "audio": "target_audio"}
LATENT_COLUMNS = ("ref_video", "video", "ref_audio", "audio", "video_context", "audio_context", "context_mask")


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

    def dataset(self) -> ray.data.Dataset:
        """The cached latents of the accepted pairs, as a Ray Dataset (the marker's shards, no others)."""
        fs, path = resolve_filesystem(self.uri, self.storage)
        from ray.data.expressions import col

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
            marker = json.loads(_read(fs, join(path, COMPLETE_MARKER), job))
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
    report = json.loads(_read(fs, join(path, marker["writer"], REPORT_FILE), job))
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
        if _sha256(fs, join(root, shard["path"]), job) != shard["sha256"]:
            return f"{where} does not match its checksum"
    return ""


def _sha256(fs: pafs.FileSystem, path: str, job: JobConfig) -> str:
    def digest() -> str:
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    return retrying(f"reading {path}", digest, job.storage, where=path)


def _read(fs: pafs.FileSystem, path: str, job: JobConfig) -> bytes:
    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return retrying(f"reading {path}", read, job.storage, where=path)


def cache_uri(job: JobConfig, run: str, key: str) -> str:
    """Where the latent cache of `key` lives: `<storage_path>/<run>/latents/<key>`."""
    return storage_uri(job.storage, run, "latents", key)


def build_latent_cache(job: JobConfig, run: str | None = None) -> LatentCache:
    """Return the latent cache for this job, building it with Ray Data on a miss."""
    from ltx_ray.model.loader import checkpoint_identity

    run = run or derive_run_name(job)
    workdir = tempdirs.make("prep")
    try:
        archive = fetch(job.request.training_data_url, workdir, storage=job.storage)
        key = cache_key(job, content_hash(archive), checkpoint_identity(job.model.checkpoint))
        cached = find_cache(job, run, key)
        if cached is not None:
            log.info("latent cache hit: %s (%d pairs); no clip is decoded", cached.uri, cached.report["pairs_out"])
            return cached
        rows, report = _plan(job, archive, workdir)
        staged = _stage_archive(job, run, key, archive)
        for row in rows:
            row["archive_uri"] = staged
        return _run_pipeline(job, run, key, rows, report)
    finally:
        tempdirs.remove(workdir)


def _plan(job: JobConfig, archive: Path, workdir: Path) -> tuple[list[dict], dict[str, Any]]:
    """Extract, pair and probe on the driver: one row per accepted pair, naming its archive members."""
    from ltx_ray.data.ingest import manifest_from_archive

    manifest = manifest_from_archive(archive, job.request, workdir, label=redact_url(job.request.training_data_url))
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


# safetensors dtype codes <-> numpy dtypes (bf16 travels as its 16-bit pattern).
_SAFETENSORS_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.int16,
}
_NUMPY_CODES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items() if k != "BF16"}


def pack_tensors(tensors: dict[str, Any]) -> bytes:
    """Named tensors (torch or numpy) as one safetensors-format blob, dtype kept (bf16 included).

    Written by hand rather than with `safetensors.torch.save`: the tensors are copied
    once, straight into the blob.
    """
    import torch

    arrays = {}
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            code = "BF16" if value.dtype == torch.bfloat16 else None
            array = (value.view(torch.int16) if code else value).numpy()
        else:
            code, array = None, np.ascontiguousarray(value)
        arrays[name] = (code or _NUMPY_CODES[array.dtype], array)
    head = _safetensors_header({name: (code, a.shape, a.nbytes) for name, (code, a) in arrays.items()})
    return b"".join([head, *(a.reshape(-1).view(np.uint8).data for _, a in arrays.values())])


def allocate_packed(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An unfilled safetensors-format blob for tensors of these shapes and numpy dtypes, and a view of each.

    Writing into the views fills the blob, so data produced straight into them (a
    pair's decoded frames, ~316 MB at the spec's defaults) is never copied to be packed.
    """
    sizes = {name: math.prod(shape) * np.dtype(dtype).itemsize for name, (shape, dtype) in specs.items()}
    head = _safetensors_header(
        {name: (_NUMPY_CODES[np.dtype(dtype)], shape, sizes[name]) for name, (shape, dtype) in specs.items()}
    )
    blob = np.empty(len(head) + sum(sizes.values()), dtype=np.uint8)
    blob[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    views, offset = {}, len(head)
    for name, (shape, dtype) in specs.items():
        views[name] = blob[offset : offset + sizes[name]].view(dtype).reshape(shape)
        offset += sizes[name]
    return blob, views


def _safetensors_header(entries: dict[str, tuple[str, tuple[int, ...], int]]) -> bytes:
    """Length prefix and JSON header for (dtype code, shape, bytes) per name, data laid out in that order."""
    header, offset = {}, 0
    for name, (code, shape, nbytes) in entries.items():
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def unpack_tensors(blob: bytes | memoryview) -> dict[str, Any]:
    """The inverse of `pack_tensors` (reads any safetensors blob): a dict of torch tensors.

    The tensors are read-only views of `blob`, not copies: convert before writing to them.
    """
    import warnings

    import torch

    view = memoryview(blob)
    (length,) = struct.unpack("<Q", view[:8])
    header = json.loads(bytes(view[8 : 8 + length]))
    header.pop("__metadata__", None)
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, info in header.items():
            start, end = (8 + length + o for o in info["data_offsets"])
            array = np.frombuffer(view[start:end], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            tensor = torch.from_numpy(array.reshape(info["shape"]))
            out[name] = tensor.view(torch.bfloat16) if info["dtype"] == "BF16" else tensor
    return out


def _stage_archive(job: JobConfig, run: str, key: str, archive: Path) -> str:
    """A URI of the archive that every node can read: the user's own when it already is one."""
    source = job.request.training_data_url
    if not is_local(source) and source.split("://", 1)[0].lower() in ("s3", "gs", "gcs"):
        return source
    if is_local(source) and is_local(job.storage.storage_path):
        return str(local_path(source).absolute())
    # http(s) downloads, or a local archive with remote storage: copy it next to the run once.
    return upload(archive, storage_uri(job.storage, run, "inputs", f"{key}.zip"), job.storage)


def _read_members(archive_uri: str, members: list[str], storage, dest: Path) -> list[Path]:
    """Copy some members out of a (possibly remote) zip by random access, without fetching it all."""
    fs, path = resolve_filesystem(archive_uri, storage)
    out = []
    with fs.open_input_file(path) as f, zipfile.ZipFile(f) as zf:
        for i, member in enumerate(members):
            target = dest / f"{i}_{Path(member).name}"
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
            out.append(target)
    return out


def decode_fit(batch: dict[str, np.ndarray], request, storage, debug_uri: str = "") -> Iterator[pa.Table]:
    """Ray Data CPU stage: one task's pairs, each read out of the staged archive and fitted.

    A batch is one row holding a task's share of the pairs as JSON (see `decode_stage`).
    Each pair is yielded as its own one-row table as soon as it is fitted, so the worker
    holds one pair's clips at a time. Failures become rows with an `error` (named pair,
    reason) instead of a worker stack trace. With `request.debug_dataset`, each fitted
    pair is also zipped (mp4 + caption) to `debug_uri`.
    """
    from ltx_ray.data.media import set_decode_threads

    if ray.is_initialized():
        set_decode_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    for pairs in batch["pairs"]:
        for pair in json.loads(str(pairs)):
            yield _decode_pair(pair, request, storage, debug_uri)


def _decode_pair(pair: dict[str, Any], request, storage, debug_uri: str) -> pa.Table:
    from ltx_ray.data.ingest import fit_pair, fitted_shapes, write_debug_archive
    from ltx_ray.data.pairs import PairFiles

    name = pair["name"]
    _note_decode(name)
    started = time.perf_counter()
    tmp = tempdirs.make("pair")
    error, media, decoded = "", b"", 0
    try:
        start, end = _read_members(pair["archive_uri"], [pair["start_member"], pair["end_member"]], storage, tmp)
        # The clips are fitted straight into the blob that carries them to the encoder.
        shapes = fitted_shapes(request)
        blob, views = allocate_packed({key: shapes[field] for key, field in MEDIA_FIELDS.items()})
        # Re-probed here: the driver's probe results point at its own local copies.
        fitted = fit_pair(
            PairFiles(name=name, start=start, end=end), request, caption=pair["caption"],
            out={field: views[key] for key, field in MEDIA_FIELDS.items()},
        )
        decoded = 2
        if request.debug_dataset and debug_uri:
            part = write_debug_archive([fitted], tmp / f"{name}.zip", request)
            upload(part, join(debug_uri, part.name), storage)
        media = blob
    except Exception as exc:  # reported per pair; the run goes on with the others
        error = f"{type(exc).__name__}: {exc}"
    finally:
        tempdirs.remove(tmp)
    row = {
        "index": pair["index"], "name": name, "caption": pair["caption"], "error": error, "decoded_clips": decoded,
        "decode_seconds": time.perf_counter() - started, "decode_rss_mb": _peak_rss_mb(),
    }
    # The packed clips are wrapped as a `large_binary` value without a copy (~316 MB a pair
    # at the spec's defaults).
    offsets = pa.py_buffer(np.array([0, len(media)], dtype=np.int64))
    media_column = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(media)])
    return pa.table({**{k: pa.array([v]) for k, v in row.items()}, "media": media_column})


def publish_debug_dataset(job: JobConfig, cache: LatentCache, out_uri: str) -> str | None:
    """Merge the per-pair debug zips of the cache into the `debug_dataset` output (when requested)."""
    if not job.request.debug_dataset:
        return None
    fs, path = resolve_filesystem(join(cache.writer_uri, "debug"), job.storage)
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)) if i.is_file)
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "debug_dataset.zip"
        with zipfile.ZipFile(merged, "w", compression=zipfile.ZIP_STORED) as out:
            for part in parts:
                with fs.open_input_file(part) as f, zipfile.ZipFile(f) as zf:
                    for item in zf.infolist():
                        out.writestr(item, zf.read(item))
        upload(merged, out_uri, job.storage)
    return out_uri


def _peak_rss_mb() -> float:
    """Peak resident memory of this worker process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _note_decode(name: str) -> None:
    # Observability hook: with LTX_RAY_DECODE_LOG set (in the Ray workers' environment), every
    # pair this stage decodes is appended to that file. Tests count real decodes with it.
    target = os.environ.get("LTX_RAY_DECODE_LOG")
    if target:
        with open(target, "a") as f:
            f.write(name + "\n")


class Encode:
    """Ray Data actor stage: load the VAE encoders and the text encoder once, encode each pair."""

    def __init__(self, model_cfg, use_gpu: bool, precision: str):
        import torch

        from ltx_ray.model.loader import load_audio_encoder, load_text_encoder, load_video_encoder

        self.device = torch.device("cuda" if use_gpu else "cpu")
        torch.set_num_threads(1)  # one CPU per actor (see _run_pipeline)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        checkpoint = model_cfg.checkpoint
        self.video_encoder = load_video_encoder(checkpoint, dtype=self.dtype, device=self.device)
        self.audio_encoder = load_audio_encoder(checkpoint, dtype=self.dtype, device=self.device)
        self.text_encoder = load_text_encoder(model_cfg.text_encoder, checkpoint, dtype=self.dtype, device=self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from ltx_ray.model.encode import encode_audio, encode_text, encode_video

        latents, seconds = [], []
        for i in range(len(batch["name"])):
            started = time.perf_counter()
            if batch["error"][i]:
                latents.append(b"")
                seconds.append(0.0)
                continue
            media = unpack_tensors(batch["media"][i])
            with torch.inference_mode():
                frames = torch.stack([media["ref_video"]]).to(self.device)
                ref_video = encode_video(self.video_encoder, frames)
                video = encode_video(self.video_encoder, torch.stack([media["video"]]).to(self.device))
                ref_audio = encode_audio(self.audio_encoder, torch.stack([media["ref_audio"]]).to(self.device, self.dtype))
                audio = encode_audio(self.audio_encoder, torch.stack([media["audio"]]).to(self.device, self.dtype))
                text = encode_text(self.text_encoder, [str(batch["caption"][i])])
            latents.append(
                pack_tensors(
                    {
                        "ref_video": ref_video[0].cpu(),
                        "video": video[0].cpu(),
                        "ref_audio": ref_audio[0].cpu(),
                        "audio": audio[0].cpu(),
                        "video_context": text.video_context[0].cpu(),
                        "audio_context": text.audio_context[0].cpu(),
                        "context_mask": text.attention_mask[0].cpu(),
                    }
                )
            )
            seconds.append(time.perf_counter() - started)
        return {
            "index": batch["index"],
            "name": batch["name"],
            "caption": batch["caption"],
            "error": batch["error"],
            "decoded_clips": batch["decoded_clips"],
            "decode_seconds": batch["decode_seconds"],
            "decode_rss_mb": batch["decode_rss_mb"],
            "encode_seconds": np.array(seconds),
            "latents": np.array(latents, dtype=object),
        }


def _run_pipeline(job: JobConfig, run: str, key: str, rows: list[dict], report: dict[str, Any]) -> LatentCache:
    """Decode, encode and write the cache; the completion marker goes last."""
    c = job.cluster
    uri = cache_uri(job, run, key)
    fs, path = resolve_filesystem(uri, job.storage)
    # This write's own prefix: nothing another writer of the same key does can touch or mix into it.
    writer = f"w-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    own = join(path, writer)
    started = time.perf_counter()
    ds = decode_stage(job, rows, debug_uri=join(uri, writer, "debug"))
    ds = ds.map_batches(
        Encode,
        fn_constructor_kwargs={"model_cfg": job.model, "use_gpu": c.use_gpu, "precision": c.precision},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=c.encode_actors),
        num_gpus=1 if c.use_gpu else 0,
        num_cpus=1,
        runtime_env={"env_vars": LARGE_BUFFER_ENV},
    )
    ds.write_parquet(join(own, "shards"), filesystem=fs)
    seconds = time.perf_counter() - started

    files = retrying(f"listing {join(uri, writer)}",
                     lambda: fs.get_file_info(pafs.FileSelector(join(own, "shards"))), job.storage)
    shards = [{"path": f"{writer}/shards/{f.base_name}", "size": f.size, "sha256": _sha256(fs, f.path, job)}
              for f in sorted(files, key=lambda f: f.base_name) if f.type == pafs.FileType.File]
    table = pq.read_table(
        [join(path, s["path"]) for s in shards], filesystem=fs,
        columns=["name", "error", "decoded_clips", "decode_seconds", "decode_rss_mb", "encode_seconds"],
    )
    report = _finish_report(report, table.to_pylist(), seconds)
    _write_json(fs, join(own, REPORT_FILE), report, job)
    if report["pairs_out"] == 0:
        raise DatasetError(
            [Problem(f["name"], f["reason"]) for f in report["failed"]]
            or Problem("request.training_data_url", "no pair could be preprocessed")
        )
    _write_json(fs, join(path, COMPLETE_MARKER), {"key": key, "format": CACHE_FORMAT, "pairs": report["pairs_out"],
                                                  "writer": writer, "shards": shards}, job)
    log.info("latent cache written: %s", uri)
    return LatentCache(uri=uri, key=key, hit=False, report=report, storage=job.storage, writer=writer,
                       shards=[s["path"] for s in shards])


# Ray Data pays a fixed cost per task: on a node whose CPUs are all busy, ~0.2 s passes
# between one task ending and the next starting (measured here; it is paid by the worker,
# not hidden behind its work). Tasks are therefore sized by guided self-scheduling: each
# takes 1/(2 x workers) of the pairs not yet handed out, at most this many. The first
# tasks are large and amortise that cost; the last carry one pair each, so the workers
# finish together instead of one idling while another works through a large last task.
MAX_PAIRS_PER_DECODE_TASK = 16


def decode_task_sizes(pairs: int, workers: int) -> list[int]:
    """How many pairs each decode task carries, in the order the tasks are handed out."""
    sizes, left = [], pairs
    while left > 0:
        size = min(MAX_PAIRS_PER_DECODE_TASK, max(1, math.ceil(left / (2 * max(1, workers)))))
        sizes.append(size)
        left -= size
    return sizes


# glibc serves every allocation above its mmap threshold (at most 32 MB by default) with
# a fresh mapping and unmaps it on free, so each of a pair's buffers (hundreds of MB at the
# spec's defaults: fitted clips, the packed blob, float frames in the encoder) is
# page-faulted in anew. Keeping large blocks in the heap for reuse cut, per pair on this
# machine, fitting from ~0.6 to ~0.5 s and packing from ~0.23 to ~0.03 s. The heap then
# holds about one pair's working set, the same bound as before.
LARGE_BUFFER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def decode_stage(job: JobConfig, rows: list[dict], debug_uri: str = "") -> ray.data.Dataset:
    """The CPU stage over the planned pairs: `decode_workers` concurrent tasks, one output block per pair.

    Each input block is one task's share of the pairs (`decode_task_sizes`). Output blocks
    stream out pair by pair (up to Ray Data's target block size), so a decode worker's
    memory is bounded by one pair's fitted clips whatever the task's or the archive's size.
    """
    workers = job.cluster.decode_workers
    tasks, start = [], 0
    for size in decode_task_sizes(len(rows), workers):
        tasks.append({"pairs": json.dumps(rows[start : start + size])})
        start += size
    # One row, and one block, per task. (Not `from_arrow` with uneven blocks: with Ray 2.60
    # its map tasks start new worker processes on every run instead of reusing idle ones.)
    return ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks))).map_batches(
        decode_fit,
        fn_kwargs={"request": job.request, "storage": job.storage, "debug_uri": debug_uri},
        batch_size=1,
        num_cpus=1,
        # Decoding holds one pair's fitted frames at a time; this keeps the scheduler honest.
        memory=_decode_memory_bytes(job),
        concurrency=workers,
        runtime_env={"env_vars": LARGE_BUFFER_ENV},
    )


def _finish_report(report: dict[str, Any], rows: list[dict], seconds: float) -> dict[str, Any]:
    ok = [r for r in rows if not r["error"]]
    failed = [{"name": r["name"], "reason": r["error"]} for r in rows if r["error"]]
    decode_s = sum(r["decode_seconds"] for r in rows)
    encode_s = sum(r["encode_seconds"] for r in rows)
    decoded = sum(r["decoded_clips"] for r in rows)
    report = {
        **report,
        "pairs_in": len(rows),
        "pairs_out": len(ok),
        "failed": failed,
        "decoded_clips": decoded,
        "seconds": seconds,
        "stages": {
            "decode_fit": {"pairs_in": len(rows), "pairs_out": len(ok), "task_seconds": decode_s,
                           "clips_per_second": decoded / decode_s if decode_s else 0.0,
                           "peak_worker_rss_mb": max((r["decode_rss_mb"] for r in rows), default=0.0)},
            "encode": {"pairs_in": len(ok), "pairs_out": len(ok), "actor_seconds": encode_s,
                       "clips_per_second": 2 * len(ok) / encode_s if encode_s else 0.0},
        },
    }
    for stage, s in report["stages"].items():
        log.info("%-10s pairs in %d, out %d, %.1f s in workers, %.2f clips/s", stage, s["pairs_in"],
                 s["pairs_out"], s.get("task_seconds", s.get("actor_seconds", 0.0)), s["clips_per_second"])
    for f in failed:
        log.warning("pair %s was dropped: %s", f["name"], f["reason"])
    return report


def _write_json(fs: pafs.FileSystem, path: str, data: dict, job: JobConfig) -> None:
    def write() -> None:
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(data, indent=2).encode())

    retrying(f"writing {path}", write, job.storage, where=path)


def _decode_memory_bytes(job: JobConfig) -> int:
    from ltx_ray.config.resolution import bucket_size

    w, h = bucket_size(job.request.resolution, job.request.aspect_ratio)
    frames = job.request.number_of_frames
    # A worker with torch and PyAV imported is ~450 MiB; on top, the blob holding two fitted
    # clips in uint8, decoder and conversion buffers, and the object store pages the block
    # is written to: at most about 4x the raw frames.
    return 512 * 1024**2 + 4 * 2 * frames * w * h * 3


def run_preprocess(job: JobConfig) -> LatentCache:
    """`ltx-ray preprocess`: build (or find) the latent cache and print where it is."""
    from ltx_ray import lease
    from ltx_ray.train.driver import init_ray

    init_ray(job)
    with lease.hold(job, derive_run_name(job)):
        cache = build_latent_cache(job)
    r = cache.report
    state = "found (cache hit, nothing decoded)" if cache.hit else "built"
    print(f"latent cache {state}: {cache.uri}")
    print(f"pairs in {r.get('pairs_in')}, pairs out {r.get('pairs_out')}, failed {len(r.get('failed', []))}")
    return cache
