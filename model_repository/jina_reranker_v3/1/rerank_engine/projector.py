"""jina-reranker-v3's MLP projector: Linear -> ReLU -> Linear, no biases.

Shapes are read from the file and checked against the model's hidden size;
the released files disagree with the model card's prose, so nothing is assumed.
"""

from __future__ import annotations

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .errors import ModelLoadError

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


def load_projector(path: str, hidden_size: int) -> Projector:
    """Load and validate; every problem is a ModelLoadError naming the file."""
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: projector file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
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
