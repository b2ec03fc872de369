"""Bring a URL onto local disk: the training archive, validation references, model files.

Local paths are used where they are (never copied, never modified). Remote
files stream to disk under a size cap, with retries and backoff on the
failures that go away by themselves (timeouts, resets, 5xx, 429). Anything
else (4xx, a host name that does not resolve) fails at once with a
`DatasetError` naming the URL, before any cluster time is spent. A URL is only
ever shown redacted (`config.display.redact_url`: no credentials, no query
string); user-info in an http(s) URL is sent as HTTP basic auth, never as part
of the host name.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from ltx_ray.config.display import redact_url
from ltx_ray.config.schema import StorageConfig
from ltx_ray.errors import DatasetError, Problem
from ltx_ray.storage import is_local, local_path, permanent_reason, resolve_filesystem, scheme_of

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024**3
CHUNK = 1024 * 1024
HTTP_TIMEOUT_S = 60.0
# HTTP statuses worth another try; every other 4xx is the user's URL.
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _Transient(Exception):
    """A failure that may pass on retry; carries the message for the final error."""


class _TooLarge(Exception):
    """The download passed `max_bytes`."""


def fetch(
    url: str,
    dest_dir: Path,
    *,
    storage: StorageConfig | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 4,
    backoff_s: float = 1.0,
) -> Path:
    """A local path holding `url`: a local path as is, anything else downloaded into `dest_dir`.

    Supports plain paths, `file://`, `http(s)://`, `s3://` (endpoint and region
    from `storage`) and `gs://`. Downloads stream to `<dest_dir>/<basename>`
    (numbered `<stem>-1.<ext>`, ... if that name is taken) through a `.part` file that is removed on failure; at most `retries`
    extra attempts are made, waiting `backoff_s`, 2x, 4x, ... between them.
    An `s3://` / `gs://` prefix that is a folder (a text-encoder directory)
    is downloaded file by file into `<dest_dir>/<basename>/`; local folders
    are returned as they are. Raises `DatasetError` naming the URL when it
    cannot be read or is larger than `max_bytes` in total.
    """
    shown = redact_url(url)
    if is_local(url):
        try:
            path = local_path(url)
        except ValueError as exc:
            raise DatasetError(Problem(shown, str(exc))) from None
        if not path.exists():
            raise DatasetError(Problem(shown, "file not found"))
        return path

    scheme = scheme_of(url)
    dest_dir = Path(dest_dir)
    if scheme in ("http", "https"):
        return _with_retries(shown, lambda: _open_http(url), _unique(dest_dir, url), max_bytes, retries, backoff_s)
    if scheme not in ("s3", "gs", "gcs"):
        raise DatasetError(
            Problem(shown, f"unsupported URL scheme {scheme!r}; use a path, file://, http(s)://, s3:// or gs://")
        )
    url_for_storage, url = url, shown  # below, `url` is what messages name
    try:
        fs, root = resolve_filesystem(url_for_storage, storage)
        info = _retrying(url, lambda: fs.get_file_info(root), retries, backoff_s)
    except ValueError as exc:
        raise DatasetError(Problem(url, f"cannot open storage: {exc}")) from None
    if info.type == pafs.FileType.File:
        return _with_retries(url, lambda: _open_fs(fs, root), _unique(dest_dir, url), max_bytes, retries, backoff_s)
    if info.type != pafs.FileType.Directory:
        raise DatasetError(Problem(url, "not found"))
    listing = _retrying(url, lambda: fs.get_file_info(pafs.FileSelector(root, recursive=True)), retries, backoff_s)
    files = [f for f in listing if f.type == pafs.FileType.File]
    if not files:
        raise DatasetError(Problem(url, "is an empty folder"))
    if sum(f.size or 0 for f in files) > max_bytes:
        raise DatasetError(Problem(url, f"is larger than the {_human(max_bytes)} limit"))
    folder = _unique(dest_dir, url)
    try:
        for f in files:
            rel = f.path[len(root) :].lstrip("/")
            _with_retries(url, lambda f=f: _open_fs(fs, f.path), folder / rel, max_bytes, retries, backoff_s)
    except BaseException:
        # Half a model folder is worse than none: a later run would trust it.
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _with_retries(
    url: str,
    opener: Callable[[], tuple[BinaryIO, int | None]],
    dest: Path,
    max_bytes: int,
    retries: int,
    backoff_s: float,
) -> Path:
    """Stream `opener()` into `dest` through a `.part` file, retrying transient failures."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def attempt() -> Path:
        try:
            _download(opener, part, max_bytes)
            os.replace(part, dest)
            return dest
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    try:
        return _retrying(url, attempt, retries, backoff_s)
    except _TooLarge:
        raise DatasetError(Problem(url, f"is larger than the {_human(max_bytes)} limit")) from None


