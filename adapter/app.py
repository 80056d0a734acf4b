"""The FastAPI app: Jina's rerank API (`/v1/rerank`) and the old service's (`/rerank`), backed by Triton."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from adapter import __version__
from adapter.backend import BackendError, TritonBackend
from adapter.body_limit import BodyLimitMiddleware
from adapter.metrics import Metrics, RequestMetricsMiddleware
from adapter.ranking import rank
from adapter.schemas import ErrorBody, RerankBody, RerankResponse, Usage
from adapter.settings import AdapterSettings

log = logging.getLogger("adapter")

RERANK_PATHS = frozenset({"/rerank", "/v1/rerank"})
ERROR_RESPONSES = {status: {"model": ErrorBody} for status in (401, 413, 422, 503, 504)}


class ApiError(Exception):
    def __init__(self, status_code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code, self.kind, self.message, self.headers = status_code, kind, message, headers


def error_json(status_code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "type": kind}, status_code=status_code, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(settings: AdapterSettings) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backend = TritonBackend(settings)
        try:
            yield
        finally:
            await app.state.backend.close()

    app = FastAPI(title="jina-reranker-v3 rerank API", version=__version__, lifespan=lifespan,
                  description="Jina-compatible rerank API in front of NVIDIA Triton (jina-reranker-v3, llama.cpp).")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       on_reject=lambda: metrics.errors.labels("too_large").inc())
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, paths=RERANK_PATHS)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def fail(status_code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return error_json(status_code, kind, message, headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return fail(exc.status_code, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return fail(422, "invalid_request", validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (not UTF-8, too deep)
            return fail(422, "invalid_request", "the request body is not valid UTF-8 JSON")
        kind = {413: "too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return fail(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    async def authorize(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        """With API_KEY set, require it as a bearer token; without, accept any token or none."""
        if not settings.api_key:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or invalid API key (Authorization: Bearer <key>)",
                           {"WWW-Authenticate": "Bearer"})

    def check_limits(body: RerankBody) -> None:
        if len(body.documents) > settings.max_documents:
            raise ApiError(422, "invalid_request",
                           f"documents: {len(body.documents)} documents, at most {settings.max_documents} allowed")
        if len(body.query) > settings.max_query_chars:
            raise ApiError(422, "invalid_request",
                           f"query: {len(body.query)} characters, at most {settings.max_query_chars} allowed")
        for i, text in enumerate(body.texts()):
            if len(text) > settings.max_document_chars:
                raise ApiError(422, "invalid_request", f"documents.{i}: {len(text)} characters, at most "
                                                       f"{settings.max_document_chars} allowed")

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
              responses=ERROR_RESPONSES, dependencies=[Depends(authorize)], summary="Rerank (Jina API)")
    @app.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True,
              responses=ERROR_RESPONSES, dependencies=[Depends(authorize)], summary="Rerank (old service's API)")
    async def rerank(body: RerankBody, request: Request) -> RerankResponse:
        started = time.perf_counter()
        check_limits(body)
        try:
            scores = await request.app.state.backend.rerank(body.query, body.texts(), body.instruction,
                                                            settings.request_timeout_s)
        except BackendError as exc:
            log.warning("rerank failed status=%d kind=%s documents=%d: %s", exc.status_code, exc.kind,
                        len(body.documents), exc)
            raise ApiError(exc.status_code, exc.kind, str(exc)) from None
        metrics.documents.inc(len(body.documents))
        metrics.tokens.inc(scores.tokens)
        log.info("rerank documents=%d tokens=%d latency_ms=%.0f", len(body.documents), scores.tokens,
                 (time.perf_counter() - started) * 1000)
        return RerankResponse(model=settings.model_name, usage=Usage(total_tokens=scores.tokens),
                              results=rank(scores.scores, body.documents, body.top_n, body.return_documents))

    @app.get("/health", summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Triton is reachable and the model is READY", responses={503: {"model": ErrorBody}})
    async def ready(request: Request) -> dict[str, str]:
        if not await request.app.state.backend.is_ready():
            raise ApiError(503, "backend_unavailable",
                           f"model {settings.triton_model} is not ready at {settings.triton_url}")
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
