"""Hugging Face text-embeddings-inference's rerank API (``POST /rerank`` with ``texts``): what RAGFlow, Haystack
and other TEI clients send, answered as TEI answers: a bare list of ``{"index", "score", "text"?}``, best first.

Scores: with ``raw_scores`` the model's cosines in [-1, 1]; without (TEI's default) mapped to TEI's [0, 1] by
(cos + 1) / 2. TEI applies a sigmoid to a cross-encoder's logit, but a cosine is no logit: its sigmoid would
squeeze every score into [0.27, 0.73]. The linear map keeps the whole [0, 1] range, the order and the spacing.
``truncate`` is accepted; documents are always truncated at the model's limit (2,048 tokens), never refused.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, RootModel

from adapter.dialects import Dialect, Ranked, RerankCall
from adapter.errors import ApiError
from adapter.ranking import order
from adapter.schemas import QueryBody, Text

EXAMPLE = {
    "summary": "text-embeddings-inference's API (texts; scores mapped to [0, 1] unless raw_scores)",
    "value": {"query": "How long is the Nile?", "return_text": True, "raw_scores": False, "truncate": True,
              "texts": ["The Nile is about 6,650 km long.", "Bread is made from flour, water and yeast.",
                        "The Nile flows north through eleven countries."]}}
# TEI's error_type for each of the adapter's error kinds; the kinds TEI has no name for keep theirs.
ERROR_TYPES = {"invalid_request": "validation", "too_large": "validation", "overloaded": "overloaded",
               "backend_unavailable": "unhealthy", "backend_error": "backend", "timeout": "backend"}


class TeiBody(QueryBody):
    """TEI's rerank request: told apart from Jina's on ``/rerank`` by ``texts`` where Jina's has ``documents``."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [EXAMPLE["value"]]})

    texts: list[Text] = Field(min_length=1, description="The documents, as strings.")
    raw_scores: bool = Field(False, description="The model's cosines in [-1, 1]; false: mapped to [0, 1].")
    return_text: bool = Field(False, description="Include each text in its result.")
    truncate: bool = Field(False, description="Accepted: texts are always truncated at the model's limit.")


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class TeiResponse(RootModel[list[TeiRank]]):
    pass


class TeiError(BaseModel):
    error: str
    error_type: str


def is_tei(raw: object) -> bool:
    """Whether a ``/rerank`` body is TEI's: ``texts`` and no ``documents``."""
    return isinstance(raw, dict) and "texts" in raw and "documents" not in raw


def score(cosine: float, raw: bool) -> float:
    return float(cosine) if raw else (float(cosine) + 1) / 2


def call(body: TeiBody) -> RerankCall:
    return RerankCall(body.query, list(body.texts))


def render(body: TeiBody, ranked: Ranked) -> TeiResponse:
    return TeiResponse([TeiRank(index=i, score=score(ranked.scores[i], body.raw_scores),
                                text=body.texts[i] if body.return_text else None)
                        for i in order(ranked.scores, None)])


def error(error: ApiError) -> tuple[int, dict[str, str]]:
    return error.status_code, TeiError(error=error.message, error_type=ERROR_TYPES.get(error.kind, error.kind)
                                       ).model_dump()


DIALECT = Dialect("tei", call, render, error, documents_field="texts")
