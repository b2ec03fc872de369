"""Training checkpoints: complete and verified, or absent.

Layout in the run's storage folder (`<storage_path>/<run>/checkpoints/`):

    step_000000025/
      train_state.safetensors   LoRA fp32 weights, AdamW moments and counters, LR-scheduler state
                                (`train.train_state`: loads on any world size and either ZeRO stage)
      lora.safetensors          the LoRA at this step as users get it (`model.lora.export_lora`);
                                the job's `lora_file` output is the final checkpoint's, copied
      progress.json             step, data position, seed, global batch, the world size that wrote it
                                and why (`interval`, `final`, `preemption`, `best`); the samples and
                                noise of every step follow from (seed, step, place in the global batch);
                                with held-out pairs, the best step so far and the last evaluation
      config.json               the redacted job config
      _MANIFEST.json            written last: every file's size and SHA-256

A folder without its manifest, or whose files do not match it, is not a
checkpoint: it is never resumed from or counted, and pruning removes it.
Pruning never removes the newest verified checkpoint, nor the best one (the lowest held-out loss, with
`train.holdout_pairs`: a checkpoint is written at each new best). Resuming lists these
folders itself, so it depends on nothing but them (not on Ray Train's
snapshot, which a storage blip can leave unwritten); a checkpoint that fails
to load is named and the previous one is tried.

Rank 0 writes: the state is gathered (a collective), written to a local
folder, and uploaded by one background thread while training goes on.
Transient storage errors are retried (`storage.retry_timeout_s`); an error
that stays is kept and ends the run at the next step (`CheckpointWriter.error`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ltx_ray import tempdirs
from ltx_ray.config.display import redact, to_plain
from ltx_ray.config.schema import JobConfig
from ltx_ray.errors import ConfigError, Problem, StorageError
from ltx_ray.run_store import RunStore
from ltx_ray.storage import describe, join, stream_sha256

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
LAYOUT = "ltx-ray/checkpoint/1"
LORA_FILE = "lora.safetensors"
STATE_FILE = "progress.json"
CONFIG_FILE = "config.json"
_STEP_DIR = re.compile(r"step_(\d+)")


@dataclass(frozen=True)
class StoredCheckpoint:
    """A verified checkpoint in storage: every file present with the size its manifest records."""

    uri: str
    step: int
    files: dict[str, dict[str, Any]]  # name -> {"size": bytes, "sha256": hex}

    def file_uri(self, name: str) -> str:
        return join(self.uri, name)


def scan(store: RunStore) -> tuple[list[StoredCheckpoint], list[tuple[str, str]]]:
    """The run's verified checkpoints, newest first, and the folders that are not (uri, why)."""
    verified, rejected = [], []
    for entry in store.list(store.checkpoints):
        match = _STEP_DIR.fullmatch(entry.base_name)
        if entry.type != pafs.FileType.Directory or not match:
            continue
        uri = join(store.checkpoints, entry.base_name)
        files = {i.base_name: i.size for i in store.list(uri)}
        if MANIFEST not in files:
            rejected.append((uri, "incomplete: it has no manifest (its writer stopped before finishing)"))
            continue
        try:
            manifest = json.loads(store.read(join(uri, MANIFEST)))
            listed = manifest["files"]
        except (ValueError, KeyError, TypeError):
            rejected.append((uri, f"its {MANIFEST} is damaged"))
            continue
        wrong = [f"{name} is {files.get(name, 'missing')} bytes, the manifest says {e['size']}"
                 for name, e in listed.items() if files.get(name) != e["size"]]
        if wrong:
            rejected.append((uri, "damaged: " + "; ".join(wrong)))
            continue
        verified.append(StoredCheckpoint(uri=uri, step=int(match.group(1)), files=listed))
    verified.sort(key=lambda c: c.step, reverse=True)
    return verified, rejected


def latest(store: RunStore) -> StoredCheckpoint | None:
    verified, _ = scan(store)
    return verified[0] if verified else None


