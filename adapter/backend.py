"""The adapter's only way to Triton: one reused asyncio client (gRPC or HTTP), errors sorted by cause.

Clients never see Triton's details as 500s: an unreachable or not-ready model is a
503 (and recovers by itself when Triton is back), a missed deadline a 504, a request
Triton or the model rejects as malformed a 422, anything else Triton reports a 502.
The cause is read from Triton's status code and from the marker the model puts in its
errors (the engine's error kind), not from the wording of messages; see ``classify``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import Protocol

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from adapter.errors import BackendError, BackendRejectedError, BackendTimeoutError, BackendUnavailableError
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
# More than any model's per-document limit: a larger max_tokens_per_doc is sent as this.
MAX_TOKENS_PARAMETER = 2**31 - 1
# The model's errors: "[<engine error kind>] <message>". A wire format that triton_contract defines
# (error_message, ERROR_KINDS) in the model's image, which the adapter's does not hold; the kinds are repeated
# here and tests/test_backend_errors.py checks that both sides agree.
MODEL_ERROR = re.compile(r"\[(?P<kind>[a-z_]+)\] (?P<message>.*)", re.DOTALL)
INVALID_INPUT, CANCELLED, MODEL_LOAD, INTERNAL_ERROR = "invalid_input", "cancelled", "model_load", "internal"
MODEL_ERROR_KINDS = frozenset({INVALID_INPUT, CANCELLED, MODEL_LOAD, INTERNAL_ERROR})
# Triton's HTTP statuses as the gRPC codes they stand for. Over HTTP Triton 2.51 also answers UNKNOWN,
# ALREADY_EXISTS and the model's CANCELLED with a 400: the model's marker tells its own errors apart.
HTTP_CODES = {"400": "INVALID_ARGUMENT", "404": "NOT_FOUND", "500": "INTERNAL", "501": "UNIMPLEMENTED",
              "503": "UNAVAILABLE", "504": "DEADLINE_EXCEEDED"}
# The one condition that has a generic code (INTERNAL) and only its message to tell it by: the Python
# backend's answer while a model instance's stub process is dead ("Stub process 'x_0_0' is not healthy.",
# seen on Triton 2.51 by killing a stub) or not started. The stub watchdog restarts Triton within seconds.
STUB_DOWN = re.compile(r"(?:Stub process|Model instance) '[^']+' is not (?:healthy|ready)\.")


@dataclasses.dataclass(frozen=True)
class Scores:
    scores: np.ndarray  # input order
    tokens: int
    scored: np.ndarray  # bool, input order: True where the model scored the document, False where ranked lexically

    @property
    def n_scored(self) -> int:
        return int(self.scored.sum())


class Backend(Protocol):
    """What the app needs of a model server: ``TritonBackend``, or a test's stand-in."""

    async def rerank(self, query: str, documents: list[str], instruction: str | None, timeout: float,
                     top_n: int | None = None, budgeted: bool = True, max_doc_tokens: int | None = None) -> Scores:
        """Scores due ``timeout`` seconds from now, each document cut at ``max_doc_tokens`` tokens (None: the
        model's limit); failures are BackendErrors."""
        ...

    async def is_ready(self) -> bool:
        ...

    async def close(self) -> None:
        ...


class TritonBackend:
    """Create inside the running event loop (the asyncio clients bind to it); ``close()`` at shutdown."""

    def __init__(self, settings: AdapterSettings) -> None:
        self.settings = settings
        self._protocol = grpc_aio if settings.triton_protocol == "grpc" else http_aio
        if settings.triton_protocol == "grpc":
            self._client = grpc_aio.InferenceServerClient(settings.triton_url, channel_args=GRPC_CHANNEL_ARGS)
        else:
            # No timeout of the client's own: it would be one total for every call (aiohttp's session timeout; the
            # HTTP client takes no per-call one), cutting a caller's longer deadline. Each call is bounded by
            # ``asyncio.wait_for`` at its own deadline instead, as over gRPC.
            self._client = http_aio.InferenceServerClient(settings.triton_url, conn_timeout=None)

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
                     top_n: int | None = None, budgeted: bool = True, max_doc_tokens: int | None = None) -> Scores:
        """Scores from the model, due ``timeout`` seconds from now.

        Budgeted, the model answers by then whatever it could score (the rest ranked lexically);
        exact, it scores everything or the call fails with BackendTimeoutError.
        """
        inputs = [self._text_input("QUERY", [query]), self._text_input("DOCUMENTS", documents)]
        if instruction:
            inputs.append(self._text_input("INSTRUCTION", [instruction]))
        outputs = [self._protocol.InferRequestedOutput(name) for name in ("SCORES", "TOKENS", "SCORED")]
        parameters: dict[str, object] = {"rerank_mode": "budgeted" if budgeted else "exact"}
        if max_doc_tokens is not None:
            # Any cap over the model's own limit means that limit, and one past int64 fails to encode.
            parameters["max_tokens_per_doc"] = min(max_doc_tokens, MAX_TOKENS_PARAMETER)
        if budgeted:
            parameters["deadline_unix_ms"] = int((time.time() + timeout) * 1000)
            # No more than the documents: any larger value means the same, and one past int64 fails to encode.
            parameters["top_n"] = min(top_n or 1, len(documents))
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


def triton_code(status: str) -> str:
    """Triton's status as a gRPC code's name: "StatusCode.UNAVAILABLE" (gRPC) or "503" (HTTP) -> "UNAVAILABLE"."""
    return HTTP_CODES.get(status, status.removeprefix("StatusCode."))


def classify(exc: InferenceServerException, deadline_passed: bool) -> BackendError:
    """The error for what Triton reported: the model's own errors by their marker, Triton's by their code.

    A cancellation is the model giving up at the request's deadline, or Triton dropping its requests as it
    stops: only the first is the caller's 504. So is UNAVAILABLE after the deadline: Triton drops a request
    from its queue at its timeout ("Request timeout expired"), which it counts from the request's arrival.
    """
    message = str(exc.message() or exc)
    marked = MODEL_ERROR.fullmatch(message)
    if marked and marked["kind"] in MODEL_ERROR_KINDS:
        kind, text = marked["kind"], marked["message"]
        if kind == INVALID_INPUT:
            return BackendRejectedError(text)
        if kind == CANCELLED:
            return late_or_unavailable(text, deadline_passed)
        if kind == MODEL_LOAD:
            return BackendUnavailableError(f"the model cannot be served: {text}")
        return BackendError(f"the model failed: {text}")
    code = triton_code(str(exc.status() or ""))
    if code == "DEADLINE_EXCEEDED":
        return BackendTimeoutError(f"the model did not answer in time: {message}")
    if code in ("CANCELLED", "UNAVAILABLE"):
        return late_or_unavailable(message, deadline_passed)
    if code == "NOT_FOUND" or STUB_DOWN.match(message):  # unknown model, or loading: "has no available versions"
        return BackendUnavailableError(f"the model is not available: {message}")
    if code == "INVALID_ARGUMENT":
        return BackendRejectedError(message)
    return BackendError(f"Triton failed: {message}")


def late_or_unavailable(message: str, deadline_passed: bool) -> BackendError:
    """Triton or the model gave up on the request: at its deadline a 504, before it (Triton stopping) a 503."""
    if deadline_passed:
        return BackendTimeoutError(f"the model did not answer in time: {message}")
    return BackendUnavailableError(f"the model is not available (Triton stopping?): {message}")
