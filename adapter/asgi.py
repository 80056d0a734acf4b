"""The ASGI interface's types, for the adapter's own middlewares, and what they share: a request's declared length."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (``name`` in lower case, as servers pass it), or None."""
    return dict(scope.get("headers", [])).get(name)


def declared_length(scope: Scope) -> int | None:
    """The body's length as its Content-Length declares it; None when it declares none (chunked) or nonsense.

    The server holds a body to its declared length: the bytes past it are the connection's next request.
    """
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None
