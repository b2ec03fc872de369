"""A safetensors file's header (its tensor index and `__metadata__`), read wherever the file lives.

Only the first 8 + n bytes are read: locally, or by ranged reads from `s3://` / `gs://` /
`http(s)://` (never a checkpoint's 40 GB body). The model's file set (`ltx_ray.model.files`) and the
estimate's architecture (`ltx_ray.estimate.architecture`) read their configs and versions here.
"""

from __future__ import annotations

import hashlib
import json
import struct
import urllib.request
from pathlib import Path
from typing import Any

from ltx_ray.errors import ModelError, Problem

# Headers larger than this are not a model config (the 22B's is ~1.5 MB with its tensor index).
_MAX_HEADER = 64 * 1024 * 1024


def read_header(uri: str | Path, storage=None) -> dict[str, Any]:
    """The parsed safetensors header of `uri` (tensor entries and `__metadata__`), read by range.

    `storage` (a `StorageConfig`) gives an S3 endpoint and region. Raises `ModelError` naming the file when
    it cannot be reached or is not a safetensors file.
    """
    raw, _ = read_raw_header(uri, storage)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ModelError(Problem(str(uri), f"the safetensors header is not JSON: {exc}")) from None


def read_metadata(uri: str | Path, storage=None) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file's header (empty when it has none)."""
    return dict(read_header(uri, storage).get("__metadata__") or {})


def read_config(uri: str | Path, storage=None) -> dict[str, Any]:
    """The LTX model config a file's header holds (its `config` metadata, parsed); `ModelError` naming the file
    when it has none or it is not JSON."""
    return config_of(read_metadata(uri, storage), str(uri))


def config_of(metadata: dict[str, str], name: str) -> dict[str, Any]:
    """The parsed `config` of a file's header metadata; `ModelError` naming the file `name` otherwise."""
    if "config" not in metadata:
        raise ModelError(Problem(name, "no 'config' entry in the safetensors metadata: not an LTX-2 model file"))
    try:
        return json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise ModelError(Problem(name, f"the 'config' metadata is not valid JSON: {exc}")) from None


def header_identity(uri: str | Path, storage=None) -> str:
    """A cheap, stable id of a safetensors file: sha256 of its header's bytes, then of its size (cache keys).

    Read by range wherever the file lives: a remote model is identified without downloading it.
    """
    raw, size = read_raw_header(uri, storage)
    digest = hashlib.sha256(raw)
    digest.update(str(size).encode())
    return digest.hexdigest()


def read_raw_header(uri: str | Path, storage=None) -> tuple[bytes, int]:
    """(the header's JSON bytes, the file's size in bytes) of a safetensors file, local or remote."""
    text = str(uri)
    scheme = text.split("://", 1)[0].lower() if "://" in text else "file"
    try:
        if scheme in ("http", "https"):
            return _http_header(text)
        if scheme in ("s3", "gs", "gcs"):
            from ltx_ray.storage import resolve_filesystem

            fs, path = resolve_filesystem(text, storage)
            size = fs.get_file_info(path).size
            with fs.open_input_file(path) as f:
                return _read_header(f.read, text), size
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ModelError(Problem(text, "file not found"))
        with open(path, "rb") as f:
            return _read_header(f.read, text), path.stat().st_size
    except ModelError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelError(Problem(text, f"cannot read the safetensors header: {exc}")) from None


def _read_header(read, name: str) -> bytes:
    raw = read(8)
    if len(raw) != 8:
        raise ModelError(Problem(name, "not a safetensors file (shorter than its 8-byte header length)"))
    (length,) = struct.unpack("<Q", raw)
    if length > _MAX_HEADER:
        raise ModelError(Problem(name, f"not a safetensors file (header length {length} bytes)"))
    body = read(length)
    if len(body) != length:
        raise ModelError(Problem(name, "the safetensors header is cut short"))
    return body


def _http_header(url: str) -> tuple[bytes, int]:
    """Two ranged GETs: the 8-byte length (and the file's size, from Content-Range), then the header itself."""
    def ranged(start: int, end: int) -> tuple[bytes, int | None]:
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read(end - start + 1)
            if response.status != 206 and start > 0:
                raise OSError(f"the server ignored the byte range (HTTP {response.status})")
            total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
            length = response.headers.get("Content-Length") if response.status == 200 else None
            size = int(total) if total.isdigit() else int(length) if length and length.isdigit() else None
            return data, size

    first, size = ranged(0, 7)
    (length,) = struct.unpack("<Q", first[:8]) if len(first) >= 8 else (None,)
    if length is None or length > _MAX_HEADER:
        raise ModelError(Problem(url, "not a safetensors file"))
    if size is None:
        raise OSError("the server states no size for the file (no Content-Range)")
    body, _ = ranged(8, 8 + length - 1)
    return body, size
