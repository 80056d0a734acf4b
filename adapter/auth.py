"""ASGI middleware: the API key, checked from the request's headers before anything reads its body.

A FastAPI dependency would run only after the body was read and parsed: an unauthenticated 8 MiB request
cost ~24 MB before its 401. Here a request without the key is answered at once; the server discards its body.
"""

from __future__ import annotations

import hmac

from adapter.asgi import App, Receive, Scope, Send, header
from adapter.errors import Rejection, UnauthorizedError, plain_rejection


def authorized(authorization: bytes | None, api_key: str) -> bool:
    """Whether an Authorization header carries ``api_key`` as its bearer token (compared in constant time)."""
    scheme, _, token = (authorization or b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), api_key.encode())


class ApiKeyMiddleware:
    """Requests to ``paths`` need ``api_key`` as a bearer token (no key configured: any token or none)."""

    def __init__(self, app: App, api_key: str, paths: frozenset[str],
                 on_reject: Rejection = plain_rejection) -> None:
        self.app, self.api_key, self.paths, self.on_reject = app, api_key, paths, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.api_key or scope["path"] not in self.paths
                or authorized(header(scope, b"authorization"), self.api_key)):
            await self.app(scope, receive, send)
            return
        error = UnauthorizedError("missing or invalid API key (Authorization: Bearer <key>)",
                                  {"WWW-Authenticate": "Bearer"})
        await self.on_reject(scope, error)(scope, receive, send)
