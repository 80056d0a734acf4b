"""Request and response bodies of the rerank API (Jina's and the old fastembed service's)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text ({exc.reason} at character {exc.start})") from None
    return text


class TextDocument(BaseModel):
    """A document as an object (Jina's API); other keys are kept and echoed back."""

    model_config = ConfigDict(extra="allow")
    text: StrictStr

    @field_validator("text")
    @classmethod
    def _text_unicode(cls, text: str) -> str:
        return _valid_unicode(text)


# Request bodies as each kind of client sends them (shared/notes: clients): the named examples of /docs, whose
# "Try it out" sends them as they are, and the JSON schema's example.
JINA_EXAMPLE = {
    "summary": "Jina's API: documents as strings or {\"text\": ...} objects",
    "value": {"model": "jina-reranker-v3", "query": "What is a reranker?", "top_n": 2, "return_documents": True,
              "documents": ["A reranker orders passages by relevance to a query.", "Bananas are yellow.",
                            {"text": "Rerankers refine search results."}]}}
LIBRECHAT_EXAMPLE = {
    "summary": "LibreChat's web search (Jina's API, the v2 model name; the served model answers)",
    "value": {"model": "jina-reranker-v2-base-multilingual", "query": "How long is the Nile?", "top_n": 5,
              "return_documents": True,
              "documents": ["The Nile is about 6,650 km long.", "Bread is made from flour, water and yeast.",
                            "The Nile flows north through eleven countries.", "Mount Everest is 8,849 m high.",
                            "The Amazon carries more water than any other river.", "Chess is played on 64 squares."]}}
OLD_SERVICE_EXAMPLE = {
    "summary": "The old fastembed service's API (batch_size accepted and ignored)",
    "value": {"model": "jinaai/jina-reranker-v2-base-multilingual", "query": "How long is the Nile?",
              "documents": ["The Nile is about 6,650 km long.", "Bread is made from flour, water and yeast.",
                            "The Nile flows north through eleven countries."],
              "batch_size": 32, "top_n": 2, "return_documents": True}}


class RerankBody(BaseModel):
    """Fields the clients send; unknown fields are ignored for compatibility."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [JINA_EXAMPLE["value"]]})

    query: StrictStr = Field(description="The search query; must contain non-whitespace text.")
    documents: list[StrictStr | TextDocument] = Field(min_length=1, description="Strings or {\"text\": ...} objects.")
    top_n: int | None = Field(None, ge=1, description="How many results to return (default: all).")
    return_documents: bool = Field(True, description="Include each document in its result.")
    model: str | None = Field(None, description="Accepted and ignored: the served model always answers.")
    batch_size: int | None = Field(None, description="Accepted for compatibility with the old service; ignored.")
    instruction: StrictStr | None = Field(None, description="Optional ranking instruction for the model.")

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("query must contain non-whitespace text")
        return _valid_unicode(query)

    @field_validator("instruction")
    @classmethod
    def _instruction_unicode(cls, instruction: str | None) -> str | None:
        return None if instruction is None else _valid_unicode(instruction)

    @field_validator("documents")
    @classmethod
    def _documents_unicode(cls, documents: list[str | TextDocument]) -> list[str | TextDocument]:
        for i, doc in enumerate(documents):
            if isinstance(doc, str):
                try:
                    _valid_unicode(doc)
                except ValueError as exc:
                    raise ValueError(f"document {i} is {exc}") from None
        return documents

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: str | TextDocument | None = None


class Usage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "jina-reranker-v3", "object": "list", "usage": {"total_tokens": 98}, "results": [
            {"index": 0, "relevance_score": 0.41, "document": "The Nile is about 6,650 km long."},
            {"index": 2, "relevance_score": 0.27, "document": "The Nile flows north through eleven countries."}]}]})

    model: str
    object: Literal["list"] = "list"
    usage: Usage
    results: list[RerankResult]


class ErrorBody(BaseModel):
    detail: str
    type: str