def publish(local: Path, store: RunStore, step: int, keep: int) -> StoredCheckpoint:
    """Upload a checkpoint folder, manifest last, then prune to the newest `keep`; a failed upload leaves
    nothing behind."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _local_sha256(p)} for p in sorted(local.iterdir())}
    uri = step_uri(store, step)
    try:
        # An earlier attempt may have left this step half-written (or damaged): start it clean.
        store.delete(uri)
        for name in files:
            store.upload(local / name, join(uri, name))
        manifest = {"layout": LAYOUT, "step": step, "files": files}
        store.write(join(uri, MANIFEST), json.dumps(manifest, indent=2).encode())
    except BaseException:
        try:  # best effort: the folder has no manifest, so nothing would trust it anyway
            fs, path = store.filesystem(uri)
            fs.delete_dir(path)
        except OSError:
            pass
        raise
    best = (json.loads((local / STATE_FILE).read_text()).get("best") or {}) if STATE_FILE in files else {}
    prune(store, keep, best=best.get("step"))
    return StoredCheckpoint(uri=uri, step=step, files=files)


def step_uri(store: RunStore, step: int) -> str:
    """The folder of the run's checkpoint at `step`."""
    return join(store.checkpoints, f"step_{step:09d}")


def prune(store: RunStore, keep: int, best: int | None = None) -> None:
    """Keep the newest `keep` verified checkpoints (`checkpoint.keep`) and the best one (`best`: its step, the
    lowest held-out loss so far, as the newest checkpoint's progress records it); remove the others and
    non-checkpoints.

    Only the lease holder writes a run's checkpoints, one at a time, so a folder without a valid
    manifest at this point is left over from an attempt that died.
    """
    verified, rejected = scan(store)
    for uri in [c.uri for c in verified[keep:] if c.step != best] + [uri for uri, _ in rejected]:
        store.delete(uri)


def restore(engine, store: RunStore, rank: int) -> dict[str, Any] | None:
    """Load the run's newest loadable checkpoint into `engine` (every rank calls); returns its trainer state.

    Rank 0 chooses: it tries the verified checkpoints newest first, saying why it passes over any,
    and the others load the one it chose. None when there is no checkpoint to resume from.
    """
    import torch.distributed as dist

    from ltx_ray.train import train_state

    chosen: list[Any] = [None]
    loaded = None
    if rank == 0:
        verified, rejected = scan(store)
        newest_ok = verified[0].step if verified else -1
        for uri, why in rejected:
            if _step_of(uri) > newest_ok:
                _say(f"passing over checkpoint {uri}: {why}")
        for candidate in verified:
            try:
                loaded = _download(candidate, store)
            except (ValueError, StorageError) as exc:
                _say(f"checkpoint {candidate.uri} could not be loaded ({exc}); trying the previous one")
                continue
            chosen = [candidate]
            break
        else:
            if verified:
                _say("no checkpoint of this run could be loaded: starting from step 0")
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        return None
    local = loaded if rank == 0 else _download(chosen[0], store)
    try:
        tensors, meta = train_state.read(local)
        state = json.loads((local / STATE_FILE).read_text())
    finally:
        tempdirs.remove(local)
    train_state.load(engine, tensors, meta)
    engine.global_steps = int(state["step"])
    return state


def _download(checkpoint: StoredCheckpoint, store: RunStore) -> Path:
    """The checkpoint's files in a local folder, each checked against its manifest's SHA-256 (ValueError if not)."""
    local = tempdirs.make("ckpt")
    try:
        for name, entry in checkpoint.files.items():
            data = store.read(checkpoint.file_uri(name))
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(f"{name} does not match its checksum in {MANIFEST}")
            (local / name).write_bytes(data)
    except BaseException:
        tempdirs.remove(local)
        raise
    return local


