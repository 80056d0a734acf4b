"""jina-reranker-v3 on llama.cpp: a plain library, independent of Triton.

Settings, requests, results and errors import without llama.cpp (the Triton contract and the fast
unit tests need nothing more); ``Reranker`` loads llama.cpp when it is first named.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import EngineConfig, RunnerOptions
from .errors import InvalidInputError, ModelLoadError, RequestCancelledError
from .request import RerankRequest, RerankResult

if TYPE_CHECKING:
    from .engine import Reranker

__all__ = ["EngineConfig", "InvalidInputError", "ModelLoadError", "RequestCancelledError", "RerankRequest",
           "RerankResult", "Reranker", "RunnerOptions"]


def __getattr__(name: str) -> object:
    if name == "Reranker":
        return importlib.import_module(".engine", __name__).Reranker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
