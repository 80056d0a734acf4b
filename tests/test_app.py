"""Unit tests of the adapter's FastAPI app, in-process (Starlette's TestClient), with a stand-in backend.

HTTP-only behaviour: validation, auth, limits, headers and error bodies. Nothing here claims to test Triton,
llama.cpp or uvicorn: tests/test_adapter.py sends the same API over real HTTP to a real Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from adapter.app import CLIENT_GONE, SCORED_HEADER, TIMEOUT_HEADER, create_app
from adapter.backend import Backend, Scores
from adapter.errors import BackendError, BackendRejectedError, BackendTimeoutError, BackendUnavailableError
from adapter.settings import AdapterSettings

pytestmark = pytest.mark.unit

DOCS = ["a river", "the longest river of all", "bread", "rivers and seas", "chess"]


class StandIn:
    """A Backend without a model: scores each document by its length (longest first), or raises ``error``.

    ``scored`` is how many documents (the first ones) it says the model scored; None: all of them.
    """

    def __init__(self, settings: AdapterSettings) -> None:
        self.settings = settings
        self.error: Exception | None = None
        self.scored: int | None = None
        self.ready = True
        self.closed = False
        self.calls: list[dict[str, object]] = []

    async def rerank(self, query: str, documents: list[str], instruction: str | None, timeout: float,
                     top_n: int | None = None, budgeted: bool = True, max_doc_tokens: int | None = None) -> Scores:
        self.calls.append({"query": query, "documents": documents, "instruction": instruction, "timeout": timeout,
                           "top_n": top_n, "budgeted": budgeted, "max_doc_tokens": max_doc_tokens})
        if self.error is not None:
            raise self.error
        n = len(documents)
        scored = np.arange(n) < (n if self.scored is None else self.scored)
        return Scores(np.array([len(d) / 100 for d in documents], dtype=np.float32), 7 * n, scored)

    async def is_ready(self) -> bool:
        return self.ready

    async def close(self) -> None:
        self.closed = True


Serve = Callable[..., tuple[TestClient, StandIn]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(**settings)``: a client of the app (started: its lifespan ran) and the app's stand-in backend."""
    with contextlib.ExitStack() as stack:
        def start(**values: object) -> tuple[TestClient, StandIn]:
            made: list[StandIn] = []

            def factory(settings: AdapterSettings) -> Backend:
                made.append(StandIn(settings))
                return made[-1]

            client = stack.enter_context(TestClient(create_app(AdapterSettings(**values), factory)))
            return client, made[0]

        yield start


@pytest.fixture
def app(serve: Serve) -> tuple[TestClient, StandIn]:
    return serve()


def by_length(docs: list[str]) -> list[int]:
    return sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))


def assert_error(response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "type"}
    assert body["type"] == kind
    assert isinstance(body["detail"], str)
    assert body["detail"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_results_are_the_backends_scores_best_first(app, path):
    client, backend = app
    docs = [*DOCS[:3], {"text": DOCS[3], "id": "kept"}, DOCS[4]]
    response = client.post(path, json={"query": "rivers", "documents": docs, "model": "jina-reranker-v2"})
    assert response.status_code == 200
    body = response.json()
    texts = [*DOCS[:3], DOCS[3], DOCS[4]]
    assert [r["index"] for r in body["results"]] == by_length(texts)
    assert [r["document"] for r in body["results"]] == [docs[i] for i in by_length(texts)]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([len(texts[i]) / 100
                                                                            for i in by_length(texts)])
    assert body["model"] == "jina-reranker-v3"
    assert body["object"] == "list"
    assert body["usage"] == {"total_tokens": 7 * len(docs)}
    assert backend.calls[0]["documents"] == texts


def test_top_n_and_return_documents(app):
    client, _ = app
    body = client.post("/v1/rerank", json={"query": "q", "documents": DOCS, "top_n": 2,
                                           "return_documents": False}).json()
    assert [r["index"] for r in body["results"]] == by_length(DOCS)[:2]
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])


