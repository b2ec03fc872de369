"""A run's storage as one object: its named places, and the file operations over them (no Ray needed)."""

from __future__ import annotations

import hashlib

import pytest

from jobs import ROOT
from ltx_ray.config import load_config
from ltx_ray.config.schema import StorageConfig
from ltx_ray.errors import StorageError
from ltx_ray.run_store import RunStore


def test_a_run_s_places_are_under_its_folder_and_the_latent_cache_is_the_storage_s():
    store = RunStore(StorageConfig(storage_path="s3://bucket/runs"), "run-1")
    assert store.root == "s3://bucket/runs/run-1"
    assert (store.checkpoints, store.outputs, store.validation, store.lease) == (
        "s3://bucket/runs/run-1/checkpoints", "s3://bucket/runs/run-1/outputs", "s3://bucket/runs/run-1/validation",
        "s3://bucket/runs/run-1/_LEASE.json")
    assert store.output("ic_lora_av2av.safetensors") == "s3://bucket/runs/run-1/outputs/ic_lora_av2av.safetensors"
    # One cache for every run of the storage: not under the run's folder.
    assert store.latents == "s3://bucket/runs/latents" == RunStore(store.storage, "run-2").latents


def test_storage_latent_cache_path_moves_the_cache_and_a_relative_one_is_made_absolute(tmp_path, monkeypatch):
    assert RunStore(StorageConfig(storage_path="s3://b/runs", latent_cache_path="gs://c/latents"), "r").latents == \
        "gs://c/latents"
    monkeypatch.chdir(tmp_path)
    job, _ = load_config(ROOT / "conf" / "demo.yaml", ["storage.storage_path=runs", "storage.latent_cache_path=cache"])
    assert RunStore(job.storage, "r").latents == str(tmp_path / "cache")


def test_write_read_list_hash_and_delete_a_run_s_files(tmp_path):
    store = RunStore(StorageConfig(storage_path=str(tmp_path)), "r")
    uri = store.output("a.json")
    store.make_dir(store.outputs)
    store.write(uri, b'{"x": 1}')
    assert store.read(uri) == b'{"x": 1}' and store.is_file(uri)
    assert [e.base_name for e in store.list(store.outputs)] == ["a.json"]
    assert store.sha256(uri) == hashlib.sha256(b'{"x": 1}').hexdigest()
    store.copy(uri, store.output("b.json"))
    store.delete(store.outputs)
    assert store.list(store.outputs) == [] and not store.is_file(uri)
    store.delete(store.outputs)  # nothing there: nothing to do


def test_a_permanent_error_stops_at_once_naming_the_file(tmp_path):
    store = RunStore(StorageConfig(storage_path=str(tmp_path)), "r")
    store.make_dir(store.outputs)
    uri = store.output("x" * 300)
    with pytest.raises(StorageError) as stopped:
        store.write(uri, b"")
    assert str(stopped.value) == f"{uri}: writing {uri} failed: a file name is too long for this file system"
