"""One filesystem abstraction for every place the job reads or writes.

A URI is a local path, `file://`, `s3://` or `gs://`; `resolve_filesystem`
turns it into a `pyarrow.fs.FileSystem` and a path inside it. The dataset
fetcher reads through it, and later stages write caches, checkpoints and
outputs through it (Ray Train accepts the same pair as `storage_filesystem`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from ltx_ray.config.schema import StorageConfig

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def scheme_of(uri: str) -> str:
    """The URI's scheme in lower case; "" for a plain local path (Windows drive letters included)."""
    parsed = urlparse(uri)
    # "C:\\data" parses with scheme "c"; a one-letter scheme is a drive, not a protocol.
    return parsed.scheme.lower() if len(parsed.scheme) > 1 else ""


def is_local(uri: str) -> bool:
    """True for a plain path or a `file://` URI."""
    return scheme_of(uri) in ("", "file")


def local_path(uri: str) -> Path:
    """The local path of a plain path or `file://` URI (`~` expanded)."""
    if scheme_of(uri) == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{uri}: file:// URIs must name a local path (file:///path)")
        return Path(unquote(parsed.path))
    return Path(uri).expanduser()


def s3_filesystem(storage: StorageConfig | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem honouring `storage.endpoint_override` / `storage.region`.

    Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID, ...,
    profiles, instance roles): they never pass through our config.
    """
    kwargs: dict = {}
    endpoint = storage.endpoint_override if storage else None
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme in ("http", "https"):
            # pyarrow wants host[:port] plus a separate scheme; a plain-http
            # endpoint (MinIO, moto) fails TLS otherwise.
            kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
            kwargs["scheme"] = parsed.scheme
        else:
            kwargs["endpoint_override"] = endpoint
    region = storage.region if storage else None
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if endpoint:
        # Self-hosted stores rarely serve virtual-host-style bucket names.
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def resolve_filesystem(uri: str, storage: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `uri` and the path of `uri` inside it.

    Local paths and `file://` give a `LocalFileSystem` and an absolute path;
    `s3://bucket/key` gives an `S3FileSystem` (endpoint and region from
    `storage`) and `bucket/key`; `gs://bucket/key` a `GcsFileSystem` and
    `bucket/key`. Raises `ValueError` for any other scheme (http(s) is read
    by `ltx_ray.data.fetch`, not through a filesystem).
    """
    scheme = scheme_of(uri)
    if scheme in ("", "file"):
        return pafs.LocalFileSystem(), str(local_path(uri).absolute())
    parsed = urlparse(uri)
    path = (parsed.netloc + parsed.path).rstrip("/")
    if not parsed.netloc:
        raise ValueError(f"{uri}: a bucket name is required")
    if scheme == "s3":
        return s3_filesystem(storage), path
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem(), path
    raise ValueError(f"{uri}: unsupported storage scheme {scheme!r} (use a local path, file://, s3:// or gs://)")


def join(uri: str, *parts: str) -> str:
    """Append path parts to a local path or URI with "/" (no normalisation of the scheme)."""
    if not parts:
        return uri
    if scheme_of(uri) == "":
        return str(Path(uri).joinpath(*parts))
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def upload(local: Path, uri: str, storage: StorageConfig | None = None) -> str:
    """Copy a local file, or a folder tree, to a storage URI; returns the URI."""
    fs, path = resolve_filesystem(uri, storage)
    local = Path(local)
    fs.create_dir(path if local.is_dir() else path.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return uri


def storage_uri(storage: StorageConfig, *parts: str) -> str:
    """A URI under the job's storage path: `s3://b/p/run/outputs/x`, or an absolute local path."""
    root = storage.storage_path
    if is_local(root):
        root = str(local_path(root).absolute())
    return join(root, *parts)