@pytest.mark.parametrize(("mode", "budgeted"), [("budgeted", True), ("exact", False)])
def test_the_backend_gets_the_request_the_mode_and_the_deadline(serve, mode, budgeted):
    client, backend = serve(rerank_mode=mode, request_timeout_s=3.5)
    client.post("/v1/rerank", json={"query": "q", "documents": DOCS[:2], "top_n": 1, "instruction": "be brief"})
    client.post("/v1/rerank", json={"query": "q", "documents": DOCS[:2]}, headers={TIMEOUT_HEADER: "250"})
    client.post("/v2/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": DOCS[:2], "top_n": 1,
                                    "max_tokens_per_doc": 64}, headers={TIMEOUT_HEADER: "500"})
    client.post("/rerank", json={"query": "q", "texts": DOCS[:2], "truncate": True})
    assert backend.calls == [
        {"query": "q", "documents": DOCS[:2], "instruction": "be brief", "timeout": 3.5, "top_n": 1,
         "budgeted": budgeted, "max_doc_tokens": None},
        {"query": "q", "documents": DOCS[:2], "instruction": None, "timeout": 0.25, "top_n": None,
         "budgeted": budgeted, "max_doc_tokens": None},
        {"query": "q", "documents": DOCS[:2], "instruction": None, "timeout": 0.5, "top_n": 1,
         "budgeted": budgeted, "max_doc_tokens": 64},
        {"query": "q", "documents": DOCS[:2], "instruction": None, "timeout": 3.5, "top_n": None,
         "budgeted": budgeted, "max_doc_tokens": None}]


def test_scored_header_says_how_many_the_model_scored(app):
    client, backend = app
    assert client.post("/v1/rerank", json={"query": "q", "documents": DOCS}).headers[SCORED_HEADER] == "5/5"
    backend.scored = 2
    response = client.post("/v1/rerank", json={"query": "q", "documents": DOCS})
    assert response.status_code == 200
    assert response.headers[SCORED_HEADER] == "2/5"
    metrics = client.get("/metrics").text
    assert re.search(r"^rerank_budgeted_requests_total 1\.0$", metrics, re.M)
    assert re.search(r'^rerank_ranked_documents_total\{by="lexical"\} 3\.0$', metrics, re.M)
    assert re.search(r'^rerank_ranked_documents_total\{by="model"\} 7\.0$', metrics, re.M)


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf", "600001"])
def test_a_bad_deadline_header_is_422_naming_it(app, value):
    client, backend = app
    response = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={TIMEOUT_HEADER: value})
    assert_error(response, 422, "invalid_request")
    assert TIMEOUT_HEADER in response.json()["detail"]
    assert backend.calls == []


