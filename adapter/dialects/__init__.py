"""The rerank APIs the adapter speaks, one module each: Jina's (and the old service's), Cohere's v2, TEI's.

A dialect only parses and renders: its request body becomes a ``RerankCall`` (what the model is asked), the
model's ``Ranked`` answer becomes its response body, and an ``ApiError`` its error body. Everything between
(limits, deadline, the Triton call, ``X-Rerank-Scored``, metrics) is one code path in adapter/app.py, so every
dialect gets the same behaviour. Dialect modules are pure: no I/O, no app state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from adapter.errors import ErrorShape

Body = TypeVar("Body", bound=BaseModel)


@dataclasses.dataclass(frozen=True)
class RerankCall:
    """What one request asks of the model, whatever its dialect."""

    query: str
    documents: list[str]
    top_n: int | None = None
    instruction: str | None = None
    max_tokens_per_doc: int | None = None  # each document truncated to this many tokens (the engine tokenises)


@dataclasses.dataclass(frozen=True)
class Ranked:
    """The model's answer to a RerankCall, as the dialects render it."""

    scores: Sequence[float]  # input order
    tokens: int
    model: str  # the served model's name
    request_id: str  # unique per request (Cohere's ``id``)


@dataclasses.dataclass(frozen=True)
class Dialect(Generic[Body]):
    name: str
    call: Callable[[Body], RerankCall]
    render: Callable[[Body, Ranked], Any]
    error: ErrorShape
    documents_field: str = "documents"  # the body's name for its documents, as error messages name it
