"""The latent cache's samples by index: what a training worker reads, and only that.

The driver lists the cache once (`LatentIndex.read`: the completion marker's shards, and where each
accepted pair's row is); a worker's `LatentReader` is a sequence over those samples that reads a shard
only when a sample it holds is asked for. Sample `k` is the k-th accepted pair in the manifest's
order, as the whole-set reading it replaces numbered them, so `ltx_ray.train.batches` picks the same
samples for the same places of the global batch.

A reader keeps at most `capacity` samples (the least recently used go), checks each shard it reads
against the marker's size and SHA-256 (as `ltx_ray.latents.cache` checks the cache), and reads the
samples `prefetch` names in a background thread: the trainer names the next step's while this one
trains. The pipeline writes one pair per shard (one Ray Data block each), so a read is one pair's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ltx_ray.config.schema import StorageConfig
from ltx_ray.errors import DatasetError, Problem, StorageError
from ltx_ray.latents.blobs import unpack_tensors
from ltx_ray.latents.cache import COMPLETE_MARKER, LATENT_TENSORS
from ltx_ray.storage import join, read_bytes, resolve_filesystem, retrying

log = logging.getLogger(__name__)

# Shards whose rows `LatentIndex.read` lists at once (each is a small footer and column read).
_LISTING_THREADS = 8


@dataclass(frozen=True)
class Shard:
    """One Parquet file of the cache, as its completion marker lists it."""

    path: str  # under the cache's URI
    size: int
    sha256: str


@dataclass(frozen=True)
class SampleRow:
    """Where sample k is: its pair's index in the manifest, its shard (a position in `LatentIndex.shards`), its row,
    and the pair's name."""

    pair: int
    shard: int
    row: int
    name: str = ""


@dataclass(frozen=True)
class LatentIndex:
    """Where every sample of a complete latent cache is: small, built once by the driver, sent to the workers."""

    uri: str
    shards: tuple[Shard, ...]
    samples: tuple[SampleRow, ...]  # sample k, in the order of its pair's index

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> list[str]:
        """The pairs' names, sample by sample."""
        return [s.name for s in self.samples]

    def subset(self, names: "Iterable[str]") -> "LatentIndex":
        """The index of only the samples of the pairs named, in the same (pair index) order."""
        keep = set(names)
        return LatentIndex(uri=self.uri, shards=self.shards, samples=tuple(s for s in self.samples if s.name in keep))

    @classmethod
    def read(cls, uri: str, storage: StorageConfig | None = None) -> "LatentIndex":
        """The index of the cache at `uri` (complete and verified: `ltx_ray.latents.cache.find_cache`).

        Reads its marker and, of each listed shard, the `index`, `error` and `name` columns; rows with an
        error (pairs that failed in the pipeline) are no samples.
        """
        fs, root = resolve_filesystem(uri, storage)
        marker = json.loads(read_bytes(fs, join(root, COMPLETE_MARKER), storage, join(uri, COMPLETE_MARKER)))
        shards = tuple(Shard(s["path"], int(s["size"]), s["sha256"]) for s in marker["shards"])

        def rows_of(shard: Shard) -> dict[str, list]:
            def read() -> dict[str, list]:
                with fs.open_input_file(join(root, shard.path)) as f:
                    return pq.read_table(f, columns=["index", "error", "name"]).to_pydict()

            return retrying(f"reading {join(uri, shard.path)}", read, storage, where=join(uri, shard.path))

        with ThreadPoolExecutor(_LISTING_THREADS) as pool:
            listed = list(pool.map(rows_of, shards))
        samples = sorted((SampleRow(pair, n, row, name) for n, columns in enumerate(listed)
                          for row, (pair, error, name) in enumerate(zip(columns["index"], columns["error"],
                                                                        columns["name"])) if not error),
                         key=lambda s: s.pair)
        if not samples:
            raise DatasetError(Problem(uri, "the latent cache holds no sample (every pair failed in preprocessing)"))
        return cls(uri=uri, shards=shards, samples=tuple(samples))


