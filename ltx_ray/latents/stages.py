"""The Ray Data stages that turn planned pairs into latents, in the order data flows.

1. `decode_stage` / `decode_fit` (CPU tasks, `map_batches`, a few pairs per task, one output
   block per pair): read the two clips of a pair out of the staged archive and fit them
   (`ltx_ray.clips.ingest.fit_pair`) straight into the blob that carries them on;
2. `Encode` (an actor pool, one GPU per actor on GPU clusters): the video VAE encoder, audio
   VAE encoder and text encoder load once per actor and turn each pair into latents and
   caption embeddings, packed as the cache stores them (`LATENT_TENSORS`).

A pair that fails inside a stage travels on as a row with an `error` and empty tensors, so
the report names it and its reason; training reads only the rows without one.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data._internal.execution.execution_callback import ExecutionCallback

from ltx_ray import console, tempdirs
from ltx_ray.config.schema import JobConfig
from ltx_ray.latents.blobs import allocate_packed, pack_tensors, unpack_tensors
from ltx_ray.latents.cache import LATENT_TENSORS
from ltx_ray.storage import join, resolve_filesystem, upload


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
    ds = ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks)))
    # The context is this dataset's own (and the stages chained to it share it): Ray Data's progress
    # display gives way to one line or bar for decode and encode together (`StageProgress`).
    if console.configure_dataset(ds.context):
        ds.context.custom_execution_callback_classes.append(functools.partial(StageProgress, len(rows)))
    return ds.map_batches(
        decode_fit,
        fn_kwargs={"request": job.request, "storage": job.storage, "debug_uri": debug_uri},
        batch_size=1,
        num_cpus=1,
        # Decoding holds one pair's fitted frames at a time; this keeps the scheduler honest.
        memory=_decode_memory_bytes(job),
        compute=ray.data.TaskPoolStrategy(size=workers),
        runtime_env={"env_vars": LARGE_BUFFER_ENV},
    )


class StageProgress(ExecutionCallback):
    """The decode and encode stages' progress on the driver, in pairs: one bar on a terminal, else a line
    every 10 s (`console.Progress`). Counted from the operators' output rows (a pair is a row in both);
    a Ray Data without them (a later version) shows none rather than a wrong count."""

    def __init__(self, pairs: int):
        self.pairs, self.progress, self.seen = pairs, None, (-1, -1)

    def before_execution_starts(self, executor) -> None:
        self.progress = console.Progress("decode/encode", self.pairs, unit="pair", interval_s=10.0)

    def on_execution_step(self, executor) -> None:
        if self.progress is None:
            return
        try:
            taken = [(op.name, op.metrics.row_outputs_taken) for op in executor._topology]
        except Exception:  # noqa: BLE001 - a display, never a reason to stop
            self.progress.close(final_line=False)
            self.progress = None
            return
        decoded = sum(n for name, n in taken if decode_fit.__name__ in name)
        encoded = sum(n for name, n in taken if Encode.__name__ in name)
        if (decoded, encoded) != self.seen:
            self.seen = decoded, encoded
            self.progress.set_postfix_str(f"{decoded} decoded", refresh=False)
            self.progress.update_to(encoded)

    def after_execution_succeeds(self, executor) -> None:
        self.on_execution_step(executor)
        self._close()

    def after_execution_fails(self, executor, error) -> None:
        self._close()

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def _decode_memory_bytes(job: JobConfig) -> int:
    from ltx_ray.config.resolution import bucket_size

    w, h = bucket_size(job.request.resolution, job.request.aspect_ratio)
    frames = job.request.number_of_frames
    # A worker with torch and PyAV imported is ~450 MiB; on top, the blob holding two fitted
    # clips in uint8, decoder and conversion buffers, and the object store pages the block
    # is written to: at most about 4x the raw frames.
    return 512 * 1024**2 + 4 * 2 * frames * w * h * 3


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
    from ltx_ray.clips.media import set_decode_threads

    if ray.is_initialized():
        set_decode_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    for pairs in batch["pairs"]:
        for pair in json.loads(str(pairs)):
            yield _decode_pair(pair, request, storage, debug_uri)


def _decode_pair(pair: dict[str, Any], request, storage, debug_uri: str) -> pa.Table:
    from ltx_ray.clips.ingest import fit_pair, fitted_shapes, probe_pair, write_debug_archive
    from ltx_ray.clips.pairs import PairFiles

    name = pair["name"]
    started = time.perf_counter()
    tmp = tempdirs.make("pair")
    error, media, decoded = "", b"", 0
    try:
        start, end = _read_members(pair["archive_uri"], [pair["start_member"], pair["end_member"]], storage, tmp)
        # The clips are fitted straight into the blob that carries them to the encoder, under the
        # names of `FittedPair`'s fields. Re-probed here: the driver's probes point at its own copies.
        blob, views = allocate_packed(fitted_shapes(request))
        probed = probe_pair(PairFiles(name=name, start=start, end=end), request, caption=pair["caption"])
        fitted = fit_pair(probed, request, out=views)
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


def _peak_rss_mb() -> float:
    """Peak resident memory of this worker process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Encode:
    """Ray Data actor stage: load the VAE encoders and the text encoder once, encode each pair."""

    def __init__(self, files, use_gpu: bool, precision: str):
        """`files`: the job's `ltx_ray.model.files.ModelFiles`."""
        import torch

        from ltx_ray.model.av2av import precision_dtype
        from ltx_ray.model.loader import load_audio_encoder, load_text_encoder, load_video_encoder

        console.quiet_library_bars()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        torch.set_num_threads(1)  # one CPU per actor (`ltx_ray.latents.pipeline`)
        self.dtype = precision_dtype(precision)
        self.video_encoder = load_video_encoder(files.video_vae, dtype=self.dtype, device=self.device)
        self.audio_encoder = load_audio_encoder(files.audio_vae, dtype=self.dtype, device=self.device)
        self.text_encoder = load_text_encoder(files, dtype=self.dtype, device=self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        latents, seconds = [], []
        for i in range(len(batch["name"])):
            started = time.perf_counter()
            if batch["error"][i]:
                latents.append(b"")
                seconds.append(0.0)
                continue
            encoded = self._encode(unpack_tensors(batch["media"][i]), str(batch["caption"][i]))
            latents.append(pack_tensors({name: encoded[name] for name in LATENT_TENSORS}))
            seconds.append(time.perf_counter() - started)
        # Every column but the clips passes on to the report; the latents join it.
        passed = {column: values for column, values in batch.items() if column != "media"}
        return {**passed, "encode_seconds": np.array(seconds), "latents": np.array(latents, dtype=object)}

    def _encode(self, clips: dict[str, Any], caption: str) -> dict[str, Any]:
        """A pair's fitted clips (`FittedPair` names) and caption as the cache's `LATENT_TENSORS`."""
        import torch

        from ltx_ray.model.vae import audio_to_latents, encode_text, video_to_latents

        with torch.inference_mode():
            def video(name: str):
                return video_to_latents(self.video_encoder, clips[name][None].to(self.device))[0].cpu()

            def audio(name: str):
                return audio_to_latents(self.audio_encoder, clips[name][None])[0].cpu()  # float32 into the mel front end

            text = encode_text(self.text_encoder, [caption])
            return {"ref_video": video("reference_video"), "video": video("target_video"),
                    "ref_audio": audio("reference_audio"), "audio": audio("target_audio"),
                    "video_context": text.video_context[0].cpu(), "audio_context": text.audio_context[0].cpu(),
                    "context_mask": text.attention_mask[0].cpu()}
