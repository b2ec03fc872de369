"""A run's storage as one object: where each of its things lives, and the file operations over them.

`RunStore(storage, run)` names the places of a run:

    <storage_path>/<run>/
      checkpoints/    verified training checkpoints (ltx_ray.train.checkpoint)
      outputs/        the LoRA, its config file, the validation reel, the debug archive, the W&B run
                      (ltx_ray.train.outputs)
      validation/     the encoded validation samples (ltx_ray.train.driver)
      inputs/         a local archive staged where the decode workers of every node can read it
      _LEASE.json     the driver that holds the run (ltx_ray.lease)
    <storage.latent_cache_path, default <storage_path>/latents>/<key>/
                      the latent cache, one per storage and shared by its runs (ltx_ray.latents.cache)

and reads, writes, lists, deletes and hashes files anywhere in storage through `ltx_ray.storage`:
transient errors are retried for `storage.retry_timeout_s`, a permanent one is a `StorageError`
naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from ltx_ray.config.schema import DEFAULT_LATENT_CACHE, StorageConfig
from ltx_ray.storage import (file_sha256, is_local, join, local_path, read_bytes, resolve_filesystem, retrying,
                             storage_uri, upload, write_bytes)

LEASE_FILE = "_LEASE.json"


class RunStore:
    """The storage of one run: its named places (URIs) and read/write/list/delete/sha256 over any URI."""

    def __init__(self, storage: StorageConfig, run: str):
        self.storage, self.run = storage, run
        self.root = storage_uri(storage, run)
        self.checkpoints = join(self.root, "checkpoints")
        self.outputs = join(self.root, "outputs")
        self.validation = join(self.root, "validation")
        self.inputs = join(self.root, "inputs")
        self.lease = join(self.root, LEASE_FILE)
        self.latents = latent_cache_root(storage)

    def __repr__(self) -> str:
        return f"RunStore({self.root!r}, latents={self.latents!r})"

    def output(self, name: str) -> str:
        """Where the output `name` of this run lands."""
        return join(self.outputs, name)

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The filesystem holding `uri` and its path there (for Ray Data and Ray Train, which take the pair)."""
        return resolve_filesystem(uri, self.storage)

    def info(self, uri: str) -> pafs.FileInfo:
        """What is at `uri`: its type (`NotFound` when nothing) and size."""
        fs, path = self.filesystem(uri)
        return retrying(f"looking up {uri}", lambda: fs.get_file_info(path), self.storage, where=uri)

    def is_file(self, uri: str) -> bool:
        return self.info(uri).type == pafs.FileType.File

    def list(self, uri: str) -> list[pafs.FileInfo]:
        """The entries of the folder `uri`, not recursive (none when it does not exist)."""
        fs, path = self.filesystem(uri)
        return retrying(f"listing {uri}", lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)),
                        self.storage, where=uri)

    def read(self, uri: str) -> bytes:
        """A whole file."""
        fs, path = self.filesystem(uri)
        return read_bytes(fs, path, self.storage, uri)

    def write(self, uri: str, data: bytes) -> None:
        """Write a whole file, replacing it (its folder must exist on a local filesystem: see `make_dir`)."""
        fs, path = self.filesystem(uri)
        write_bytes(fs, path, data, self.storage, uri)

    def make_dir(self, uri: str) -> None:
        """Create the folder `uri` and its parents (nothing to do on an object store)."""
        fs, path = self.filesystem(uri)
        retrying(f"writing {uri}", lambda: fs.create_dir(path, recursive=True), self.storage, where=uri)

    def upload(self, local: Path, uri: str) -> str:
        """Copy a local file, or a folder tree, to `uri`; returns `uri`."""
        return upload(local, uri, self.storage)

    def copy(self, source: str, target: str) -> None:
        """Copy one file to another place of the same filesystem."""
        fs, src = self.filesystem(source)
        _, dst = self.filesystem(target)

        def copy() -> None:
            fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
            fs.copy_file(src, dst)

        retrying(f"copying {source} to {target}", copy, self.storage, where=target)

    def delete(self, uri: str) -> None:
        """Remove the file or folder tree at `uri`, if there is one."""
        fs, path = self.filesystem(uri)

        def delete() -> None:
            kind = fs.get_file_info(path).type
            if kind == pafs.FileType.Directory:
                fs.delete_dir(path)
            elif kind == pafs.FileType.File:
                fs.delete_file(path)

        retrying(f"deleting {uri}", delete, self.storage, where=uri)

    def sha256(self, uri: str) -> str:
        """The SHA-256 of a file, streamed."""
        fs, path = self.filesystem(uri)
        return file_sha256(fs, path, self.storage, uri)


def latent_cache_root(storage: StorageConfig) -> str:
    """The folder of the storage's latent cache: `storage.latent_cache_path`, else `<storage_path>/latents`."""
    root = storage.latent_cache_path
    if not root:
        return storage_uri(storage, DEFAULT_LATENT_CACHE)
    return str(local_path(root).absolute()) if is_local(root) else root
