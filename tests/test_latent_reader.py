"""A worker reads the latent cache by sample number: the samples the whole-set reading gave, bit for bit,
from only the shards its places need, at most `capacity` of them held, the next step's read ahead."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from ltx_ray.errors import StorageError
from ltx_ray.latents import reader as reader_module
from ltx_ray.latents.blobs import unpack_tensors
from ltx_ray.latents.cache import COMPLETE_MARKER, LATENT_TENSORS
from ltx_ray.latents.reader import LatentIndex, LatentReader
from ltx_ray.train import batches
from ltx_ray.train.step import StepShape, rank_samples, read_ahead
from synthetic_latents import synthetic_sample, write_latent_cache
from test_train_batches import _sample

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path) -> str:
    """7 samples among 8 pairs (pair 3 failed in the pipeline), two rows a shard, shards out of order."""
    return write_latent_cache(tmp_path / "latents" / "k", [synthetic_sample(i) for i in range(7)], failed=[3],
                              rows_per_shard=2)


@pytest.fixture
def shard_reads(monkeypatch) -> list[tuple[str, str]]:
    """(shard path, reading thread's name) of every shard a reader reads from storage."""
    reads, real = [], reader_module.read_bytes

    def counted(fs, path, storage, uri=""):
        if path.endswith(".parquet"):  # not the marker `LatentIndex.read` reads
            reads.append((Path(path).name, threading.current_thread().name))
        return real(fs, path, storage, uri)

    monkeypatch.setattr(reader_module, "read_bytes", counted)
    return reads


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _assert_same_sample(got: dict, expected: dict) -> None:
    assert got["index"] == expected["index"]
    for name in LATENT_TENSORS:
        assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
        assert _bits(got[name]) == _bits(expected[name]), name


def _whole_set_as_workers_read_it(uri: str) -> list[dict]:
    """What every worker read before the reader: the marker's shards through Ray Data (`get_dataset_shard`
    -> `iter_torch_batches` with the cache's collate), split into samples and sorted by pair."""
    import ray.data
    from ray.data.collate_fn import NumpyBatchCollateFn
    from ray.data.expressions import col

    class UnpackLatents(NumpyBatchCollateFn):
        def __call__(self, batch):
            rows = [unpack_tensors(blob) for blob in batch["latents"]]
            out = {name: torch.stack([r[name] for r in rows]) for name in LATENT_TENSORS}
            out["index"] = torch.tensor(np.array(batch["index"], dtype=np.int64))
            return out

    shards = [str(Path(uri) / s["path"]) for s in json.loads((Path(uri) / COMPLETE_MARKER).read_text())["shards"]]
    ds = ray.data.read_parquet(shards).select_columns(["index", "error", "latents"])
    ds = ds.filter(expr=col("error") == "").select_columns(["index", "latents"])
    samples = []
    for batch in ds.iter_torch_batches(batch_size=16, device="cpu", collate_fn=UnpackLatents()):
        for i, index in enumerate(batch["index"].tolist()):
            samples.append({**{name: batch[name][i] for name in LATENT_TENSORS}, "index": index})
    return sorted(samples, key=lambda s: s["index"])


def _train_data(samples, *, steps: range, shape: StepShape, seed: int = 7, steps_in_run: int = 100) -> list[dict]:
    """The batches a rank collates in `steps`, read as `train_step` reads them (the next step named ahead)."""
    job = _Job(seed, steps_in_run)
    out = []
    for step in steps:
        read_ahead(samples, job, step, shape)
        for micro in range(shape.accumulation):
            positions = batches.micro_batch_positions(micro_step=micro, rank=shape.rank, world_size=shape.world,
                                                      micro_batch_size=shape.micro_batch_size)
            idx = batches.sample_indices(len(samples), seed=seed, step=step, positions=positions,
                                         global_batch_size=shape.global_batch_size)
            out.append(batches.collate(samples, idx, CPU, torch.float32))
    return out


class _Job:
    """The two fields of a job that reading ahead asks for."""

    def __init__(self, seed: int, steps: int):
        self.seed = seed
        self.request = type("Request", (), {"number_of_steps": steps})()


def test_samples_are_the_accepted_pairs_in_the_manifest_order(cache):
    index = LatentIndex.read(cache)
    assert len(index) == 7
    assert [s.pair for s in index.samples] == [0, 1, 2, 4, 5, 6, 7]  # pair 3 failed: no sample


def test_the_reader_returns_by_number_the_samples_the_whole_set_reading_returned_bit_for_bit(cache, ray_cluster):
    expected = _whole_set_as_workers_read_it(cache)
    with LatentReader(LatentIndex.read(cache), capacity=2) as reader:
        assert len(reader) == len(expected) == 7
        for k in [6, 0, 3, 3, 5, 1, 2, 4]:  # any order, again after eviction
            _assert_same_sample(reader[k], expected[k])


def test_a_worker_reads_only_the_shards_of_the_samples_its_places_need(tmp_path, shard_reads):
    uri = write_latent_cache(tmp_path / "latents" / "k", [synthetic_sample(i) for i in range(40)])
    index = LatentIndex.read(uri)
    shape = StepShape(rank=1, world=4, accumulation=2, micro_batch_size=1, global_batch_size=8)
    with LatentReader(index, capacity=4) as reader:
        _train_data(reader, steps=range(3), shape=shape, steps_in_run=3)  # nothing to read ahead after step 3
    needed = {k for step in range(3) for k in rank_samples(40, 7, step, shape)}
    wanted_shards = {Path(index.shards[index.samples[k].shard].path).name for k in needed}
    read = [name for name, _ in shard_reads]
    assert len(needed) == 6 and set(read) == wanted_shards  # of 40 shards (no sample twice in one epoch)
    assert len(read) == len(wanted_shards)  # each once: the step's and the next one's samples stay held


def test_a_reader_holds_at_most_capacity_samples(cache):
    with LatentReader(LatentIndex.read(cache), capacity=3) as reader:
        first = weakref.ref(reader[0]["video"])
        for k in range(1, 7):
            reader[k]
            assert len(reader.held()) <= 3
        assert reader.held() == [4, 5, 6]
        gc.collect()
        assert first() is None  # evicted, and with it its tensors' memory


def test_reading_ahead_changes_no_batch_and_reads_on_the_background_thread(tmp_path, shard_reads):
    samples = [synthetic_sample(i) for i in range(20)]
    uri = write_latent_cache(tmp_path / "latents" / "k", samples, seed=3)
    shape = StepShape(rank=0, world=2, accumulation=2, micro_batch_size=2, global_batch_size=8)
    in_memory = _train_data([{**s, "index": i} for i, s in enumerate(samples)], steps=range(6), shape=shape)
    with LatentReader(LatentIndex.read(uri), capacity=8) as reader:
        read = _train_data(reader, steps=range(6), shape=shape)
    assert len(read) == len(in_memory) == 12
    for got, expected in zip(read, in_memory):
        for name in LATENT_TENSORS:
            assert _bits(got[name]) == _bits(expected[name]), name
    # Every sample was named ahead, so the training thread never read one itself: it waited, at most.
    assert shard_reads and {thread for _, thread in shard_reads} == {"latent-reader"}


def test_a_sample_asked_for_while_it_is_read_ahead_is_read_once(cache, shard_reads):
    index = LatentIndex.read(cache)
    with LatentReader(index, capacity=4) as reader:
        reader.prefetch([2, 5])
        assert reader[5]["index"] == 6 and reader[2]["index"] == 2
        shards = {index.samples[2].shard, index.samples[5].shard}
        assert reader.shards_read == len(shard_reads) == len(shards)


def test_a_shard_changed_after_the_cache_was_written_is_refused_by_name(cache):
    index = LatentIndex.read(cache)
    shard = Path(cache) / index.shards[index.samples[0].shard].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with LatentReader(index) as reader, pytest.raises(StorageError, match="does not match its checksum") as err:
        reader[0]
    assert str(shard) in str(err.value)
    with LatentReader(index) as reader:
        assert reader[1]["index"] == 1  # the other shards still read


def test_training_on_the_reader_gives_the_losses_of_training_on_the_samples_in_memory(tmp_path, tiny_bundle):
    from test_trainer import _run

    cache = write_latent_cache(tmp_path / "latents" / "k", [_sample(i) for i in range(4)])
    in_memory = _run(tmp_path / "list", tiny_bundle, world=1, steps=3)
    from_cache = _run(tmp_path / "reader", tiny_bundle, world=1, steps=3, latent_cache=cache)
    assert from_cache[0]["losses"] == in_memory[0]["losses"] and len(in_memory[0]["losses"]) == 3
