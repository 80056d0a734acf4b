"""A GGUF file's key/value metadata, read in one pass over its bytes, without its tensors.

gguf-py's ``GGUFReader`` makes a NumPy view of every element of every field: on the real Qwen2 vocabulary (151,936
tokens and 151,387 merges) that took 18 s of a Zen 3 core, most of what generating a test model with that vocabulary
costs (the 0.6B stand-in, tests/test_real_vocabulary.py), paid again by every process that generates one. Read
sequentially it takes well under a second. The value types and their NumPy types are gguf-py's own.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
from gguf import GGUF_MAGIC, GGUFReader, GGUFValueType

# GGUF's fixed-size value types as gguf-py reads them, little-endian
_SCALARS = {kind: np.dtype(scalar).newbyteorder("<") for kind, scalar in GGUFReader.gguf_scalar_to_np.items()}
_HEADER = "<IIQQ"  # magic, version, tensor count, key/value count

Value = int | float | bool | str | list


def read_metadata(path: Path) -> dict[str, Value]:
    """Every metadata key of the GGUF file at ``path`` with its value: numbers and bools as Python's, strings
    decoded from UTF-8, arrays as lists (of lists, for arrays of arrays)."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        magic, version, _, n_kv = struct.unpack_from(_HEADER, data, 0)
        if magic != GGUF_MAGIC or version < 2:
            raise ValueError(f"{path} is not a GGUF file of version 2 or later (magic {magic:#x}, version {version})")
        offset, fields = struct.calcsize(_HEADER), {}
        for _ in range(n_kv):
            key, offset = _string(data, offset)
            (kind,) = struct.unpack_from("<I", data, offset)
            fields[key], offset = _value(data, offset + 4, GGUFValueType(kind))
    return fields


def _string(data: mmap.mmap, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return data[start:start + length].decode("utf-8"), start + length


def _value(data: mmap.mmap, offset: int, kind: GGUFValueType) -> tuple[Value, int]:
    """The value of type ``kind`` at ``offset`` and the offset just past it."""
    if kind == GGUFValueType.STRING:
        return _string(data, offset)
    if kind != GGUFValueType.ARRAY:
        dtype = _SCALARS[kind]
        return np.frombuffer(data, dtype, 1, offset).item(), offset + dtype.itemsize
    item_kind, count = struct.unpack_from("<IQ", data, offset)
    offset, item_kind = offset + 12, GGUFValueType(item_kind)
    if item_kind in _SCALARS:
        dtype = _SCALARS[item_kind]
        return np.frombuffer(data, dtype, count, offset).tolist(), offset + count * dtype.itemsize
    items = []
    for _ in range(count):
        item, offset = _value(data, offset, item_kind)
        items.append(item)
    return items, offset
