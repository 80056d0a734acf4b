"""Turn the model's scores (input order) into the API's ranked results."""

from __future__ import annotations

from collections.abc import Sequence

from adapter.schemas import RerankResult, TextDocument


def rank(scores: Sequence[float], documents: Sequence[str | TextDocument], top_n: int | None,
         return_documents: bool) -> list[RerankResult]:
    """Best first, ties by index; each document in the form it arrived, unless left out."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_n is not None:
        order = order[:top_n]
    return [RerankResult(index=i, relevance_score=float(scores[i]),
                         document=documents[i] if return_documents else None) for i in order]
