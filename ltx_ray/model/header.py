"""A safetensors file's header (its tensor index and `__metadata__`), read wherever the file lives.

Only the first 8 + n bytes are read: locally, or by ranged reads from `s3://` / `gs://` /
`http(s)://` (never a checkpoint's 40 GB body). The model's file set (`ltx_ray.model.files`) and the
estimate's architecture (`ltx_ray.estimate.architecture`) read their configs and versions here.
"""

from __future__ import annotations

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
    text = str(uri)
    scheme = text.split("://", 1)[0].lower() if "://" in text else "file"
    try:
        if scheme in ("http", "https"):
            return _http_header(text)
        if scheme in ("s3", "gs", "gcs"):
            from ltx_ray.storage import resolve_filesystem

            fs, path = resolve_filesystem(text, storage)
            with fs.open_input_file(path) as f:
                return _read_header(f.read, text)
        with open(Path(text.removeprefix("file://")).expanduser(), "rb") as f:
            return _read_header(f.read, text)
    except ModelError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelError(Problem(text, f"cannot read the safetensors header: {exc}")) from None


def read_metadata(uri: str | Path, storage=None) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file's header (empty when it has none)."""
    return dict(read_header(uri, storage).get("__metadata__") or {})


def _read_header(read, name: str) -> dict[str, Any]:
    raw = read(8)
    if len(raw) != 8:
        raise ModelError(Problem(name, "not a safetensors file (shorter than its 8-byte header length)"))
    (length,) = struct.unpack("<Q", raw)
    if length > _MAX_HEADER:
        raise ModelError(Problem(name, f"not a safetensors file (header length {length} bytes)"))
    body = read(length)
    if len(body) != length:
        raise ModelError(Problem(name, "the safetensors header is cut short"))
    return json.loads(body)


def _http_header(url: str) -> dict[str, Any]:
    """Two ranged GETs: the 8-byte length, then the header itself."""
    def ranged(start: int, end: int) -> bytes:
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read(end - start + 1)
            if response.status != 206 and start > 0:
                raise OSError(f"the server ignored the byte range (HTTP {response.status})")
            return data

    first = ranged(0, 7)
    (length,) = struct.unpack("<Q", first[:8]) if len(first) >= 8 else (None,)
    if length is None or length > _MAX_HEADER:
        raise ModelError(Problem(url, "not a safetensors file"))
    return json.loads(ranged(8, 8 + length - 1))
