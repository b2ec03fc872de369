"""Ray Data preprocessing into the latent cache, on the session's two-node Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import boto3
import pytest

from jobs import ROOT, s3_overrides, tiny_job
from ltx_ray.latents import blobs, cache as latent_cache, pipeline, stages
from ltx_ray.latents.cache import COMPLETE_MARKER, REPORT_FILE, find_cache
from ltx_ray.latents.pipeline import build_latent_cache
from ltx_ray.latents.reader import LatentIndex, LatentReader
from ltx_ray.run_store import RunStore


def _decoded(*caches) -> int:
    """The pairs these `build_latent_cache` calls decoded: a hit decodes none, a build every pair of its plan
    (the stages' own per-pair rows, summed in the report)."""
    return sum(c.report["pairs_in"] for c in caches if not c.hit)


def _own_cache_job(tiny_bundle, sample_dataset, storage_path: str, run_name: str, *overrides: str):
    """`jobs.tiny_job` with a latent cache of its own, in the default place (`<storage_path>/latents`), not the
    session's warm one: these tests watch a cache being built."""
    return tiny_job(tiny_bundle, sample_dataset, storage_path, run_name, "storage.latent_cache_path=''", *overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bundle, sample_dataset, ray_cluster):
    """One cache built from cold in a local folder, shared by the tests that read it or build beside it:
    (job, its cache)."""
    job = _own_cache_job(tiny_bundle, sample_dataset, str(tmp_path_factory.mktemp("built") / "runs"), "prep-local")
    return job, build_latent_cache(job)


def test_preprocess_builds_a_complete_cache_in_a_local_folder(built):
    job, cache = built
    root = Path(cache.uri)
    assert not cache.hit
    assert (root / COMPLETE_MARKER).is_file() and (Path(cache.writer_uri) / REPORT_FILE).is_file()
    # The marker lists the shards it publishes, each with its size and checksum.
    marker = json.loads((root / COMPLETE_MARKER).read_text())
    assert marker["writer"] == cache.writer and [s["path"] for s in marker["shards"]] == cache.shards
    assert all((root / s["path"]).stat().st_size == s["size"] and len(s["sha256"]) == 64 for s in marker["shards"])
    assert cache.report["pairs_in"] == cache.report["pairs_out"] == 3
    assert _decoded(cache) == 3
    samples = list(LatentReader(LatentIndex.read(cache.uri, job.storage), job.storage))
    assert [s["index"] for s in samples] == [0, 1, 2]
    # 9 frames at 512x288 -> 2 latent frames of 9x16; the reference is the same size (factor 1).
    assert samples[0]["video"].shape[1:] == (2, 9, 16)
    assert samples[0]["ref_video"].shape == samples[0]["video"].shape


def test_second_run_hits_the_cache_without_decoding(built):
    job, first = built
    second = build_latent_cache(job)
    assert second.hit and second.uri == first.uri
    assert _decoded(first) == 3 and _decoded(second) == 0


def test_changed_parameter_misses_the_cache(built, tiny_bundle, sample_dataset):
    job, first = built
    changed = build_latent_cache(_own_cache_job(tiny_bundle, sample_dataset, job.storage.storage_path, "prep-miss",
                                                "request.audio_normalize=false"))
    assert not changed.hit and changed.key != first.key
    assert _decoded(changed) == 3


def test_interrupted_write_leaves_no_complete_looking_cache(tmp_path, tiny_bundle, sample_dataset, ray_cluster,
                                                           monkeypatch):
    job = _own_cache_job(tiny_bundle, sample_dataset, str(tmp_path / "runs"), "prep-crash")
    real_write = latent_cache._write_json

    def crash_before_marker(store, uri, data):
        if uri.endswith(COMPLETE_MARKER):
            raise KeyboardInterrupt("driver stopped after the shards, before the marker")
        real_write(store, uri, data)

    monkeypatch.setattr(latent_cache, "_write_json", crash_before_marker)
    with pytest.raises(KeyboardInterrupt):
        build_latent_cache(job)
    monkeypatch.setattr(latent_cache, "_write_json", real_write)
    partial = next((tmp_path / "runs" / "latents").iterdir())
    (write,) = partial.iterdir()  # the build's lease was released on the way out
    assert (write / "shards").is_dir() and not (partial / COMPLETE_MARKER).exists()

    assert find_cache(RunStore(job.storage, "prep-crash"), partial.name) is None
    rebuilt = build_latent_cache(job)
    assert not rebuilt.hit and (Path(rebuilt.uri) / COMPLETE_MARKER).is_file()
    assert not write.exists()  # the incomplete write was removed by the next build
    assert _decoded(rebuilt) == 3


def test_pair_that_fails_in_the_pipeline_is_reported_by_name(tmp_path, tiny_bundle, sample_dataset, ray_cluster):
    # An archive whose extra, unpaired "broken.mp4" is not a video: pairing ignores it,
    # then one pair is pointed at it, as if its clip were found corrupt while decoding.
    archive = tmp_path / "with_broken.zip"
    with zipfile.ZipFile(sample_dataset.archive) as src, zipfile.ZipFile(archive, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr("broken.mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    job = _own_cache_job(tiny_bundle, sample_dataset, str(tmp_path / "runs"), "prep-corrupt",
                   f"request.training_data_url={archive}")
    rows, report = pipeline._plan(job, archive, tmp_path / "work")
    for row in rows:
        row["archive_uri"] = str(archive)
    broken = rows[1]["name"]
    rows[1]["end_member"] = "broken.mp4"

    cache = pipeline._run_pipeline(job, RunStore(job.storage, "prep-corrupt"), "k", rows, report)
    assert cache.report["pairs_out"] == 2
    assert [f["name"] for f in cache.report["failed"]] == [broken]
    assert "Error" in cache.report["failed"][0]["reason"]
    assert len(LatentIndex.read(cache.uri, job.storage)) == 2


def test_preprocess_into_an_s3_bucket(tmp_path, tiny_bundle, sample_dataset, ray_cluster, s3_server, s3_bucket):
    job = _own_cache_job(tiny_bundle, sample_dataset, f"s3://{s3_bucket}/runs", "prep-s3", *s3_overrides(s3_server))
    cache = build_latent_cache(job)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert f"runs/latents/{cache.key}/{COMPLETE_MARKER}" in keys
    assert any(k.startswith(f"runs/latents/{cache.key}/{cache.writer}/shards/") and k.endswith(".parquet")
               for k in keys)
    # The local archive was staged in the bucket for the decode workers of every node.
    assert f"runs/prep-s3/inputs/{cache.key}.zip" in keys
    assert len(LatentIndex.read(cache.uri, job.storage)) == 3
    again = build_latent_cache(job)
    assert again.hit and _decoded(cache, again) == 3


def test_preprocess_command_warms_the_cache(tmp_path, tiny_bundle, sample_dataset, ray_cluster):
    runs = tmp_path / "runs"
    job = _own_cache_job(tiny_bundle, sample_dataset, str(runs), "prep-cli")
    overrides = [
        f"request.training_data_url={job.request.training_data_url}",
        f"model.checkpoint={job.model.checkpoint}",
        f"model.text_encoder={job.model.text_encoder}",
        f"storage.storage_path={runs}",
        "storage.run_name=prep-cli",
        "request.validation=[]",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "ltx_ray", "preprocess", str(ROOT / "conf" / "demo.yaml"), *overrides],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ray_cluster}, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "latent cache built" in res.stdout
    assert len(list((runs / "latents").glob(f"*/{COMPLETE_MARKER}"))) == 1


def test_debug_dataset_collects_every_preprocessed_pair(tmp_path, tiny_bundle, sample_dataset, ray_cluster):
    job = _own_cache_job(tiny_bundle, sample_dataset, str(tmp_path / "runs"), "prep-debug",
                         "request.debug_dataset=true")
    cache = build_latent_cache(job)
    out = pipeline.publish_debug_dataset(job, cache, str(tmp_path / "debug_dataset.zip"))
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
    pairs = sorted(p["name"] for p in pipeline._plan(job, sample_dataset.archive, tmp_path / "w")[0])
    assert names == sorted(f"{p}{suffix}" for p in pairs for suffix in ("_start.mp4", "_end.mp4", ".txt"))


def test_packed_tensors_are_safetensors_and_round_trip_every_dtype():
    import numpy as np
    import torch
    from safetensors.torch import load, save

    tensors = {
        "frames": np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3),
        "latents": torch.randn(4, 5, dtype=torch.bfloat16),
        "audio": torch.randn(2, 7),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "empty": torch.zeros(0, 3),
    }
    blob = blobs.pack_tensors(tensors)
    ours, official = blobs.unpack_tensors(blob), load(blob)  # safetensors' own reader agrees
    theirs = blobs.unpack_tensors(save({k: torch.as_tensor(v) for k, v in tensors.items()}))
    for name, value in tensors.items():
        expected = torch.as_tensor(value)
        for got in (ours[name], official[name], theirs[name]):
            assert got.dtype == expected.dtype and torch.equal(got, expected), name