INVALID = {
    "missing query": {"documents": ["a"]},
    "empty query": {"query": "", "documents": ["a"]},
    "blank query": {"query": " \n\t", "documents": ["a"]},
    "query not a string": {"query": 42, "documents": ["a"]},
    "missing documents": {"query": "q"},
    "no documents": {"query": "q", "documents": []},
    "documents not a list": {"query": "q", "documents": "a"},
    "document a number": {"query": "q", "documents": ["a", 3]},
    "object without text": {"query": "q", "documents": [{"body": "a"}]},
    "top_n zero": {"query": "q", "documents": ["a"], "top_n": 0},
    "top_n negative": {"query": "q", "documents": ["a"], "top_n": -2},
    "top_n not a number": {"query": "q", "documents": ["a"], "top_n": "five"},
    "too many documents": {"query": "q", "documents": ["x"] * 1001},
    "document too long": {"query": "q", "documents": ["x" * 100_001]},
    "query too long": {"query": "q" * 20_001, "documents": ["a"]},
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_bodies_are_422_with_a_message(app, case):
    client, backend = app
    assert_error(client.post("/v1/rerank", json=INVALID[case]), 422, "invalid_request")
    assert backend.calls == []


def test_limits_come_from_the_settings_and_are_named(serve):
    client, _ = serve(max_documents=2, max_query_chars=5, max_document_chars=4)
    cases = {"documents: 3 documents, at most 2": {"query": "q", "documents": ["a", "b", "c"]},
             "query: 6 characters, at most 5": {"query": "qqqqqq", "documents": ["a"]},
             "documents.1: 5 characters, at most 4": {"query": "q", "documents": ["a", {"text": "bbbbb"}]}}
    for message, body in cases.items():
        response = client.post("/v1/rerank", json=body)
        assert_error(response, 422, "invalid_request")
        assert message in response.json()["detail"]


@pytest.mark.parametrize("raw", [b"{not json", b'{"query": "q", "documents": ["\\ud800"]}', b"[]", b"null",
                                 b"\xff\xfe{}"])
def test_malformed_json_is_422(app, raw):
    client, _ = app
    response = client.post("/v1/rerank", content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 422, "invalid_request")


def test_a_body_over_the_limit_is_413_declared_or_not(serve):
    client, backend = serve(max_body_bytes=1000)
    big = json.dumps({"query": "q", "documents": ["y" * 300] * 5}).encode()
    assert_error(client.post("/v1/rerank", content=big, headers={"Content-Type": "application/json"}),
                 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds for what arrives
        for i in range(0, len(big), 100):
            yield big[i:i + 100]

    response = client.post("/v1/rerank", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "too_large")
    assert "1000 bytes" in response.json()["detail"]
    assert backend.calls == []
    assert re.search(r'^rerank_errors_total\{kind="too_large"\} 2\.0$', client.get("/metrics").text, re.M)
    small = json.dumps({"query": "q", "documents": ["y"]}).encode()
    assert client.post("/v1/rerank", content=small, headers={"Content-Type": "application/json"}).status_code == 200


def test_api_key_when_configured(serve):
    client, _ = serve(api_key="s3cret")
    body = {"query": "q", "documents": DOCS[:2]}
    assert_error(client.post("/v1/rerank", json=body), 401, "unauthorized")
    wrong = client.post("/v1/rerank", json=body, headers={"Authorization": "Bearer s3cres"})
    assert_error(wrong, 401, "unauthorized")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/rerank", json=body, headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert client.post("/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/rerank", json=body, headers={"Authorization": "bearer s3cret"}).status_code == 200
    assert client.get("/info").json()["auth"] is True


def test_without_a_key_any_token_or_none_is_accepted(app):
    client, _ = app
    for headers in ({}, {"Authorization": "Bearer whatever"}, {"Authorization": "garbage"}):
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=headers).status_code == 200


@pytest.mark.parametrize(("error", "status", "kind"), [
    (BackendRejectedError("the request needs about 70000 tokens"), 422, "invalid_request"),
    (BackendError("Triton failed: boom"), 502, "backend_error"),
    (BackendUnavailableError("the model is not available"), 503, "backend_unavailable"),
    (BackendTimeoutError("the model did not answer within 9 s"), 504, "timeout"),
])
def test_each_backend_error_is_its_status_and_body(app, error, status, kind):
    client, backend = app
    backend.error = error
    response = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert_error(response, status, kind)
    assert response.json()["detail"] == error.message
    assert SCORED_HEADER not in response.headers
    assert re.search(rf'^rerank_errors_total\{{kind="{kind}"\}} 1\.0$', client.get("/metrics").text, re.M)


def test_an_unexpected_exception_is_a_json_500_counted_as_internal(serve):
    client, backend = serve()
    client = TestClient(client.app, raise_server_exceptions=False)
    backend.error = ValueError("Value out of range: 9223372036854775808")
    response = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert_error(response, 500, "internal_error")
    assert "ValueError" in response.json()["detail"]
    assert "9223372036854775808" not in response.json()["detail"]  # the adapter's log has it, not the client
    assert re.search(r'^rerank_errors_total\{kind="internal_error"\} 1\.0$', client.get("/metrics").text, re.M)


def test_framework_errors_share_the_body(app):
    client, _ = app
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/v1/rerank"), 405, "method_not_allowed")


def test_ready_follows_the_backend_and_health_does_not(app):
    client, backend = app
    assert client.get("/ready").json() == {"status": "ready"}
    backend.ready = False
    assert_error(client.get("/ready"), 503, "backend_unavailable")
    assert client.get("/health").json() == {"status": "ok"}


def test_the_backend_is_made_at_start_up_and_closed_at_shut_down(serve):
    client, backend = serve(triton_url="triton:8001")
    assert backend.settings.triton_url == "triton:8001"
    assert not backend.closed
    client.__exit__(None, None, None)
    assert backend.closed


def rerank_scope(length: int | None, path: str = "/v1/rerank", method: str = "POST",
                 headers: dict[bytes, bytes] | None = None) -> dict:
    """The ASGI scope of a request as uvicorn passes it; ``length``: its Content-Length, None for a chunked body."""
    framing = {b"transfer-encoding": b"chunked"} if length is None else {b"content-length": b"%d" % length}
    sent = {b"content-type": b"application/json", **framing, **(headers or {})}
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": list(sent.items()),
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http"}


class Held(StandIn):
    """A backend that answers only once ``release`` is set, counting the calls it holds."""

    def __init__(self, settings: AdapterSettings) -> None:
        super().__init__(settings)
        self.release = asyncio.Event()
        self.holding = 0

    async def rerank(self, *args: object, **kwargs: object) -> Scores:
        self.holding += 1
        await self.release.wait()
        return await super().rerank(*args, **kwargs)


async def call(app: object, scope: dict, body: bytes) -> tuple[int, dict, int]:
    """Drive ``app`` with one request: (status, JSON body, how many times it asked for the request's body)."""
    reads, sent = 0, []

    async def receive() -> dict:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays until answered
        raise AssertionError("not reached")

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(payload), reads


def padded(length: int) -> bytes:
    """A valid rerank body of exactly ``length`` bytes (JSON allows trailing whitespace)."""
    body = json.dumps({"query": "q", "documents": ["a"]}).encode()
    return body + b" " * (length - len(body))


def test_without_the_api_key_the_body_is_never_read():
    app = create_app(AdapterSettings(api_key="s3cret"), StandIn)
    app.state.backend = StandIn(AdapterSettings())
    for headers in ({}, {b"authorization": b"Bearer wrong"}):
        status, body, reads = asyncio.run(call(app, rerank_scope(8_000_000, headers=headers), b"{not json"))
        assert (status, body["type"], reads) == (401, "unauthorized", 0)
    status, body, reads = asyncio.run(call(app, rerank_scope(9, headers={b"authorization": b"Bearer s3cret"}),
                                           b"{not json"))
    assert (status, body["type"], reads) == (422, "invalid_request", 1)


def test_requests_and_their_bytes_past_the_capacity_are_503_unread():
    settings = AdapterSettings(max_concurrent_requests=2, max_buffered_bytes=1000, max_body_bytes=1000)
    app = create_app(settings, Held)
    backend = app.state.backend = Held(settings)

    async def run() -> dict[str, tuple[int, dict, int]]:
        first = asyncio.ensure_future(call(app, rerank_scope(600), padded(600)))
        while backend.holding < 1:
            await asyncio.sleep(0)
        results = {"bytes": await call(app, rerank_scope(401), padded(401)),
                   "chunked": await call(app, rerank_scope(None), padded(300))}  # holds MAX_BODY_BYTES
        second = asyncio.ensure_future(call(app, rerank_scope(400), padded(400)))
        while backend.holding < 2:
            await asyncio.sleep(0)
        results["requests"] = await call(app, rerank_scope(60), padded(60))
        results["health"] = await call(app, rerank_scope(0, "/health", "GET"), b"")
        backend.release.set()
        results["first"], results["second"] = await first, await second
        results["after"] = await call(app, rerank_scope(1000), padded(1000))
        results["chunked after"] = await call(app, rerank_scope(None), padded(900))
        return results

    results = asyncio.run(run())
    for refused, why in (("bytes", "600 bytes of request bodies held, at most 1000"),
                         ("chunked", "600 bytes of request bodies held, at most 1000"),
                         ("requests", "2 requests in progress, at most 2")):
        status, body, reads = results[refused]
        assert (status, body["type"], reads) == (503, "overloaded", 0)
        assert why in body["detail"]
    assert results["health"][0] == 200
    assert [results[name][0] for name in ("first", "second", "after", "chunked after")] == [200] * 4


def test_a_client_that_leaves_cancels_the_backend_call_and_gets_499():
    """Driven as the server drives the app: the body, then a disconnect while the backend is computing."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    class Hanging(StandIn):
        async def rerank(self, *args: object, **kwargs: object) -> Scores:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("not reached")

    app = create_app(AdapterSettings(), Hanging)
    sent: list[dict] = []

    async def run() -> None:
        app.state.backend = Hanging(AdapterSettings())
        body = json.dumps({"query": "q", "documents": ["a"]}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await started.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await asyncio.wait_for(app(rerank_scope(len(body)), receive, send), 10)

    asyncio.run(run())
    assert cancelled.is_set()
    assert sent[0]["status"] == CLIENT_GONE

