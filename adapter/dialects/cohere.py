"""Cohere's rerank API, v2 (``POST /v2/rerank``): what ``cohere.ClientV2(base_url=...)`` and the tools built on
it (LangChain's and LlamaIndex's Cohere rerankers, Dify, n8n) send, and Cohere's ``meta``, which the v1 response
of the Jina dialect carries too.

Scores are jina-reranker-v3's cosines in [-1, 1], as on the other routes (Cohere's own are in [0, 1]; clients
rank by them). Bad input is Cohere's 400 with ``{"message": ...}``; other errors keep their status.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from adapter.dialects import Dialect, Ranked, RerankCall
from adapter.errors import ApiError, InvalidRequestError
from adapter.ranking import order
from adapter.schemas import ApiMeta, ApiVersion, BilledUnits, InputTokens, QueryBody, Text

# Cohere bills a search unit per query with up to 100 documents (documents are not split into chunks here).
DOCUMENTS_PER_SEARCH_UNIT = 100

EXAMPLE = {
    "summary": "Cohere's v2 API (cohere.ClientV2; the model named is accepted, the served model answers)",
    "value": {"model": "rerank-v3.5", "query": "How long is the Nile?", "top_n": 2, "max_tokens_per_doc": 512,
              "documents": ["The Nile is about 6,650 km long.", "Bread is made from flour, water and yeast.",
                            "The Nile flows north through eleven countries."]}}


class CohereBody(QueryBody):
    """Cohere's v2 rerank request: documents are strings."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [EXAMPLE["value"]]})

    documents: list[Text] = Field(min_length=1, description="The documents, as strings.")
    top_n: int | None = Field(None, ge=1, description="How many results to return (default: all).")
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="Each document is truncated to this many tokens (at most the model's 2,048).")
    model: str | None = Field(None, description="Accepted and ignored: the served model always answers.")


class CohereResult(BaseModel):
    index: int
    relevance_score: float


class CohereResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: ApiMeta


class CohereError(BaseModel):
    message: str


def meta(version: str, n_documents: int, tokens: int) -> ApiMeta:
    """Cohere's ``meta`` of one request to its API ``version`` ("1" or "2")."""
    return ApiMeta(api_version=ApiVersion(version=version),
                   billed_units=BilledUnits(search_units=math.ceil(n_documents / DOCUMENTS_PER_SEARCH_UNIT)),
                   tokens=InputTokens(input_tokens=tokens))


def call(body: CohereBody) -> RerankCall:
    return RerankCall(body.query, list(body.documents), body.top_n, max_tokens_per_doc=body.max_tokens_per_doc)


def render(body: CohereBody, ranked: Ranked) -> CohereResponse:
    return CohereResponse(id=ranked.request_id, meta=meta("2", len(body.documents), ranked.tokens),
                          results=[CohereResult(index=i, relevance_score=float(ranked.scores[i]))
                                   for i in order(ranked.scores, body.top_n)])


def error(error: ApiError) -> tuple[int, dict[str, str]]:
    """Cohere's error body; its status for bad input is 400."""
    status = 400 if error.kind == InvalidRequestError.kind else error.status_code
    return status, CohereError(message=error.message).model_dump()


DIALECT = Dialect("cohere", call, render, error)
