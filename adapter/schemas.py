"""Request and response bodies of Jina's rerank API (and the old fastembed service's), and what the dialects share:
the query's checks, checked text, and Cohere's ``meta`` (which Jina's responses carry too, for Cohere's v1 clients).

Cohere's v2 bodies are in adapter/dialects/cohere.py, TEI's in adapter/dialects/tei.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, field_validator


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text ({exc.reason} at character {exc.start})") from None
    return text


# A string that is valid Unicode (JSON can carry lone surrogates, which cannot be encoded for the model).
Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


class QueryBody(BaseModel):
    """The query every dialect sends; unknown fields are ignored for compatibility."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr = Field(description="The search query; must contain non-whitespace text.")

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("query must contain non-whitespace text")
        return _valid_unicode(query)


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


class RerankBody(QueryBody):
    """Fields Jina's clients and the old service's send."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [JINA_EXAMPLE["value"]]})

    documents: list[StrictStr | TextDocument] = Field(min_length=1, description="Strings or {\"text\": ...} objects.")
    top_n: int | None = Field(None, ge=1, description="How many results to return (default: all).")
    return_documents: bool = Field(True, description="Include each document in its result.")
    model: str | None = Field(None, description="Accepted and ignored: the served model always answers.")
    batch_size: int | None = Field(None, description="Accepted for compatibility with the old service; ignored.")
    instruction: StrictStr | None = Field(None, description="Optional ranking instruction for the model.")

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


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class InputTokens(BaseModel):
    input_tokens: int


class ApiMeta(BaseModel):
    """Cohere's ``meta``: the API's version, the search units a request counts as, and the tokens it used."""

    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: InputTokens


class RerankResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "jina-reranker-v3", "object": "list", "usage": {"total_tokens": 98}, "results": [
            {"index": 0, "relevance_score": 0.41, "document": "The Nile is about 6,650 km long."},
            {"index": 2, "relevance_score": 0.27, "document": "The Nile flows north through eleven countries."}]}]})

    model: str
    object: Literal["list"] = "list"
    usage: Usage
    results: list[RerankResult]
    id: str | None = Field(None, description="Unique per request (Cohere's v1 clients read it).")
    meta: ApiMeta | None = Field(None, description="Cohere's v1 meta: API version, billed units, tokens.")


class ErrorBody(BaseModel):
    detail: str
    type: str
