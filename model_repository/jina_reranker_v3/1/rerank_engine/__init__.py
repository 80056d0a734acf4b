"""jina-reranker-v3 on llama.cpp: a plain library, independent of Triton."""

from .engine import EngineConfig, Reranker, RerankRequest, RerankResult
from .errors import InvalidInputError, ModelLoadError, RequestCancelledError

__all__ = ["EngineConfig", "InvalidInputError", "ModelLoadError", "RequestCancelledError", "RerankRequest",
           "RerankResult", "Reranker"]
