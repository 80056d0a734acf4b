"""Jina's rerank API (``POST /v1/rerank``), which the old fastembed service's ``POST /rerank`` also speaks:
LibreChat, Jina's clients, and Cohere's v1 clients (``cohere.Client(base_url=...)``), for whom the response also
carries Cohere's v1 ``id`` and ``meta``. Errors are the adapter's own ``{"detail", "type"}``.
"""

from __future__ import annotations

from adapter.dialects import Dialect, Ranked, RerankCall
from adapter.dialects.cohere import meta
from adapter.errors import own_shape
from adapter.ranking import rank
from adapter.schemas import RerankBody, RerankResponse, Usage


def call(body: RerankBody) -> RerankCall:
    return RerankCall(body.query, body.texts(), body.top_n, body.instruction)


def render(body: RerankBody, ranked: Ranked) -> RerankResponse:
    return RerankResponse(model=ranked.model, usage=Usage(total_tokens=ranked.tokens), id=ranked.request_id,
                          meta=meta("1", len(body.documents), ranked.tokens),
                          results=rank(ranked.scores, body.documents, body.top_n, body.return_documents))


DIALECT = Dialect("jina", call, render, own_shape)