def test_allocated_blob_is_filled_through_its_views():
    import numpy as np
    from safetensors.numpy import load

    blob, views = blobs.allocate_packed(
        {"video": ((2, 3, 5, 3), np.dtype(np.uint8)), "audio": ((2, 7), np.dtype(np.float32))}
    )
    video, audio = np.arange(90, dtype=np.uint8).reshape(2, 3, 5, 3), np.linspace(-1, 1, 14, dtype=np.float32)
    views["video"][...], views["audio"][...] = video, audio.reshape(2, 7)
    for unpacked in (load(blob.tobytes()), {k: v.numpy() for k, v in blobs.unpack_tensors(blob).items()}):
        np.testing.assert_array_equal(unpacked["video"], video)
        np.testing.assert_array_equal(unpacked["audio"], audio.reshape(2, 7))
    assert blobs.pack_tensors({"video": video, "audio": audio.reshape(2, 7)}) == blob.tobytes()


@pytest.mark.parametrize("pairs,workers", [(1, 1), (3, 2), (40, 1), (40, 2), (120, 2), (1000, 32)])
def test_decode_tasks_shrink_towards_the_end_and_cover_every_pair_once(pairs, workers):
    sizes = stages.decode_task_sizes(pairs, workers)
    assert sum(sizes) == pairs and min(sizes) >= 1
    assert max(sizes) <= stages.MAX_PAIRS_PER_DECODE_TASK
    assert sizes == sorted(sizes, reverse=True)  # large tasks first
    # The last task of each worker carries a single pair, so workers finish together.
    assert sizes[-min(workers, len(sizes)):] == [1] * min(workers, len(sizes))
    # Far fewer tasks than pairs once the archive is large (Ray Data's per-task cost).
    if pairs >= 40:
        assert len(sizes) <= pairs // 2


