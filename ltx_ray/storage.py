"""One filesystem abstraction for every place the job reads or writes.

A URI is a local path, `file://`, `s3://` or `gs://`; `resolve_filesystem`
turns it into a `pyarrow.fs.FileSystem` and a path inside it. The dataset
fetcher reads through it, and later stages write caches, checkpoints and
outputs through it (Ray Train accepts the same pair as `storage_filesystem`).

Every read and write of the job's own files goes through `retrying`: a
transient error (connection refused or reset, a timeout, a 5xx, throttling)
is retried with backoff for up to `storage.retry_timeout_s`; a permanent one
(access denied, no such bucket, disk full, a name too long) stops the job at
once with a `StorageError` naming the file and the cause.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from ltx_ray.config.schema import StorageConfig
from ltx_ray.errors import Problem, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    by `ltx_ray.fetch`, not through a filesystem).
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
    """Copy a local file, or a folder tree, to a storage URI (transient errors retried); returns the URI."""
    fs, path = resolve_filesystem(uri, storage)
    local = Path(local)

    def copy() -> None:
        fs.create_dir(path if local.is_dir() else path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    retrying(f"writing {uri}", copy, storage, where=uri)
    return uri



def read_bytes(fs: pafs.FileSystem, path: str, storage: StorageConfig | None, uri: str = "") -> bytes:
    """A whole file of `fs` (transient errors retried); `uri` names it in errors."""
    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return retrying(f"reading {uri or path}", read, storage, where=uri or path)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes, storage: StorageConfig | None, uri: str = "") -> None:
    """Write a whole file of `fs`, replacing it (transient errors retried: each try writes it all)."""
    def write() -> None:
        if isinstance(fs, pafs.LocalFileSystem):
            # An object store's PUT replaces a file whole; a local file is truncated, then written, and two
            # writers at once (two drivers taking one lease) can leave the bytes of both. Write beside it and
            # rename over it: a reader sees one writer's file or the other's.
            tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
            try:
                with fs.open_output_stream(tmp) as f:
                    f.write(data)
                fs.move(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return
        with fs.open_output_stream(path) as f:
            f.write(data)

    retrying(f"writing {uri or path}", write, storage, where=uri or path)


def file_sha256(fs: pafs.FileSystem, path: str, storage: StorageConfig | None, uri: str = "") -> str:
    """The SHA-256 of a file of `fs` (transient errors retried)."""
    def digest() -> str:
        with fs.open_input_stream(path) as f:
            return stream_sha256(f)

    return retrying(f"reading {uri or path}", digest, storage, where=uri or path)


def stream_sha256(f) -> str:
    """The SHA-256 of what is left to read of a binary stream, read in 4 MiB chunks."""
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 22), b""):
        h.update(chunk)
    return h.hexdigest()

# Transient: the store is there but did not answer this time. Matched in pyarrow's messages, which
# carry the AWS SDK's error names and curl's codes rather than an errno.
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EAGAIN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}
_TRANSIENT_MARKERS = ("NETWORK_CONNECTION", "curlCode", "Connection refused", "Connection reset",
                      "connection reset", "timed out", "Timeout", "SLOW_DOWN", "SlowDown", "Throttl",
                      "TooManyRequests", "ServiceUnavailable", "Service Unavailable", "INTERNAL_FAILURE",
                      "InternalError", "RequestTimeout", "HTTP status 5", "Broken pipe", "Couldn't connect")
# Permanent: retrying cannot help; said in words a user acts on.
_PERMANENT = ((errno.ENOSPC, "No space left", "no space left on the device: free space or point "
                                              "storage.storage_path elsewhere"),
              (errno.EDQUOT, "Disk quota", "the disk quota is exceeded: free space or point storage.storage_path "
                                           "elsewhere"),
              (errno.ENAMETOOLONG, "name too long", "a file name is too long for this file system"),
              (errno.EROFS, "Read-only file system", "the file system is read-only"),
              (None, "ACCESS_DENIED", "access denied: check the credentials and the bucket's policy"),
              (errno.EACCES, "Permission denied", "permission denied"),
              (None, "NoSuchBucket", "the bucket does not exist"),
              (None, "NO_SUCH_BUCKET", "the bucket does not exist"))


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may go away by itself (and is worth retrying)."""
    if not isinstance(exc, OSError) or permanent_reason(exc):
        return False
    if exc.errno in _TRANSIENT_ERRNOS:
        return True
    return any(marker in str(exc) for marker in _TRANSIENT_MARKERS)


def permanent_reason(exc: OSError) -> str | None:
    """Why a storage error cannot pass by itself, in words a user acts on (None: not known to be permanent)."""
    text = str(exc)
    for code, marker, reason in _PERMANENT:
        if (code is not None and exc.errno == code) or marker in text:
            return reason
    return None


def describe(exc: BaseException) -> str:
    """A storage error in one phrase: the cause a user acts on where it is known, else the error itself."""
    reason = permanent_reason(exc) if isinstance(exc, OSError) else None
    if reason:
        return reason
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def retry_timeout_s(storage: StorageConfig | None) -> float:
    return storage.retry_timeout_s if storage is not None else StorageConfig.retry_timeout_s


def retrying(what: str, fn: Callable[[], T], storage: StorageConfig | None, *, where: str = "") -> T:
    """Run a storage call, retrying transient errors with backoff for up to `storage.retry_timeout_s`.

    `what` says what the call does ("writing s3://b/run/x"), `where` names the file or folder in the error.
    A permanent error, or transient ones past the timeout, raise `StorageError`; other exceptions pass.
    """
    budget = retry_timeout_s(storage)
    deadline = time.monotonic() + budget
    delay, attempts = 0.5, 0
    while True:
        try:
            return fn()
        except StorageError:
            raise
        except OSError as exc:
            attempts += 1
            if not is_transient(exc):
                raise StorageError(Problem(where or what, f"{what} failed: {describe(exc)}")) from exc
            if time.monotonic() + delay > deadline:
                raise StorageError(Problem(where or what, f"{what} kept failing for {budget:.0f} s "
                                                          f"(storage.retry_timeout_s, {attempts} attempts): "
                                                          f"{describe(exc)}")) from exc
            log.warning("%s: %s; retrying in %.1f s", what, describe(exc), delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


def storage_uri(storage: StorageConfig, *parts: str) -> str:
    """A URI under the job's storage path: `s3://b/p/run/outputs/x`, or an absolute local path."""
    root = storage.storage_path
    if is_local(root):
        root = str(local_path(root).absolute())
    return join(root, *parts)
