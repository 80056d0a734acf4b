"""ASGI middleware: a bound on the requests the adapter holds at once and on their bodies' bytes; a 503 past it.

Without one, ~20 concurrent 8 MiB uploads got the adapter killed at a 1 GiB memory limit, together with every
request it was answering. A request is admitted before its body is read, and holds what its body may occupy
until it is answered (``body_bound``). Refused requests are not read: the server discards their bodies.
"""

from __future__ import annotations

from adapter.asgi import App, Receive, Scope, Send, declared_length, header
from adapter.errors import OverloadedError, Rejection, plain_rejection

RETRY_AFTER_S = 1


def body_bound(scope: Scope, max_body_bytes: int) -> int:
    """The most a request's body can be: its Content-Length; ``max_body_bytes`` when chunked (the body limit stops
    it there); with neither, HTTP/1.1 gives it no body."""
    declared = declared_length(scope)
    if declared is not None:
        return declared
    return max_body_bytes if header(scope, b"transfer-encoding") is not None else 0


class CapacityMiddleware:
    """At most ``max_requests`` requests to ``paths`` at once, holding at most ``max_bytes`` of bodies together."""

    def __init__(self, app: App, paths: frozenset[str], max_requests: int, max_bytes: int, max_body_bytes: int,
                 on_reject: Rejection = plain_rejection) -> None:
        self.app, self.paths, self.on_reject = app, paths, on_reject
        self.max_requests, self.max_bytes, self.max_body_bytes = max_requests, max_bytes, max_body_bytes
        self.requests = 0
        self.bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        size = body_bound(scope, self.max_body_bytes)
        if self.requests >= self.max_requests:
            await self._reject(f"{self.requests} requests in progress, at most {self.max_requests}", scope, receive,
                               send)
            return
        if self.bytes + size > self.max_bytes:
            await self._reject(f"{self.bytes} bytes of request bodies held, at most {self.max_bytes}", scope,
                               receive, send)
            return
        self.requests += 1
        self.bytes += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.requests -= 1
            self.bytes -= size

    async def _reject(self, reason: str, scope: Scope, receive: Receive, send: Send) -> None:
        error = OverloadedError(f"the adapter is at capacity ({reason}); retry shortly",
                                {"Retry-After": str(RETRY_AFTER_S)})
        await self.on_reject(scope, error)(scope, receive, send)
