"""A safetensors-format blob codec for the tensors that travel between stages and into the cache.

A pair's fitted clips travel from the decode stage to the encoder as one blob; its latents are
stored in the cache as another. Written by hand rather than with `safetensors.torch`: the tensors
are copied once, straight into the blob (`allocate_packed`: not at all), and read back as views.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

# safetensors dtype codes <-> numpy dtypes (bf16 travels as its 16-bit pattern).
_SAFETENSORS_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.int16,
}
_NUMPY_CODES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items() if k != "BF16"}


def pack_tensors(tensors: dict[str, Any]) -> bytes:
    """Named tensors (torch or numpy) as one safetensors-format blob, dtype kept (bf16 included)."""
    import torch

    arrays = {}
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            code = "BF16" if value.dtype == torch.bfloat16 else None
            array = (value.view(torch.int16) if code else value).numpy()
        else:
            code, array = None, np.ascontiguousarray(value)
        arrays[name] = (code or _NUMPY_CODES[array.dtype], array)
    head = _safetensors_header({name: (code, a.shape, a.nbytes) for name, (code, a) in arrays.items()})
    return b"".join([head, *(a.reshape(-1).view(np.uint8).data for _, a in arrays.values())])


def allocate_packed(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An unfilled safetensors-format blob for tensors of these shapes and numpy dtypes, and a view of each.

    Writing into the views fills the blob, so data produced straight into them (a
    pair's decoded frames, ~316 MB at the spec's defaults) is never copied to be packed.
    """
    sizes = {name: math.prod(shape) * np.dtype(dtype).itemsize for name, (shape, dtype) in specs.items()}
    head = _safetensors_header(
        {name: (_NUMPY_CODES[np.dtype(dtype)], shape, sizes[name]) for name, (shape, dtype) in specs.items()}
    )
    blob = np.empty(len(head) + sum(sizes.values()), dtype=np.uint8)
    blob[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    views, offset = {}, len(head)
    for name, (shape, dtype) in specs.items():
        views[name] = blob[offset : offset + sizes[name]].view(dtype).reshape(shape)
        offset += sizes[name]
    return blob, views


def _safetensors_header(entries: dict[str, tuple[str, tuple[int, ...], int]]) -> bytes:
    """Length prefix and JSON header for (dtype code, shape, bytes) per name, data laid out in that order."""
    header, offset = {}, 0
    for name, (code, shape, nbytes) in entries.items():
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def unpack_tensors(blob: bytes | memoryview) -> dict[str, Any]:
    """The inverse of `pack_tensors` (reads any safetensors blob): a dict of torch tensors.

    The tensors are read-only views of `blob`, not copies: convert before writing to them.
    """
    import warnings

    import torch

    view = memoryview(blob)
    (length,) = struct.unpack("<Q", view[:8])
    header = json.loads(bytes(view[8 : 8 + length]))
    header.pop("__metadata__", None)
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, info in header.items():
            start, end = (8 + length + o for o in info["data_offsets"])
            array = np.frombuffer(view[start:end], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            tensor = torch.from_numpy(array.reshape(info["shape"]))
            out[name] = tensor.view(torch.bfloat16) if info["dtype"] == "BF16" else tensor
    return out
