"""Errors as data: what Triton and the model report, sorted into the API's 422 / 503 / 504 / 502.

Statuses and messages are those Triton 2.51 sends (gRPC codes as tritonclient names them, HTTP statuses as
strings), seen by sending each kind of error through a real tritonserver; the model's errors carry the marker
that triton_contract writes.
"""

from __future__ import annotations

import pytest
import triton_contract
from tritonclient.utils import InferenceServerException

from adapter import backend
from adapter.backend import classify
from adapter.errors import BackendError, BackendRejectedError, BackendTimeoutError, BackendUnavailableError
from rerank_engine import InvalidInputError, ModelLoadError, RequestCancelledError

pytestmark = pytest.mark.unit

GRPC, HTTP = "grpc", "http"
# Triton's status for each code the model sends, per protocol (Triton answers CANCELLED with 400 over HTTP).
STATUS = {
    "INVALID_ARGUMENT": {GRPC: "StatusCode.INVALID_ARGUMENT", HTTP: "400"},
    "CANCELLED": {GRPC: "StatusCode.CANCELLED", HTTP: "400"},
    "UNAVAILABLE": {GRPC: "StatusCode.UNAVAILABLE", HTTP: "503"},
    "INTERNAL": {GRPC: "StatusCode.INTERNAL", HTTP: "500"},
    "NOT_FOUND": {GRPC: "StatusCode.NOT_FOUND", HTTP: "404"},
}


def sorted_as(code: str, protocol: str, message: str, deadline_passed: bool = False) -> BackendError:
    return classify(InferenceServerException(message, status=STATUS[code][protocol]), deadline_passed)


@pytest.mark.parametrize("protocol", [GRPC, HTTP])
class TestTheModelsErrorsByTheirMarker:
    def test_invalid_input_is_422_without_the_marker(self, protocol):
        error = sorted_as("INVALID_ARGUMENT", protocol, "[invalid_input] DOCUMENTS is empty: give at least one")
        assert type(error) is BackendRejectedError
        assert error.message == "DOCUMENTS is empty: give at least one"

    def test_cancelled_after_the_deadline_is_504(self, protocol):
        error = sorted_as("CANCELLED", protocol, "[cancelled] cancelled while it was being scored", True)
        assert type(error) is BackendTimeoutError

    def test_cancelled_before_the_deadline_is_503(self, protocol):
        error = sorted_as("CANCELLED", protocol, "[cancelled] cancelled before it was scored", False)
        assert type(error) is BackendUnavailableError

    def test_model_load_is_503(self, protocol):
        error = sorted_as("UNAVAILABLE", protocol, "[model_load] /models/x.gguf: model file not found")
        assert type(error) is BackendUnavailableError

    def test_internal_is_502(self, protocol):
        error = sorted_as("INTERNAL", protocol, "[internal] rerank failed: llama_decode returned -1")
        assert type(error) is BackendError
        assert "llama_decode returned -1" in error.message


@pytest.mark.parametrize("protocol", [GRPC, HTTP])
class TestTritonsErrorsByTheirCode:
    def test_deadline_exceeded_is_504(self, protocol):
        status = {GRPC: "StatusCode.DEADLINE_EXCEEDED", HTTP: "504"}[protocol]
        assert type(classify(InferenceServerException("Deadline Exceeded", status=status), True)) is \
            BackendTimeoutError

    def test_unavailable_before_the_deadline_is_503(self, protocol):
        error = sorted_as("UNAVAILABLE", protocol, "failed to connect to all addresses")
        assert type(error) is BackendUnavailableError

    def test_unavailable_after_the_deadline_is_504(self, protocol):
        """Triton drops a request from its queue at its timeout, counted from when the request arrived."""
        assert type(sorted_as("UNAVAILABLE", protocol, "Request timeout expired", True)) is BackendTimeoutError

    @pytest.mark.parametrize("message", ["Request for unknown model: 'x' is not found",
                                         "Request for unknown model: 'x' has no available versions"])
    def test_unknown_or_loading_model_is_503(self, protocol, message):
        assert type(sorted_as("NOT_FOUND", protocol, message)) is BackendUnavailableError

    def test_malformed_request_is_422(self, protocol):
        error = sorted_as("INVALID_ARGUMENT", protocol, "expected 2 inputs but got 1 inputs for model 'x'")
        assert type(error) is BackendRejectedError

    def test_a_dead_backend_process_is_503(self, protocol):
        error = sorted_as("INTERNAL", protocol, "Stub process 'jina_reranker_v3_0_1' is not healthy.")
        assert type(error) is BackendUnavailableError

    def test_anything_else_is_502(self, protocol):
        assert type(sorted_as("INTERNAL", protocol, "Failed to process the request(s)")) is BackendError


def test_grpc_cancelled_from_triton_itself_depends_on_the_deadline():
    """Triton (not the model) cancels the requests it holds as it stops: seen 0.05 s into a 10 s deadline."""
    exc = InferenceServerException("Locally cancelled by application!", status="StatusCode.CANCELLED")
    assert type(classify(exc, deadline_passed=False)) is BackendUnavailableError
    assert type(classify(exc, deadline_passed=True)) is BackendTimeoutError


@pytest.mark.parametrize("message", [
    "the model is not ready",  # words once taken for unavailability, under a code that says otherwise
    "Request timeout expired",
    "Stub process 'x_0_0' is not healthy, see the log",
    "[unknown_kind] something",
])
def test_words_in_a_message_do_not_decide(message):
    assert type(classify(InferenceServerException(message, status="StatusCode.INTERNAL"), False)) is BackendError


@pytest.mark.parametrize(("error", "kind"), [(InvalidInputError("bad"), "invalid_input"),
                                             (RequestCancelledError("gone"), "cancelled"),
                                             (ModelLoadError("no file"), "model_load"),
                                             (RuntimeError("boom"), "internal")])
def test_the_adapter_reads_the_marker_the_contract_writes(error, kind):
    """The wire format, defined in triton_contract and repeated in adapter/backend.py, agrees on both sides."""
    message = triton_contract.error_message(error)
    marked = backend.MODEL_ERROR.fullmatch(message)
    assert marked
    assert (marked["kind"], marked["message"]) == (kind, str(error))
    assert triton_contract.error_kind(error) == kind


def test_the_adapter_knows_every_kind_the_contract_names():
    contract_kinds = {*triton_contract.ERROR_KINDS.values(), triton_contract.INTERNAL_ERROR}
    assert contract_kinds == backend.MODEL_ERROR_KINDS
    for name in ("INVALID_INPUT", "CANCELLED", "MODEL_LOAD", "INTERNAL_ERROR"):
        assert getattr(triton_contract, name) == getattr(backend, name)
