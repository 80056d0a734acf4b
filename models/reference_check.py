"""What every check of the engine against the NumPy reference shares: the tests' and the GPU check's
(perf/gpu/gpu_check.py runs them on a GPU machine, where the tests are not importable as a package of their own).

The options under which an F32 model matches float64, the reference bound to an engine's tokeniser, and the
check's texts. gguf, llama.cpp and the reference are imported only when used, so that importing this module (as
tests/conftest.py does for every layer, the unit layer included) loads none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models import numpy_reference as ref
    from rerank_engine import Reranker

# llama.cpp options under which an F32 model matches the float64 reference to ~1e-7: the CPU flash-attention
# kernel rounds through F16 (~1e-3 in hidden states) and so does an F16 KV cache.
EXACT = {"flash_attn": False, "kv_cache_type": "f32"}

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital and most populous city of France.",
    "Bananas are an excellent source of potassium.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Berlin is the capital of Germany.",
    "",
    "France borders Belgium, Luxembourg, Germany, Switzerland, Italy, Monaco, Andorra and Spain.",
]


def words(n: int, seed: int) -> str:
    """``n`` words of the reference's system prompt in a seeded random order: a document of a known length."""
    import numpy as np

    from models import numpy_reference as ref

    rng = np.random.default_rng(seed)
    vocab = ref.SYSTEM.replace(".", "").split()
    return " ".join(rng.choice(vocab, size=n))


def open_engine(paths: tuple[Path, Path], **options) -> Reranker:
    from rerank_engine import EngineConfig, Reranker

    return Reranker(EngineConfig.from_options(str(paths[0]), str(paths[1]), **options))


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
