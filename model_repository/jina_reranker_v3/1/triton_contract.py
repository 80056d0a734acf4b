"""The model's tensor contract, as plain NumPy functions (no Triton import), so it is testable alone.

Inputs (every tensor carries the leading batch dimension; one row = one rerank):
  QUERY        BYTES [B, 1]  UTF-8
  DOCUMENTS    BYTES [B, n]  UTF-8, one element per document (ragged across requests)
  INSTRUCTION  BYTES [B, 1]  UTF-8, optional
Outputs:
  SCORES          FP32  [B, n]     cosine relevance in [-1, 1], input order
  TOKENS          INT64 [B, 1]     tokens decoded for the row (usage.total_tokens)
  SCORED          BOOL  [B, n]     true where the model scored the document, false where it was ranked lexically
  DOC_EMBEDDINGS  FP32  [B, n, d]  projected document embeddings, only when requested (zeros where not SCORED)
Request parameters (all optional):
  rerank_mode       "budgeted" (default) or "exact"
  top_n             the model scores at least this many documents whenever any model work fits (default 1)
  deadline_unix_ms  when the answer is due, as Unix time in milliseconds; the request's ``timeout`` counts too
  max_tokens_per_doc  each document is truncated to this many tokens (default and upper bound: the engine's
                    max_doc_tokens); the Cohere dialect's ``max_tokens_per_doc``

Deadlines: a budgeted request that cannot be scored whole before its deadline (the earlier of
``deadline_unix_ms`` and the request's timeout, counted from when the model receives it) is answered
in time with the model's scores for the best lexical candidates and a lexical ranking below them. An
exact request is scored whole or, past its timeout, cancelled.

Errors: an error response's message starts with the engine's error kind in brackets, ``[invalid_input]
documents is empty`` (``error_message``), so that a client tells the cause from that marker, never from the
wording after it. Kinds: invalid_input (the caller's mistake), cancelled (the caller gave up or its deadline
passed), model_load (the model files cannot be served), internal (anything else).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence

import numpy as np

from rerank_engine import EngineConfig, RerankRequest, RerankResult
from rerank_engine.config import RunnerOptions
from rerank_engine.errors import InvalidInputError, ModelLoadError, RequestCancelledError

QUERY, DOCUMENTS, INSTRUCTION = "QUERY", "DOCUMENTS", "INSTRUCTION"
SCORES, TOKENS, SCORED, DOC_EMBEDDINGS = "SCORES", "TOKENS", "SCORED", "DOC_EMBEDDINGS"
MODES = ("budgeted", "exact")
# Environment variables that name the model files; they take precedence over the config's parameters.
MODEL_ENV, PROJECTOR_ENV = "RERANKER_MODEL", "RERANKER_PROJECTOR"
# The engine's error kinds, as error messages carry them (a wire format: the adapter, which cannot import this
# module, parses it in adapter/backend.py; tests/test_backend_errors.py checks that the two agree).
INVALID_INPUT, CANCELLED, MODEL_LOAD, INTERNAL_ERROR = "invalid_input", "cancelled", "model_load", "internal"
ERROR_KINDS: dict[type[Exception], str] = {InvalidInputError: INVALID_INPUT, RequestCancelledError: CANCELLED,
                                           ModelLoadError: MODEL_LOAD}


def error_kind(error: Exception) -> str:
    """The engine's kind of ``error``; ``internal`` for any exception the engine does not name."""
    return next((kind for cls, kind in ERROR_KINDS.items() if isinstance(error, cls)), INTERNAL_ERROR)


def error_message(error: Exception) -> str:
    """``error`` as the message of an error response: ``[kind] text``."""
    return f"[{error_kind(error)}] {error}"


def decode_texts(array: np.ndarray, name: str) -> list[str]:
    """UTF-8 bytes elements to str; anything else is the client's error."""
    texts = []
    for i, item in enumerate(array.reshape(-1)):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, bytes | bytearray):
            try:
                texts.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"{name}[{i}] is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                                        ) from None
        else:
            raise InvalidInputError(f"{name}[{i}] is not text")
    return texts


@dataclasses.dataclass(frozen=True)
class Budget:
    """When a request's answer is due (time.monotonic(); None: score it whole), its minimum model work, and its
    cap on each document's tokens (None: the engine's)."""

    deadline: float | None = None
    min_scored: int = 1
    max_doc_tokens: int | None = None


def budget(parameters_json: str, timeout_us: int, now: float, now_unix: float) -> Budget:
    """The Budget of a request from its parameters (Triton's JSON text) and timeout, read at ``now``."""
    try:
        parameters = json.loads(parameters_json or "{}")
    except json.JSONDecodeError:
        raise InvalidInputError("request parameters are not valid JSON") from None
    mode = parameters.get("rerank_mode", "budgeted")
    if mode not in MODES:
        raise InvalidInputError(f"parameter rerank_mode must be one of {', '.join(MODES)}, not {mode!r}")
    top_n = parameters.get("top_n", 1)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise InvalidInputError(f"parameter top_n must be a positive integer, not {top_n!r}")
    max_doc_tokens = parameters.get("max_tokens_per_doc")
    if max_doc_tokens is not None and (isinstance(max_doc_tokens, bool) or not isinstance(max_doc_tokens, int)
                                       or max_doc_tokens < 1):
        raise InvalidInputError(f"parameter max_tokens_per_doc must be a positive integer, not {max_doc_tokens!r}")
    due = parameters.get("deadline_unix_ms")
    if due is not None and (isinstance(due, bool) or not isinstance(due, int | float)):
        raise InvalidInputError(f"parameter deadline_unix_ms must be a number, not {due!r}")
    if mode == "exact":
        return Budget(None, top_n, max_doc_tokens)
    deadlines = [now + timeout_us / 1e6] if timeout_us > 0 else []
    if due is not None:
        deadlines.append(now + due / 1000 - now_unix)
    return Budget(min(deadlines) if deadlines else None, top_n, max_doc_tokens)


