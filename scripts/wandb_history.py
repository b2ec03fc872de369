"""Read an offline W&B run's logged history without syncing it (tests and benchmarks check what a run logged).

    from wandb_history import read_offline_history   # scripts/ is on sys.path in tests (tests/conftest.py)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


# The offline run file is a LevelDB-style log of protobuf records in 32 KiB blocks.
_BLOCK = 32768
_HEADER = 7  # per record: crc32 (4), length (2), type (1); the file starts with a 7-byte header too
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes):
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        body = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            pending = body
        elif kind == _MIDDLE:
            pending += body
        elif kind == _LAST:
            yield pending + body
            pending = b""


def read_offline_history(run_file: Path) -> list[dict]:
    """The logged history rows of an offline W&B run (`run-<id>.wandb`), oldest first, without syncing it."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in _records(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows
