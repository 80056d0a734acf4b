"""Shared fixtures: generated models (never downloaded), engines and the NumPy reference.

gguf, llama.cpp and the reference are imported where a fixture first needs them, so that the unit layer
(``pytest -m unit``) loads none of them through this file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from models import numpy_reference as ref
    from rerank_engine import Reranker

from tests.layers import LAYERS, module_layers

ModelFactory = Callable[..., tuple[Path, Path]]
# llama.cpp options under which an F32 model matches the float64 reference to ~1e-7: the CPU flash-attention
# kernel rounds through F16 (~1e-3 in hidden states) and so does an F16 KV cache.
EXACT = {"flash_attn": False, "kv_cache_type": "f32"}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m <layer>``, modules of other layers are not even imported: the unit layer needs no llama.cpp."""
    layer = config.getoption("markexpr")
    if layer in LAYERS and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return layer not in module_layers(collection_path)
    return None


@pytest.fixture(scope="session")
def make_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFactory:
    """Generate (once per session and spec) a model; returns (gguf path, projector path)."""
    from models.generate_test_model import PRESETS, generate

    made: dict[tuple, tuple[Path, Path]] = {}

    def make(dtype: str = "f32", preset: str = "tiny", **overrides) -> tuple[Path, Path]:
        spec = dataclasses.replace(PRESETS[preset], **overrides)
        key = (dtype, spec)
        if key not in made:
            made[key] = generate(spec, dtype, tmp_path_factory.mktemp(f"{preset}-{dtype}"))
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_f32(make_model: ModelFactory) -> tuple[Path, Path]:
    return make_model("f32")


@pytest.fixture(scope="session")
def tiny_q8(make_model: ModelFactory) -> tuple[Path, Path]:
    return make_model("q8_0")


def open_engine(paths: tuple[Path, Path], **options) -> Reranker:
    from rerank_engine import EngineConfig, Reranker

    return Reranker(EngineConfig.from_options(str(paths[0]), str(paths[1]), **options))


def smallest_context(paths: tuple[Path, Path], **limits: int) -> int:
    """The smallest n_ctx the engine accepts with these truncation limits (bisection over real loads)."""
    from rerank_engine import ModelLoadError

    low, high = 64, 8192  # low is refused, high is accepted
    while high - low > 1:
        middle = (low + high) // 2
        try:
            open_engine(paths, n_ctx=middle, calibration_tokens=0, **limits).close()
            high = middle
        except ModelLoadError:
            low = middle
    return high


@pytest.fixture(scope="session")
def engine_f32(tiny_f32: tuple[Path, Path]) -> Reranker:
    return open_engine(tiny_f32, n_ctx=8192, **EXACT)


@pytest.fixture(scope="session")
def engine_q8(tiny_q8: tuple[Path, Path]) -> Reranker:
    return open_engine(tiny_q8, n_ctx=8192)


class Reference:
    """The NumPy reference bound to one model, tokenising with the engine's vocabulary."""

    def __init__(self, paths: tuple[Path, Path], engine: Reranker) -> None:
        from models import numpy_reference as ref

        self.model = ref.Qwen3Reference(str(paths[0]))
        self.projector = ref.load_projector(str(paths[1]))
        self.engine = engine

    def plain_tokenize(self, text: str) -> list[int]:
        return self.engine.tokenize(text)

    def rerank(self, query: str, docs: list[str], instruction: str | None = None, **kwargs) -> ref.ReferenceResult:
        from models import numpy_reference as ref

        return ref.rerank(self.model, self.projector, self.plain_tokenize, self.engine.detokenize,
                          self.engine.token_ids, query, docs, instruction, **kwargs)


@pytest.fixture(scope="session")
def reference_f32(tiny_f32: tuple[Path, Path], engine_f32: Reranker) -> Reference:
    return Reference(tiny_f32, engine_f32)


@pytest.fixture(scope="session")
def reference_q8(tiny_q8: tuple[Path, Path], engine_q8: Reranker) -> Reference:
    return Reference(tiny_q8, engine_q8)


@pytest.fixture(scope="session")
def live_stack(tiny_q8, tmp_path_factory):
    """A real Triton (tiny Q8_0 model, CPU config) and the adapter in front of it over gRPC."""
    from tests.servers import start_adapter, start_triton

    logs = tmp_path_factory.mktemp("live-stack")
    triton = start_triton(tiny_q8, logs / "triton.log")
    try:
        adapter = start_adapter(triton.grpc_url, logs / "adapter.log")
    except BaseException:
        triton.stop()
        raise
    yield triton, adapter
    adapter.stop()
    triton.stop()
