"""The timing stand-in: a generated Qwen3-0.6B-shaped Q8_0 model with the real Qwen2 vocabulary.

Random weights, real shapes: compute does not depend on the weights' values, and token counts
of real text are the real model's. Generated once under .cache/ (never committed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from perf import ROOT

PRESET, DTYPE = "qwen3-0.6b", "q8_0"
STANDIN_DIR = ROOT / ".cache" / "models" / f"{PRESET}-{DTYPE}"


def standin_paths(directory: Path = STANDIN_DIR) -> tuple[Path, Path]:
    return directory / "model.gguf", directory / "projector.safetensors"


def ensure_standin(directory: Path = STANDIN_DIR, dtype: str = DTYPE, preset: str = PRESET) -> tuple[Path, Path]:
    """The stand-in's (model, projector) paths, generating them first when absent (~20 s, ~640 MB).

    Another ``dtype`` (the PyTorch peer's BF16 knob) or ``preset`` (``qwen3-0.6b-v35``: v3.5's sliding-window
    layers) goes to its own folder beside the Q8_0 one.
    """
    if (dtype, preset) != (DTYPE, PRESET) and directory == STANDIN_DIR:
        directory = STANDIN_DIR.with_name(f"{preset}-{dtype}")
    model, projector = standin_paths(directory)
    if model.is_file() and projector.is_file():
        return model, projector
    from models.generate_test_model import PRESETS, generate

    print(f"generating the {preset} {dtype} stand-in model into {directory} (once)", flush=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so an interrupted run never leaves a truncated model behind.
    with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
        generate(PRESETS[preset], dtype, Path(scratch) / "out")
        if directory.exists():
            shutil.rmtree(directory)
        (Path(scratch) / "out").rename(directory)
    return standin_paths(directory)
