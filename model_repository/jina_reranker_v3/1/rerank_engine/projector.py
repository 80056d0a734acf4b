"""jina-reranker-v3's MLP projector: Linear -> ReLU -> Linear, no biases.

Shapes are read from the file and checked against the model's hidden size;
the released files disagree with the model card's prose, so nothing is assumed.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .errors import ModelLoadError

SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
# Key schemes in the wild: the GGUF repository's file, and the MLX port's.
KEY_SCHEMES = (("projector.0.weight", "projector.2.weight"), ("linear1.weight", "linear2.weight"))


class Projector:
    def __init__(self, first: np.ndarray, second: np.ndarray) -> None:
        self.first = np.ascontiguousarray(first, dtype=np.float32)
        self.second = np.ascontiguousarray(second, dtype=np.float32)

    @property
    def in_features(self) -> int:
        return self.first.shape[1]

    @property
    def out_features(self) -> int:
        return self.second.shape[0]

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        return np.maximum(hidden @ self.first.T, 0.0) @ self.second.T


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors as float32. BF16 ones too, which NumPy (hence safetensors.numpy) cannot represent."""
    try:
        return {name: array.astype(np.float32) for name, array in load_file(path).items()}
    except TypeError:  # "data type 'bfloat16' not understood"
        pass
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
        data = file.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":  # the upper half of a float32
            values = (np.frombuffer(data[start:end], "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(data[start:end], SAFETENSORS_DTYPES[info["dtype"]]).astype(np.float32)
        tensors[name] = values.reshape(info["shape"])
    return tensors


def load_projector(path: str, hidden_size: int) -> Projector:
    """Load and validate; every problem is a ModelLoadError naming the file."""
    try:
        tensors = read_safetensors(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: projector file not found") from None
    except (SafetensorError, OSError, ValueError, KeyError, struct.error) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None
    scheme = next((keys for keys in KEY_SCHEMES if set(keys) == set(tensors)), None)
    if scheme is None:
        expected = " or ".join(str(list(keys)) for keys in KEY_SCHEMES)
        raise ModelLoadError(f"{path}: projector tensors {sorted(tensors)} are not one of the known layouts "
                             f"{expected}")
    first, second = (tensors[key] for key in scheme)
    if first.ndim != 2 or second.ndim != 2:
        raise ModelLoadError(f"{path}: projector weights must be matrices, got shapes {first.shape} "
                             f"and {second.shape}")
    if first.shape[1] != hidden_size:
        raise ModelLoadError(f"{path}: projector input width {first.shape[1]} does not match the model's "
                             f"hidden size {hidden_size}")
    if second.shape[1] != first.shape[0]:
        raise ModelLoadError(f"{path}: projector layers do not chain: {first.shape} then {second.shape}")
    return Projector(first, second)
