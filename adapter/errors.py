"""The adapter's errors as data: one exception type, ``ApiError``, and one place that builds its answer.

Each kind of failure is a subclass naming its HTTP status and the ``type`` of the JSON body
(``{"detail": message, "type": kind}``, the adapter's own shape, Jina's); ``error_response`` is the only code
that answers an error, in that shape or in a dialect's (adapter/dialects: Cohere's, TEI's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import JSONResponse

from adapter.asgi import Scope
from adapter.schemas import ErrorBody


class ApiError(Exception):
    """An answer other than 200. Subclasses fix ``status_code`` and ``kind``; a one-off may pass its own."""

    status_code = 500
    kind = "internal_error"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None, *, status_code: int | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        if status_code is not None:
            self.status_code = status_code
        if kind is not None:
            self.kind = kind


class InvalidRequestError(ApiError):
    """The request breaks the API's rules or a limit: the client's mistake."""

    status_code = 422
    kind = "invalid_request"


class UnauthorizedError(ApiError):
    status_code = 401
    kind = "unauthorized"


class TooLargeError(ApiError):
    status_code = 413
    kind = "too_large"


class OverloadedError(ApiError):
    """The adapter holds as many requests, or request bytes, as it is configured to: retry shortly."""

    status_code = 503
    kind = "overloaded"


class BackendError(ApiError):
    """The model server failed in a way none of the subclasses names."""

    status_code = 502
    kind = "backend_error"


class BackendUnavailableError(BackendError):
    """Triton is unreachable, stopping, or the model is not loaded or not ready: retry later."""

    status_code = 503
    kind = "backend_unavailable"


class BackendTimeoutError(BackendError):
    """The request's deadline passed before the model answered."""

    status_code = 504
    kind = "timeout"


class BackendRejectedError(BackendError):
    """Triton or the model found the request invalid: the client's mistake."""

    status_code = 422
    kind = "invalid_request"


# An error as a dialect answers it: the HTTP status and the JSON body.
ErrorShape = Callable[[ApiError], tuple[int, dict[str, Any]]]


def own_shape(error: ApiError) -> tuple[int, dict[str, Any]]:
    """The adapter's own error body, ``{"detail", "type"}``, at the error's status."""
    return error.status_code, ErrorBody(detail=error.message, type=error.kind).model_dump()


def error_response(error: ApiError, shape: ErrorShape = own_shape) -> JSONResponse:
    """The answer to ``error``: its status and headers, and its body in ``shape``."""
    status, body = shape(error)
    return JSONResponse(body, status_code=status, headers=error.headers)


# What a middleware answers a request it refuses before the body is read: the app counts the error and shapes it in
# the dialect of the request's path.
Rejection = Callable[[Scope, ApiError], JSONResponse]


def plain_rejection(_: Scope, error: ApiError) -> JSONResponse:
    return error_response(error)