def rows(query: np.ndarray, documents: np.ndarray, instruction: np.ndarray | None,
         return_embeddings: bool, request_budget: Budget = Budget()) -> list[RerankRequest]:
    """One RerankRequest per batch row of a Triton request."""
    if query.ndim != 2 or query.shape[1] != 1:
        raise InvalidInputError(f"{QUERY} must have shape [batch, 1], got {list(query.shape)}")
    batch = query.shape[0]
    if documents.ndim != 2 or documents.shape[0] != batch:
        raise InvalidInputError(f"{DOCUMENTS} must have shape [batch, n] with batch {batch}, "
                                f"got {list(documents.shape)}")
    if documents.shape[1] == 0:
        raise InvalidInputError(f"{DOCUMENTS} is empty: give at least one document")
    queries = decode_texts(query, QUERY)
    docs = [decode_texts(documents[b], DOCUMENTS) for b in range(batch)]
    instructions: list[str | None] = [None] * batch
    if instruction is not None:
        if instruction.shape != (batch, 1):
            raise InvalidInputError(f"{INSTRUCTION} must have shape [batch, 1], got {list(instruction.shape)}")
        instructions = [text or None for text in decode_texts(instruction, INSTRUCTION)]
    return [RerankRequest(q, d, i, return_embeddings, request_budget.deadline, request_budget.min_scored,
                          request_budget.max_doc_tokens) for q, d, i in zip(queries, docs, instructions, strict=True)]


def outputs(results: Sequence[RerankResult], return_embeddings: bool) -> dict[str, np.ndarray]:
    """Output tensors for one Triton request from its rows' results."""
    tensors = {
        SCORES: np.stack([r.scores for r in results]).astype(np.float32),
        TOKENS: np.array([[r.tokens] for r in results], dtype=np.int64),
        SCORED: np.stack([np.ones(len(r.scores), dtype=bool) if r.scored is None else r.scored for r in results]),
    }
    if return_embeddings:
        tensors[DOC_EMBEDDINGS] = np.stack([r.doc_embeddings for r in results]).astype(np.float32)
    return tensors


class Batch:
    """The rows of one ``execute()`` call, and which Triton request each belongs to.

    Rows of all requests are scored together; ``complete`` says when a request
    has all its rows back, so its response can be sent without waiting for the rest.
    """

    def __init__(self) -> None:
        self.rows: list[RerankRequest] = []
        self._owner: list[int] = []
        self._want: dict[int, bool] = {}
        self._results: dict[int, dict[int, RerankResult]] = {}
        self._size: dict[int, int] = {}

    def add(self, request_index: int, request_rows: Sequence[RerankRequest], return_embeddings: bool) -> None:
        self._owner += [request_index] * len(request_rows)
        self._size[request_index] = len(request_rows)
        self._want[request_index] = return_embeddings
        self._results[request_index] = {}
        self.rows += request_rows

    def owner(self, row: int) -> int:
        return self._owner[row]

    def complete(self, row: int, result: RerankResult | Exception
                 ) -> tuple[int, dict[str, np.ndarray] | Exception] | None:
        """Record a row's result; return ``(request index, outputs or error)`` once the request is done."""
        owner = self._owner[row]
        if owner not in self._results:  # already answered with an error
            return None
        if isinstance(result, Exception):
            del self._results[owner]
            return owner, result
        done = self._results[owner]
        done[row] = result
        if len(done) < self._size[owner]:
            return None
        del self._results[owner]
        return owner, outputs([done[r] for r in sorted(done)], self._want[owner])

    def pending(self) -> list[int]:
        """Requests not answered yet."""
        return sorted(self._results)


def _coerce(value: str, kind: object, name: str) -> object:
    if isinstance(kind, types.UnionType):  # "int | None" style annotations
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"parameter {name}={value!r} is not a boolean")
        return value.strip().lower() in ("true", "1", "yes", "on")
    if kind is int:
        return int(value)
    return value


def engine_config(parameters: Mapping[str, Mapping[str, str]], instance_kind: str, device_id: int,
                  environ: Mapping[str, str] = os.environ) -> EngineConfig:
    """EngineConfig from the model config's ``parameters`` (string values) and the instance placement.

    A GPU instance binds llama.cpp to its own device (``main_gpu``), so ``count: 2``
    on two GPUs really uses both.
    """
    values = {key: spec["string_value"] for key, spec in parameters.items()}
    model = environ.get(MODEL_ENV) or values.pop("model_path", "")
    projector = environ.get(PROJECTOR_ENV) or values.pop("projector_path", "")
    for key in ("model_path", "projector_path"):
        values.pop(key, None)
    hints = {**typing.get_type_hints(RunnerOptions), **typing.get_type_hints(EngineConfig)}
    known = {f.name for f in dataclasses.fields(RunnerOptions)} | {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown model parameters: {', '.join(unknown)}")
    options = {key: _coerce(value, hints[key], key) for key, value in values.items()}
    if instance_kind.upper().endswith("GPU"):
        options["main_gpu"] = device_id
    else:
        options["n_gpu_layers"] = 0
    return EngineConfig.from_options(model, projector, **options)
