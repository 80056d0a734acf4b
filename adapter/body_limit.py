"""ASGI middleware: refuse request bodies over a size limit with a JSON 413, before parsing them.

Checks the declared Content-Length first, then counts what actually arrives
(chunked bodies declare nothing).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from adapter.asgi import App, Message, Receive, Scope, Send, declared_length
from adapter.errors import Rejection, TooLargeError, plain_rejection


class BodyTooLarge(HTTPException):
    """An HTTPException, so that frameworks which wrap body-reading errors pass it through."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than {max_bytes} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: App, max_bytes: int, on_reject: Rejection = plain_rejection) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = TooLargeError(BodyTooLarge(self.max_bytes).detail, {"Connection": "close"})
        await self.on_reject(scope, error)(scope, receive, send)