class LatentReader(Sequence):
    """The cache's samples as a sequence (`len`, `reader[k]`: a dict of `LATENT_TENSORS` and the pair's
    `index`), read from storage as they are asked for; at most `capacity` of them held.

    Thread-safe; `prefetch(ks)` reads samples in a background thread, and `reader[k]` waits for a
    sample being read rather than reading it twice. `shards_read` counts the shard reads.
    """

    def __init__(self, index: LatentIndex, storage: StorageConfig | None = None, *, capacity: int = 2):
        if capacity < 1:
            raise ValueError(f"a LatentReader holds at least one sample (capacity={capacity})")
        self.index, self.storage, self.capacity = index, storage, capacity
        self.shards_read = 0
        self._fs, self._root = resolve_filesystem(index.uri, storage)
        self._held: OrderedDict[int, dict[str, Any]] = OrderedDict()  # least recently used first
        self._reading: set[int] = set()  # samples a thread has taken on to read
        self._queue: deque[list[int]] = deque()  # what `prefetch` asked for, oldest first
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        k = self._checked(k)
        with self._changed:
            while k in self._reading:  # read by the background thread now: wait rather than read it twice
                self._changed.wait()
            if k in self._held:
                self._held.move_to_end(k)
                return self._held[k]
            self._reading.add(k)
        return self._read([k])[k]

    def prefetch(self, ks: Iterable[int]) -> None:
        """Read these samples in the background (those held count as just used, so they stay)."""
        ks = list(dict.fromkeys(self._checked(k) for k in ks))
        with self._changed:
            if self._closed:
                return
            for k in ks:
                if k in self._held:
                    self._held.move_to_end(k)
            missing = [k for k in ks if k not in self._held and k not in self._reading]
            if not missing:
                return
            self._reading.update(missing)
            self._queue.append(missing)
            if self._thread is None:
                self._thread = threading.Thread(target=self._read_ahead, name="latent-reader", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def held(self) -> list[int]:
        """The samples held now, least recently used first."""
        with self._changed:
            return list(self._held)

    def close(self) -> None:
        """Stop the background thread (what it is reading is finished first) and drop the samples held."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._changed:
            self._held.clear()

    def __enter__(self) -> "LatentReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _checked(self, k: int) -> int:
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"sample {k} of a latent cache of {len(self)}")
        return k

    def _read_ahead(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if self._closed:
                    self._reading.difference_update(k for ks in self._queue for k in ks)
                    self._queue.clear()
                    self._changed.notify_all()
                    return
                ks = self._queue.popleft()
            try:
                self._read(ks)
            except Exception as exc:  # noqa: BLE001 - the step reads these itself, and raises there
                log.warning("reading latent samples ahead failed (%s); the step will read them itself", exc)

    def _read(self, ks: list[int]) -> dict[int, dict[str, Any]]:
        """Read samples this thread has taken on (in `_reading`), a shard at a time, and hold them."""
        by_shard: dict[int, list[int]] = {}
        for k in ks:
            by_shard.setdefault(self.index.samples[k].shard, []).append(k)
        out: dict[int, dict[str, Any]] = {}
        try:
            for shard, in_shard in by_shard.items():
                read = self._read_shard(shard, in_shard)
                out.update(read)
                with self._changed:
                    for k, sample in read.items():
                        self._held[k] = sample
                        self._held.move_to_end(k)
                        self._reading.discard(k)
                    while len(self._held) > self.capacity:
                        self._held.popitem(last=False)
                    self._changed.notify_all()
        finally:
            with self._changed:  # on an error: what is left is no longer being read
                self._reading.difference_update(k for k in ks if k not in out)
                self._changed.notify_all()
        return out

    def _read_shard(self, n: int, ks: list[int]) -> dict[int, dict[str, Any]]:
        """Samples `ks` out of shard `n`, read whole and checked against the marker first."""
        shard = self.index.shards[n]
        uri = join(self.index.uri, shard.path)
        data = read_bytes(self._fs, join(self._root, shard.path), self.storage, uri)
        with self._changed:
            self.shards_read += 1
        if len(data) != shard.size:
            raise StorageError(Problem(uri, f"is {len(data)} bytes, its {COMPLETE_MARKER} says {shard.size}: the "
                                            "cache changed after it was written; re-run to rebuild it"))
        if hashlib.sha256(data).hexdigest() != shard.sha256:
            raise StorageError(Problem(uri, f"does not match its checksum in {COMPLETE_MARKER}: the cache changed "
                                            "after it was written; re-run to rebuild it"))
        parquet = pq.ParquetFile(pa.BufferReader(data))
        out, first = {}, 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            wanted = [k for k in ks if first <= self.index.samples[k].row < first + rows]
            if wanted:
                table = parquet.read_row_group(group, columns=["index", "latents"])
                for k in wanted:
                    out[k] = _sample(table, self.index.samples[k].row - first, self.index.samples[k].pair, uri)
            first += rows
        return out


def _sample(table: pa.Table, row: int, pair: int, uri: str) -> dict[str, Any]:
    """One row's tensors, in a buffer of their own (a view would keep the whole row group alive)."""
    if table.column("index")[row].as_py() != pair:
        raise StorageError(Problem(uri, f"row {row} is not pair {pair}, as the cache's listing says: the cache "
                                        "changed after it was listed; re-run to rebuild it"))
    tensors = unpack_tensors(bytearray(table.column("latents")[row].as_buffer()))
    return {**{name: tensors[name] for name in LATENT_TENSORS}, "index": pair}