def _retrying(url: str, fn: Callable, retries: int, backoff_s: float):
    """Call `fn`, retrying `_Transient` / `OSError` with exponential backoff; give up with a `DatasetError`."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except (_Transient, OSError) as exc:
            reason = permanent_reason(exc) if isinstance(exc, OSError) else None
            if reason:  # access denied, no such bucket, disk full: another try cannot help
                raise DatasetError(Problem(url, f"cannot be downloaded: {reason}")) from None
            if attempt >= retries:
                raise DatasetError(Problem(url, f"cannot be downloaded after {attempt + 1} attempts: {exc}")) from None
            wait = backoff_s * 2**attempt
            log.warning("fetch %s failed (%s); retrying in %.1fs", url, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def content_hash(path: Path, chunk: int = 8 * CHUNK) -> str:
    """Hex sha256 of a file, read in chunks (a cache key for archives and clips)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(opener: Callable[[], tuple[BinaryIO, int | None]], part: Path, max_bytes: int) -> None:
    stream, size = opener()
    with stream:
        # Refuse early when the server announces the size; count anyway, headers can lie.
        if size is not None and size > max_bytes:
            raise _TooLarge()
        written = 0
        try:
            with open(part, "wb") as out:
                while block := stream.read(CHUNK):
                    written += len(block)
                    if written > max_bytes:
                        raise _TooLarge()
                    out.write(block)
        except (OSError, http.client.HTTPException) as exc:
            # Resets, timeouts and truncated bodies: the next attempt starts over.
            raise _Transient(f"connection lost after {written} bytes: {exc}") from None
        if size is not None and written != size:
            raise _Transient(f"got {written} of {size} bytes")


def _open_http(url: str) -> tuple[BinaryIO, int | None]:
    parts = urlparse(url)
    headers = {"User-Agent": "ltx-ray"}
    if parts.username is not None:
        # user:password@host is HTTP basic auth; left in the URL, urllib would take it for the host name.
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        if ":" in (parts.hostname or ""):
            netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        url = parts._replace(netloc=netloc).geturl()
    request = urllib.request.Request(url, headers=headers)
    shown = redact_url(url)
    try:
        response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DatasetError(Problem(shown, f"cannot be downloaded: HTTP {exc.code} {exc.reason}")) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.gaierror):
            # A host name that does not resolve stays unresolved: no retries.
            raise DatasetError(Problem(shown, f"cannot be downloaded: host {parts.hostname!r} not found")) from None
        raise _Transient(f"unreachable: {reason}") from None
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _open_fs(fs: pafs.FileSystem, path: str) -> tuple[BinaryIO, int | None]:
    try:
        return fs.open_input_stream(path), fs.get_file_info(path).size
    except OSError as exc:
        raise _Transient(str(exc)) from None


def _unique(dest_dir: Path, url: str) -> Path:
    """`dest_dir/<basename>`, numbered when taken: two URLs ending in `ref.mp4` must not overwrite each other."""
    name = _basename(url)
    path, n = dest_dir / name, 1
    stem, dot, ext = name.partition(".")
    while path.exists():
        path = dest_dir / f"{stem}-{n}{dot}{ext}"
        n += 1
    return path


def _basename(url: str) -> str:
    name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    # Keep a readable name but nothing a filesystem could misread.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "download"


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