def test_a_damaged_shard_is_named_and_the_cache_rebuilt(tmp_path, built, tiny_bundle, sample_dataset, caplog):
    # A copy of the shared cache in a storage of its own, found complete, then damaged.
    shutil.copytree(built[1].uri, tmp_path / "runs" / "latents" / built[1].key)
    job = _own_cache_job(tiny_bundle, sample_dataset, str(tmp_path / "runs"), "prep-damaged")
    first = build_latent_cache(job)
    assert first.hit
    shard = Path(first.uri) / first.shards[0]
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])  # cut short; the marker is intact
    with caplog.at_level("WARNING", logger="ltx_ray.latents.pipeline"):
        second = build_latent_cache(job)
    assert not second.hit and _decoded(second) == 3
    assert f"{shard} is {size // 2} bytes, the marker says {size}" in caplog.text
    assert not shard.exists() and len(LatentIndex.read(second.uri, job.storage)) == 3

    # The same size, one byte changed: only the checksum sees it.
    shard = Path(second.uri) / second.shards[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level("WARNING", logger="ltx_ray.latents.pipeline"):
        third = build_latent_cache(job)
    assert not third.hit and f"{shard} does not match its checksum" in caplog.text
    assert len(LatentIndex.read(third.uri, job.storage)) == 3


def test_readers_read_only_the_shards_the_marker_lists(tmp_path, built, tiny_bundle, sample_dataset):
    _, cache = built
    # A copy of the cache, so that the shared one stays as built.
    copy = tmp_path / "latents" / cache.key
    shutil.copytree(cache.uri, copy)
    job = tiny_job(tiny_bundle, sample_dataset, str(tmp_path / "runs"), "prep-two-writers",
                   f"storage.latent_cache_path={tmp_path / 'latents'}")
    # A second writer of the same key that has not published (or lost): its shards lie beside the cache's.
    other = copy / "w-other-writer"
    shutil.copytree(copy / cache.writer, other)
    found = find_cache(RunStore(job.storage, "prep-two-writers"), cache.key)
    assert found.hit and found.shards == cache.shards
    assert len(LatentIndex.read(found.uri, job.storage)) == 3  # not 6
    assert other.exists()  # a reader deletes nothing: a folder no marker lists may be a build in progress


def test_runs_of_one_storage_share_its_latent_cache_whatever_their_names(built, tiny_bundle, sample_dataset):
    job, first = built
    runs = Path(job.storage.storage_path)
    second = build_latent_cache(_own_cache_job(tiny_bundle, sample_dataset, str(runs), "share-b"))
    assert not first.hit and second.hit and second.uri == first.uri == str(runs / "latents" / first.key)
    assert _decoded(second) == 0  # the second run decoded (and encoded) nothing
    assert not (runs / "prep-local" / "latents").exists() and not (runs / "share-b" / "latents").exists()


def test_two_runs_needing_one_cache_at_once_build_it_once(tmp_path, tiny_bundle, sample_dataset, ray_cluster):
    runs = str(tmp_path / "runs")
    jobs = [_own_cache_job(tiny_bundle, sample_dataset, runs, f"at-once-{i}") for i in range(2)]
    caches: list = [None, None]

    def build(i: int) -> None:
        caches[i] = build_latent_cache(jobs[i])

    drivers = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for d in drivers:
        d.start()
    for d in drivers:
        d.join(timeout=600)
    # One built it (holding the key's lease); the other waited for it and read it.
    assert sorted(c.hit for c in caches) == [False, True]
    assert caches[0].uri == caches[1].uri and caches[0].writer == caches[1].writer
    assert _decoded(*caches) == 3
    assert sorted(p.name for p in Path(caches[0].uri).iterdir()) == sorted([COMPLETE_MARKER, caches[0].writer])
