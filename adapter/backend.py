"""The adapter's only way to Triton: one reused asyncio client (gRPC or HTTP), errors sorted by cause.

Clients never see Triton's details as 500s: an unreachable or not-ready model is a
503 (and recovers by itself when Triton is back), a missed deadline a 504, a request
Triton rejects as malformed a 422, anything else Triton reports a 502.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from adapter.settings import AdapterSettings

# Reconnect quickly after Triton restarts (gRPC's default backoff grows to two minutes).
GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
# A CANCELLED sent at the deadline can be read a moment before asyncio's own timer for it has fired.
DEADLINE_SLACK_S = 0.05
# A budgeted request is due at its deadline; this much later the adapter stops waiting (a 504). Triton's own
# timeout is set to the same point, so it never drops a request the model could still answer in time.
BUDGETED_GRACE_S = 0.5
# "is not healthy": a Python-backend process died; the stub watchdog reloads the model within seconds.
UNAVAILABLE_MARKERS = ("unknown model", "not ready", "no available versions", "is not found", "is not healthy")


class BackendError(Exception):
    status_code = 502
    kind = "backend_error"


class BackendUnavailableError(BackendError):
    status_code = 503
    kind = "backend_unavailable"


class BackendTimeoutError(BackendError):
    status_code = 504
    kind = "timeout"


class BackendRejectedError(BackendError):
    """Triton found the request malformed: the client's mistake."""

    status_code = 422
    kind = "invalid_request"


@dataclasses.dataclass(frozen=True)
class Scores:
    scores: np.ndarray  # input order
    tokens: int
    scored: np.ndarray  # bool, input order: True where the model scored the document, False where ranked lexically

    @property
    def n_scored(self) -> int:
        return int(self.scored.sum())


class TritonBackend:
    """Create inside the running event loop (the asyncio clients bind to it); ``close()`` at shutdown."""

    def __init__(self, settings: AdapterSettings) -> None:
        self.settings = settings
        self._protocol = grpc_aio if settings.triton_protocol == "grpc" else http_aio
        if settings.triton_protocol == "grpc":
            self._client = grpc_aio.InferenceServerClient(settings.triton_url, channel_args=GRPC_CHANNEL_ARGS)
        else:
            self._client = http_aio.InferenceServerClient(settings.triton_url, conn_timeout=settings.request_timeout_s)

    async def close(self) -> None:
        await self._client.close()

    async def is_ready(self, timeout: float = 1.0) -> bool:
        try:
            return bool(await asyncio.wait_for(self._client.is_model_ready(self.settings.triton_model), timeout))
        except (asyncio.TimeoutError, InferenceServerException, aiohttp.ClientError, OSError):
            return False

    def _text_input(self, name: str, texts: list[str]) -> object:
        array = np.array([[t.encode("utf-8") for t in texts]], dtype=np.object_)
        tensor = self._protocol.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        return tensor

    async def rerank(self, query: str, documents: list[str], instruction: str | None, timeout: float,
                     top_n: int | None = None, budgeted: bool = True) -> Scores:
        """Scores from the model, due ``timeout`` seconds from now.

        Budgeted, the model answers by then whatever it could score (the rest ranked lexically);
        exact, it scores everything or the call fails with BackendTimeoutError.
        """
        inputs = [self._text_input("QUERY", [query]), self._text_input("DOCUMENTS", documents)]
        if instruction:
            inputs.append(self._text_input("INSTRUCTION", [instruction]))
        outputs = [self._protocol.InferRequestedOutput(name) for name in ("SCORES", "TOKENS", "SCORED")]
        parameters: dict[str, object] = {"rerank_mode": "budgeted" if budgeted else "exact"}
        if budgeted:
            parameters["deadline_unix_ms"] = int((time.time() + timeout) * 1000)
            parameters["top_n"] = top_n or 1
        # Triton gets the deadline too (µs): it drops the request from its queue once the deadline has
        # passed and the model stops computing it, so abandoned work does not delay other callers.
        # Over gRPC, giving up here also cancels the call, which the model notices within 50 ms.
        limit = timeout + BUDGETED_GRACE_S if budgeted else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            result = await asyncio.wait_for(self._client.infer(
                self.settings.triton_model, inputs, outputs=outputs, timeout=max(1, int(limit * 1e6)),
                parameters=parameters), limit)
        except asyncio.TimeoutError:
            raise BackendTimeoutError(f"the model did not answer within {timeout:g} s") from None
        except InferenceServerException as exc:
            raise classify(exc, deadline_passed=loop.time() >= deadline - DEADLINE_SLACK_S) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailableError(f"Triton is unreachable at {self.settings.triton_url} ({exc})") from None
        return Scores(result.as_numpy("SCORES")[0], int(result.as_numpy("TOKENS")[0, 0]),
                      result.as_numpy("SCORED")[0].astype(bool))


def classify(exc: InferenceServerException, deadline_passed: bool) -> BackendError:
    """The error for what Triton reported. CANCELLED is the model giving up at the request's deadline, or
    Triton dropping its requests as it stops: only the first is the caller's 504."""
    status, message = str(exc.status() or ""), str(exc.message() or exc)
    lowered = message.lower()
    if "DEADLINE_EXCEEDED" in status or "timeout expired" in lowered or ("CANCELLED" in status and deadline_passed):
        return BackendTimeoutError(f"the model did not answer in time: {message}")
    if "CANCELLED" in status:
        return BackendUnavailableError(f"Triton cancelled the request before its deadline (stopping?): {message}")
    if "UNAVAILABLE" in status or status == "503" or any(m in lowered for m in UNAVAILABLE_MARKERS):
        return BackendUnavailableError(f"the model is not available: {message}")
    if "INVALID_ARGUMENT" in status or status == "400":
        return BackendRejectedError(message)
    return BackendError(f"Triton failed: {message}")
