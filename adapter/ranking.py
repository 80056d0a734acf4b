"""Turn the model's scores (input order) into a ranking: best first, ties by index, at most ``top_n``."""

from __future__ import annotations

from collections.abc import Sequence

from adapter.schemas import RerankResult, TextDocument


def order(scores: Sequence[float], top_n: int | None) -> list[int]:
    """The documents' indices best first, ties by index; the first ``top_n`` (None: all). Every dialect ranks so."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return ranked if top_n is None else ranked[:top_n]


def rank(scores: Sequence[float], documents: Sequence[str | TextDocument], top_n: int | None,
         return_documents: bool) -> list[RerankResult]:
    """Jina's results: each document in the form it arrived, unless left out."""
    return [RerankResult(index=i, relevance_score=float(scores[i]),
                         document=documents[i] if return_documents else None) for i in order(scores, top_n)]
