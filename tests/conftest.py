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
    from rerank_engine import Reranker

from models.reference_check import EXACT, Reference, open_engine
from tests.layers import LAYERS, module_layers

ModelFactory = Callable[..., tuple[Path, Path]]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With ``-m <layer>``, modules of other layers are not even imported: the unit layer needs no llama.cpp."""
    layer = config.getoption("markexpr")
    if layer in LAYERS and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return layer not in module_layers(collection_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules holding a slow test first, then the others by test count, most first.

    make test hands whole modules to its workers in collection order (--no-loadscope-reorder): pytest-xdist's own
    order (most tests first) left the minute-long soak, one test, to start last and run alone at the end."""
    modules: dict[Path, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)
    order = sorted(modules.values(), key=lambda tests: (not any(t.get_closest_marker("slow") for t in tests),
                                                         -len(tests)))
    items[:] = [item for tests in order for item in tests]


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
