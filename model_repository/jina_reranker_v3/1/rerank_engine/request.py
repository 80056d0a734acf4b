"""What the engine takes and gives back: plain data, importable without llama.cpp."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: Sequence[str]
    instruction: str | None = None
    return_embeddings: bool = False
    # time.monotonic() by which the answer must be ready. None: score every document, however long it takes.
    # Otherwise, when not every document can be scored in time, the best lexical candidates are.
    deadline: float | None = None
    min_scored: int = 1  # the model scores at least this many documents whenever any model work fits (top_n)
    # The caller's own cap on each document's tokens (Cohere's max_tokens_per_doc), below the engine's
    # max_doc_tokens; None: the engine's. Only the engine tokenises, so the cap is applied here.
    max_doc_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class RerankResult:
    scores: np.ndarray  # float32 [n_documents], input order
    tokens: int  # tokens decoded for this request, all blocks together
    doc_embeddings: np.ndarray | None = None  # float32 [n_documents, projector width], when asked for
    scored: np.ndarray | None = None  # bool [n_documents]: scored by the model (False: ranked lexically)

    @property
    def n_scored(self) -> int:
        return len(self.scores) if self.scored is None else int(self.scored.sum())
