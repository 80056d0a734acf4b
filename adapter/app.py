"""The FastAPI app: the rerank routes of every dialect (adapter/dialects), one code path behind them, and Triton.

``/v1/rerank``: Jina's API (LibreChat, Cohere's v1 clients); ``/v2/rerank``: Cohere's v2; ``/rerank``: the old
service's (Jina's body) or TEI's, told apart by the body's fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Discriminator, Tag
from starlette.exceptions import HTTPException

from adapter import __version__
from adapter.asgi import Scope
from adapter.auth import ApiKeyMiddleware
from adapter.backend import Backend, TritonBackend
from adapter.body_limit import BodyLimitMiddleware
from adapter.capacity import CapacityMiddleware
from adapter.dialects import Dialect, Ranked, RerankCall, cohere, jina, tei
from adapter.docs import install_docs
from adapter.errors import (
    ApiError,
    BackendError,
    BackendUnavailableError,
    InvalidRequestError,
    TooLargeError,
    error_response,
)
from adapter.metrics import Metrics, RequestMetricsMiddleware
from adapter.schemas import (
    JINA_EXAMPLE,
    LIBRECHAT_EXAMPLE,
    OLD_SERVICE_EXAMPLE,
    ErrorBody,
    RerankBody,
    RerankResponse,
)
from adapter.settings import AdapterSettings

log = logging.getLogger("adapter")

# The dialect of each rerank path, before its body is read (401, 413, 503 answers); /rerank's body may be TEI's.
PATH_DIALECTS: dict[str, Dialect[Any]] = {"/v1/rerank": jina.DIALECT, "/rerank": jina.DIALECT,
                                          "/v2/rerank": cohere.DIALECT}
RERANK_PATHS = frozenset(PATH_DIALECTS)
ERROR_STATUSES = (401, 413, 422, 500, 502, 503, 504)
COHERE_ERROR_STATUSES = (400, 401, 413, 500, 502, 503, 504)
# The example bodies of each rerank route on /docs, its own clients' first ("Try it out" starts from it).
DOCS_EXAMPLES = {
    "/v1/rerank": {"librechat": LIBRECHAT_EXAMPLE, "jina": JINA_EXAMPLE, "old_service": OLD_SERVICE_EXAMPLE},
    "/rerank": {"old_service": OLD_SERVICE_EXAMPLE, "tei": tei.EXAMPLE, "librechat": LIBRECHAT_EXAMPLE,
                "jina": JINA_EXAMPLE},
    "/v2/rerank": {"cohere": cohere.EXAMPLE}}
# /rerank's body: TEI's when it has ``texts`` and no ``documents``, else Jina's (validation errors name only it).
CompatBody = Annotated[Annotated[RerankBody, Tag(jina.DIALECT.name)] | Annotated[tei.TeiBody, Tag(tei.DIALECT.name)],
                       Discriminator(lambda raw: tei.DIALECT.name if tei.is_tei(raw) else jina.DIALECT.name)]
DIALECT_TAGS = frozenset({jina.DIALECT.name, tei.DIALECT.name})
# A caller's own deadline for this request (milliseconds), instead of REQUEST_TIMEOUT_S; and the most it may ask.
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
MAX_CALLER_TIMEOUT_S = 600.0
CallerTimeout = Annotated[str | None, Header(alias=TIMEOUT_HEADER, include_in_schema=False)]
# How many documents the model scored, of how many: "64/489". Fewer than all: the rest were ranked lexically.
SCORED_HEADER = "X-Rerank-Scored"
# The status nginx logs for a client that left before its answer; nobody receives it.
CLIENT_GONE = 499

# HTTP errors of the framework (unknown path, wrong method) by the ``type`` of their body.
HTTP_ERROR_KINDS = {413: TooLargeError.kind, 404: "not_found", 405: "method_not_allowed"}

T = TypeVar("T")
BackendFactory = Callable[[AdapterSettings], Backend]


class ClientDisconnectedError(Exception):
    """The HTTP client closed its connection before the answer was ready."""


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body" and p not in DIALECT_TAGS) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def path_dialect(path: str) -> Dialect[Any]:
    """The dialect of a path before its body is read: its route's, the adapter's own shape (Jina's) elsewhere."""
    return PATH_DIALECTS.get(path, jina.DIALECT)


def dialect_of(request: Request, body: object = None) -> Dialect[Any]:
    """The dialect to answer ``request`` in: the one its route chose from its body, else its path's (TEI's for a
    TEI-shaped ``body`` on /rerank); the adapter's own shape (Jina's) elsewhere."""
    chosen = getattr(request.state, "dialect", None)
    if chosen is not None:
        return chosen
    if request.url.path == "/rerank" and tei.is_tei(body):
        return tei.DIALECT
    return path_dialect(request.url.path)


def error_responses(error_body: Any, statuses: tuple[int, ...] = ERROR_STATUSES) -> dict[int | str, dict[str, Any]]:
    """OpenAPI's error answers of a route: ``error_body`` at each status."""
    return {status: {"model": error_body} for status in statuses}


def caller_timeout(header: str | None, default: float) -> float:
    """Seconds this request may take: the caller's header when sent and valid, else ``default``."""
    if header is None:
        return default
    try:
        milliseconds = float(header)
    except ValueError:
        milliseconds = math.nan
    if not 0 < milliseconds <= MAX_CALLER_TIMEOUT_S * 1000:
        raise InvalidRequestError(f"{TIMEOUT_HEADER}: expected milliseconds in (0, {MAX_CALLER_TIMEOUT_S * 1000:.0f}], "
                                  f"got {header!r}")
    return milliseconds / 1000


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it at once if the client disconnects first (its body is already read).

    Cancelling the Triton call cancels it in Triton too (gRPC), and the model stops computing it.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # let the cancellation reach the Triton call before answering
    raise ClientDisconnectedError


def create_app(settings: AdapterSettings, backend_factory: BackendFactory = TritonBackend) -> FastAPI:
    """The app; ``backend_factory(settings)`` makes its backend at start-up, inside the running event loop."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backend = backend_factory(settings)
        try:
            yield
        finally:
            await app.state.backend.close()

    app = FastAPI(title="jina-reranker-v3 rerank API", version=__version__, lifespan=lifespan,
                  description="Jina-compatible rerank API in front of NVIDIA Triton (jina-reranker-v3, llama.cpp).",
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)  # /docs: install_docs
    install_docs(app, DOCS_EXAMPLES, RERANK_PATHS if settings.api_key else ())

    def count(error: ApiError) -> None:
        metrics.errors.labels(error.kind).inc()

    def reject(scope: Scope, error: ApiError) -> JSONResponse:
        """A middleware's refusal, before the body is read: counted, in the dialect of the request's path."""
        count(error)
        return error_response(error, path_dialect(scope["path"]).error)

    # Outermost last: CORS, metrics, then the key, the body's size and the capacity, all before the body is read.
    app.add_middleware(CapacityMiddleware, paths=RERANK_PATHS, max_requests=settings.max_concurrent_requests,
                       max_bytes=settings.max_buffered_bytes, max_body_bytes=settings.max_body_bytes, on_reject=reject)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, on_reject=reject)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, paths=RERANK_PATHS, on_reject=reject)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, paths=RERANK_PATHS)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError, body: object = None) -> JSONResponse:
        """Every error answer, in the request's dialect: the framework's own errors below come here as ApiErrors."""
        count(exc)
        return error_response(exc, dialect_of(request, body).error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not the client's mistake: still the JSON body (Starlette then re-raises it, and uvicorn logs it
        with its traceback)."""
        return await api_error(request, ApiError(f"the adapter failed unexpectedly ({type(exc).__name__})"))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await api_error(request, InvalidRequestError(validation_message(exc)), exc.body)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (not UTF-8, too deep)
            return await api_error(request, InvalidRequestError("the request body is not valid UTF-8 JSON"))
        return await api_error(request, ApiError(str(exc.detail), exc.headers, status_code=exc.status_code,
                                                 kind=HTTP_ERROR_KINDS.get(exc.status_code, "http_error")))

    def check_limits(call: RerankCall, field: str) -> None:
        """The adapter's limits; ``field``: what the dialect calls its documents, for the messages."""
        if len(call.documents) > settings.max_documents:
            raise InvalidRequestError(
                f"{field}: {len(call.documents)} documents, at most {settings.max_documents} allowed")
        if len(call.query) > settings.max_query_chars:
            raise InvalidRequestError(
                f"query: {len(call.query)} characters, at most {settings.max_query_chars} allowed")
        for i, text in enumerate(call.documents):
            if len(text) > settings.max_document_chars:
                raise InvalidRequestError(
                    f"{field}.{i}: {len(text)} characters, at most {settings.max_document_chars} allowed")

    async def answer(dialect: Dialect[Any], body: BaseModel, request: Request, response: Response,
                     timeout_ms: str | None) -> Any:
        """The one rerank code path of every dialect: limits, deadline, the model, metrics, ``X-Rerank-Scored``."""
        started = time.perf_counter()
        request.state.dialect = dialect  # its errors from here on are answered in its shape
        call = dialect.call(body)
        check_limits(call, dialect.documents_field)
        timeout = caller_timeout(timeout_ms, settings.request_timeout_s)
        budgeted = settings.rerank_mode == "budgeted"
        n_docs = len(call.documents)
        try:
            scores = await unless_disconnected(request, request.app.state.backend.rerank(
                call.query, call.documents, call.instruction, timeout, call.top_n, budgeted,
                max_doc_tokens=call.max_tokens_per_doc))
        except ClientDisconnectedError:
            log.info("rerank abandoned by the client dialect=%s documents=%d after_ms=%.0f", dialect.name, n_docs,
                     (time.perf_counter() - started) * 1000)
            return Response(status_code=CLIENT_GONE)
        except BackendError as exc:
            log.warning("rerank failed status=%d kind=%s dialect=%s documents=%d: %s", exc.status_code, exc.kind,
                        dialect.name, n_docs, exc)
            raise
        n_scored = scores.n_scored
        metrics.documents.inc(n_docs)
        metrics.tokens.inc(scores.tokens)
        metrics.ranked.labels("model").inc(n_scored)
        metrics.ranked.labels("lexical").inc(n_docs - n_scored)
        if n_scored < n_docs:
            metrics.budgeted.inc()
        response.headers[SCORED_HEADER] = f"{n_scored}/{n_docs}"
        log.info("rerank dialect=%s documents=%d scored=%d/%d tokens=%d timeout_s=%g latency_ms=%.0f", dialect.name,
                 n_docs, n_scored, n_docs, scores.tokens, timeout, (time.perf_counter() - started) * 1000)
        return dialect.render(body, Ranked(scores.scores, scores.tokens, settings.model_name, uuid.uuid4().hex))

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
              responses=error_responses(ErrorBody), summary="Rerank (Jina's API; Cohere's v1 clients too)")
    async def rerank(body: RerankBody, request: Request, response: Response, timeout_ms: CallerTimeout = None) -> Any:
        return await answer(jina.DIALECT, body, request, response, timeout_ms)

    @app.post("/rerank", response_model=RerankResponse | tei.TeiResponse, response_model_exclude_none=True,
              responses=error_responses(ErrorBody | tei.TeiError),
              summary="Rerank (the old service's API, or TEI's: told apart by documents or texts)")
    async def rerank_compat(body: Annotated[CompatBody, Body()], request: Request, response: Response,
                            timeout_ms: CallerTimeout = None) -> Any:
        dialect = tei.DIALECT if isinstance(body, tei.TeiBody) else jina.DIALECT
        return await answer(dialect, body, request, response, timeout_ms)

    @app.post("/v2/rerank", response_model=cohere.CohereResponse,
              responses=error_responses(cohere.CohereError, COHERE_ERROR_STATUSES), summary="Rerank (Cohere's v2 API)")
    async def rerank_v2(body: cohere.CohereBody, request: Request, response: Response,
                        timeout_ms: CallerTimeout = None) -> Any:
        return await answer(cohere.DIALECT, body, request, response, timeout_ms)

    @app.get("/health", summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Triton is reachable and the model is READY", responses={503: {"model": ErrorBody}})
    async def ready(request: Request) -> dict[str, str]:
        if not await request.app.state.backend.is_ready():
            raise BackendUnavailableError(f"model {settings.triton_model} is not ready at {settings.triton_url}")
        return {"status": "ready"}

    @app.get("/info", summary="Served model, backend, limits and version")
    async def info() -> dict[str, object]:
        return {"model": settings.model_name, "version": __version__,
                "backend": {"kind": "triton", "protocol": settings.triton_protocol, "url": settings.triton_url,
                            "model": settings.triton_model},
                "limits": settings.public_limits(), "auth": bool(settings.api_key)}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