def check_resumable(job: JobConfig, store: RunStore) -> StoredCheckpoint | None:
    """Refuse, before any worker starts, a run whose checkpoints this version cannot continue.

    Returns the checkpoint the run will resume from (None: it starts afresh).
    """
    newest = latest(store)
    if newest is None:
        earlier = sorted(e.base_name for e in store.list(store.root)
                         if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_"))
        if earlier:
            raise ConfigError(Problem(join(store.root, earlier[-1]),
                                      f"this run's checkpoints were written by an earlier ltx-ray (Ray-managed "
                                      f"checkpoint_* folders without a {MANIFEST}) and cannot be continued. Start "
                                      "afresh under another storage.run_name, or remove the run's folder"))
        return None
    state = json.loads(store.read(newest.file_uri(STATE_FILE)))
    saved = state.get("global_batch_size")
    if saved != job.cluster.global_batch_size:
        raise _cannot_continue(newest, "cluster.global_batch_size", f"trains {saved} samples per step",
                               job.cluster.global_batch_size, saved, " (a step must stay the same step)")
    held = state.get("holdout_pairs", 0)  # a checkpoint written before held-out pairs existed held none out
    complete = int(state.get("step", 0)) >= job.request.number_of_steps  # nothing left to train: outputs only
    if held != job.train.holdout_pairs and complete:
        log.warning("this run was trained holding out %d pair(s), the config says %d; it is complete, so its "
                    "outputs are published as they are", held, job.train.holdout_pairs)
    elif held != job.train.holdout_pairs:
        raise _cannot_continue(newest, "train.holdout_pairs", f"was trained holding out {held} pair(s)",
                               job.train.holdout_pairs, held)
    return newest


def _cannot_continue(newest: StoredCheckpoint, field: str, trained: str, configured: Any, saved: Any,
                     why: str = "") -> ConfigError:
    """The refusal of a run whose checkpoint `trained` so, where the config says `configured` for `field`."""
    return ConfigError(Problem(field, f"the run's checkpoint at step {newest.step} ({newest.uri}) {trained}, this "
                                      f"config {configured}: set {field}={saved} to continue it{why}, or start "
                                      "afresh under another storage.run_name"))


def check_holdout_names(newest: StoredCheckpoint | None, store: RunStore, names: list[str]) -> None:
    """Refuse continuing a run whose checkpoint (`newest`: the one `check_resumable` found) held out other pairs
    than `names` (the cache was rebuilt and another set came out): pairs already trained on would count as held
    out, and the best would be judged on two sets."""
    if newest is None:
        return
    recorded = json.loads(store.read(newest.file_uri(STATE_FILE))).get("holdout")
    if recorded and sorted(recorded) != sorted(names):
        raise ConfigError(Problem("train.holdout_pairs",
                                  f"the run's checkpoint at step {newest.step} held out {sorted(recorded)}, this "
                                  f"archive's cache now gives {sorted(names)}: start afresh under another "
                                  "storage.run_name"))


class CheckpointWriter:
    """Rank 0's checkpoints: written to a local folder at once, uploaded by one background thread in order.

    An upload that fails for good is kept in `error` (the loop ends the run with it) and leaves no
    folder that looks like a checkpoint behind.
    """

    def __init__(self, job: JobConfig, store: RunStore):
        self.job, self.store = job, store
        self.error: StorageError | None = None
        self.published: StoredCheckpoint | None = None
        # At most one checkpoint waits while another uploads: a slow store slows the loop, never fills the disk.
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._work, name="ltx-ray-checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, tensors, meta, lora, state: dict[str, Any]) -> None:
        """Write one checkpoint locally now and queue its upload: the gathered train state (`tensors`, `meta`),
        the LoRA file (`lora`: `zero3.lora_state_dict`, exported with the job's `LoraMetadata`), `state`
        (progress.json) and the redacted config."""
        from ltx_ray.model.lora import LoraMetadata, export_lora
        from ltx_ray.train import train_state

        if self.error is not None:
            return
        local = tempdirs.make("ckpt")
        try:
            train_state.save(tensors, meta, local)
            export_lora(lora, local / LORA_FILE, LoraMetadata.from_job(self.job))
            (local / STATE_FILE).write_text(json.dumps(state))
            (local / CONFIG_FILE).write_text(json.dumps(redact(to_plain(self.job)), indent=2))
        except OSError as exc:
            tempdirs.remove(local)
            self.error = StorageError(Problem(str(local.parent), f"writing the step-{state['step']} checkpoint "
                                                                 f"locally failed: {describe(exc)}"))
            return
        self._queue.put((local, int(state["step"])))

    def wait(self) -> None:
        """Block until every submitted checkpoint is in storage (or has failed)."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            local, step = self._queue.get()
            try:
                if self.error is None:
                    self.published = publish(local, self.store, step, self.job.checkpoint.keep)
                    from tqdm import tqdm

                    # Above the training bar, which this thread's line would otherwise break.
                    tqdm.write(f"ltx-ray: checkpoint of step {step} in storage: {self.published.uri}")
            except StorageError as exc:
                self.error = exc
            except Exception as exc:  # noqa: BLE001 - kept for the loop to raise in its own thread
                self.error = StorageError(Problem(self.store.checkpoints,
                                                  f"uploading the step-{step} checkpoint failed: {describe(exc)}"))
            finally:
                tempdirs.remove(local)
                self._queue.task_done()


def _step_of(uri: str) -> int:
    match = _STEP_DIR.fullmatch(uri.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else -1


def _say(message: str) -> None:
    print(f"ltx-ray: {message}", flush=True)


def _local_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)

