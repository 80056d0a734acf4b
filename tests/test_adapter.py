"""End to end over real HTTP: httpx -> adapter (uvicorn) -> Triton (gRPC or HTTP) -> llama.cpp.

The wire, once per protocol; the app's HTTP-only behaviour (validation, auth, limits, headers, error bodies)
is unit-tested in-process in tests/test_app.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from stack.triton_server import MODEL_NAME
from tests.servers import free_port, start_adapter, start_triton

pytestmark = pytest.mark.integration

DOCS = [
    "The Nile is the longest river in Africa.",
    "Bread is made from flour, water and yeast.",
    "The Amazon river carries more water than any other.",
    "Mount Everest is the highest mountain.",
    "Rivers flow from springs to the sea.",
    "The Danube crosses ten countries.",
    "Chess is played on an 8x8 board.",
    "The Mississippi river drains much of North America.",
]
QUERY = "Which rivers are the longest?"


@pytest.fixture(scope="module")
def triton(tiny_q8, tmp_path_factory):
    server = start_triton(tiny_q8, tmp_path_factory.mktemp("triton") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["grpc", "http"])
def adapter(request, triton, tmp_path_factory):
    url = triton.grpc_url if request.param == "grpc" else triton.http_url
    server = start_adapter(url, tmp_path_factory.mktemp("adapter") / "adapter.log", protocol=request.param)
    yield server
    server.stop()


def triton_scores(triton, query: str, docs: list[str]) -> tuple[np.ndarray, int]:
    """What Triton itself answers, to hold the adapter to."""
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        inputs = []
        for name, items in (("QUERY", [query]), ("DOCUMENTS", docs)):
            tensor = httpclient.InferInput(name, [1, len(items)], "BYTES")
            tensor.set_data_from_numpy(np.array([[i.encode() for i in items]], dtype=np.object_))
            inputs.append(tensor)
        result = client.infer(MODEL_NAME, inputs)
        return result.as_numpy("SCORES")[0], int(result.as_numpy("TOKENS")[0, 0])
    finally:
        client.close()


def expected_order(scores: np.ndarray) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def librechat_parse(body: dict) -> list[tuple[int, float, str]]:
    """What LibreChat's jina/custom reranker reads: index, relevance_score, document as str or {text}."""
    parsed = []
    for result in body["results"]:
        document = result["document"]
        text = document if isinstance(document, str) else document["text"]
        parsed.append((result["index"], result["relevance_score"], text))
    return parsed


def test_librechat_request(adapter, triton):
    body = {"model": "jina-reranker-v2-base-multilingual", "query": QUERY, "top_n": 5, "documents": DOCS,
            "return_documents": True}
    response = httpx.post(f"{adapter.url}/v1/rerank", json=body, headers={"Authorization": "Bearer librechat-key"},
                          timeout=10)
    assert response.status_code == 200
    payload = response.json()
    scores, tokens = triton_scores(triton, QUERY, DOCS)
    parsed = librechat_parse(payload)
    assert [p[0] for p in parsed] == expected_order(scores)[:5]
    assert [p[2] for p in parsed] == [DOCS[i] for i in expected_order(scores)[:5]]
    np.testing.assert_allclose([p[1] for p in parsed], scores[[p[0] for p in parsed]], rtol=0, atol=1e-6)
    assert payload["model"] == "jina-reranker-v3"  # the model that ranked, not the v2 name sent
    assert payload["object"] == "list"
    assert payload["usage"] == {"total_tokens": tokens}


def test_old_service_request_with_batch_size(adapter, triton):
    body = {"query": QUERY, "documents": DOCS[:4], "batch_size": 32, "top_n": 3, "return_documents": True,
            "model": "jinaai/jina-reranker-v2-base-multilingual"}
    payload = httpx.post(f"{adapter.url}/rerank", json=body, timeout=10).json()
    scores, tokens = triton_scores(triton, QUERY, DOCS[:4])
    assert [r["index"] for r in payload["results"]] == expected_order(scores)[:3]
    assert all(r["document"] == DOCS[r["index"]] for r in payload["results"])
    assert payload["usage"]["total_tokens"] == tokens
    assert [r["relevance_score"] for r in payload["results"]] == sorted(
        (r["relevance_score"] for r in payload["results"]), reverse=True)


def test_object_documents_come_back_as_objects(adapter, triton):
    docs = [{"text": d} for d in DOCS[:3]] + [DOCS[3], {"text": DOCS[4], "id": "kept"}]
    payload = httpx.post(f"{adapter.url}/v1/rerank", json={"query": QUERY, "documents": docs}, timeout=10).json()
    scores, _ = triton_scores(triton, QUERY, DOCS[:5])
    assert [r["index"] for r in payload["results"]] == expected_order(scores)  # top_n defaults to all
    for result in payload["results"]:
        assert result["document"] == docs[result["index"]]


def test_return_documents_false_and_top_n_beyond_the_list(adapter):
    payload = httpx.post(f"{adapter.url}/v1/rerank", json={"query": QUERY, "documents": DOCS[:3], "top_n": 50,
                                                         "return_documents": False}, timeout=10).json()
    assert len(payload["results"]) == 3
    assert all(set(r) == {"index", "relevance_score"} for r in payload["results"])


def test_many_requests_in_flight_each_get_their_own_answer(adapter, triton):
    jobs = [(f"question {i} about rivers", [f"passage {i}.{d}: river number {d * i}" for d in range(1 + i % 6)])
            for i in range(32)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{adapter.url}/v1/rerank",
                                                      json={"query": q, "documents": d}) for q, d in jobs))

    responses = asyncio.run(run())
    for (query, docs), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200
        scores, tokens = triton_scores(triton, query, docs)
        payload = response.json()
        assert [r["index"] for r in payload["results"]] == expected_order(scores)
        assert [r["document"] for r in payload["results"]] == [docs[i] for i in expected_order(scores)]
        assert payload["usage"]["total_tokens"] == tokens


def test_invalid_requests_are_422_over_the_wire(adapter):
    """One of each through uvicorn and Triton (the cases are unit tests of the app: tests/test_app.py): the
    adapter's own validation, and the model's rejection, read from its error marker and left out of the detail."""
    url = f"{adapter.url}/v1/rerank"
    response = httpx.post(url, json={"query": "", "documents": ["a"]}, timeout=10)
    assert response.status_code == 422
    assert response.json()["type"] == "invalid_request"
    # 1,000 documents of ~100 tokens pass every adapter limit but exceed the CPU config's 65,536 tokens.
    many = httpx.post(url, json={"query": "q", "documents": ["rivers and lakes " * 40] * 1000}, timeout=60)
    assert many.status_code == 422
    assert many.json()["type"] == "invalid_request"
    assert many.json()["detail"].startswith("the request needs about")
    assert "65536" in many.json()["detail"]


def test_body_over_the_limit_is_413_over_the_wire(live_stack):
    """Chunked, without Content-Length: the limit holds for what uvicorn passes on, and the server stays up."""
    _, adapter = live_stack
    big = json.dumps({"query": "q", "documents": ["y" * 90_000] * 100}).encode()  # ~9 MB > 8 MiB

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    response = httpx.post(f"{adapter.url}/v1/rerank", content=chunks(), headers={"Content-Type": "application/json"},
                          timeout=30)
    assert response.status_code == 413
    assert response.json()["type"] == "too_large"
    assert httpx.get(f"{adapter.url}/health", timeout=5).status_code == 200


@pytest.mark.timed
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_triton_is_503(protocol, tmp_path):
    adapter = start_adapter(f"127.0.0.1:{free_port()}", tmp_path / "adapter.log", protocol=protocol, wait_ready=False)
    try:
        started = time.monotonic()
        response = httpx.post(f"{adapter.url}/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=10)
        assert response.status_code == 503
        assert time.monotonic() - started < 1.0
        assert response.json()["type"] == "backend_unavailable"
        assert httpx.get(f"{adapter.url}/ready", timeout=5).status_code == 503
        assert httpx.get(f"{adapter.url}/health", timeout=5).status_code == 200
    finally:
        adapter.stop()


def test_an_idle_connection_outlives_the_clients_pool_timeout(tmp_path):
    """LibreChat's Node client (and httpx) keep an idle connection 5 s; uvicorn closed it at 5 s too, and a request
    sent on it as it closed was reset ("socket hang up"). The adapter keeps idle connections longer, so the
    client closes them first: a connection idle for 6 s still answers."""
    adapter = start_adapter(f"127.0.0.1:{free_port()}", tmp_path / "adapter.log", wait_ready=False)
    connection = http.client.HTTPConnection("127.0.0.1", adapter.port, timeout=10)
    try:
        for idle_s in (0, 6):
            time.sleep(idle_s)  # the idle time under test, not a wait for readiness
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}')
            if idle_s == 0:
                first = connection.sock
        assert connection.sock is first  # the same connection, not a new one opened after a close
    finally:
        connection.close()
        adapter.stop()


def test_past_the_deadline_in_exact_mode_is_504(triton, tmp_path):
    adapter = start_adapter(triton.grpc_url, tmp_path / "adapter.log", REQUEST_TIMEOUT_S="0.02", RERANK_MODE="exact")
    try:
        docs = [f"passage {i} " * 20 for i in range(120)]
        response = httpx.post(f"{adapter.url}/v1/rerank", json={"query": "q", "documents": docs}, timeout=10)
        assert response.status_code == 504
        assert response.json()["type"] == "timeout"
    finally:
        adapter.stop()


@pytest.mark.timed
def test_triton_restart_is_survived(tiny_q8, tmp_path):
    triton = start_triton(tiny_q8, tmp_path / "triton.log")
    adapter = start_adapter(triton.grpc_url, tmp_path / "adapter.log")
    url, body = f"{adapter.url}/v1/rerank", {"query": QUERY, "documents": DOCS[:3]}
    try:
        assert httpx.post(url, json=body, timeout=10).status_code == 200
        triton.stop()
        started = time.monotonic()
        response = httpx.post(url, json=body, timeout=10)
        assert response.status_code == 503
        assert time.monotonic() - started < 1.0
        assert httpx.get(f"{adapter.url}/ready", timeout=5).status_code == 503
        triton.start()
        triton.wait_ready()
        adapter.wait_ready(timeout=30)  # /ready turns 200 again without restarting the adapter
        assert httpx.post(url, json=body, timeout=10).status_code == 200
        assert adapter.running()
    finally:
        adapter.stop()
        triton.stop()


def test_info_health_ready_metrics_and_docs(adapter):
    assert httpx.get(f"{adapter.url}/health", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{adapter.url}/ready", timeout=5).json() == {"status": "ready"}
    info = httpx.get(f"{adapter.url}/info", timeout=5).json()
    assert info["model"] == "jina-reranker-v3"
    assert info["backend"]["model"] == MODEL_NAME
    assert info["limits"]["max_documents"] == 1000
    assert info["version"]
    httpx.post(f"{adapter.url}/v1/rerank", json={"query": QUERY, "documents": DOCS[:2]}, timeout=10)
    httpx.post(f"{adapter.url}/v1/rerank", json={"query": "", "documents": DOCS[:2]}, timeout=10)
    metrics = httpx.get(f"{adapter.url}/metrics", timeout=5).text
    for name in ('rerank_requests_total{status="200"}', 'rerank_requests_total{status="422"}',
                 "rerank_request_duration_seconds_bucket", "rerank_documents_total", "rerank_tokens_total",
                 'rerank_errors_total{kind="invalid_request"}'):
        assert name in metrics
    schema = httpx.get(f"{adapter.url}/openapi.json", timeout=5).json()
    assert {"/rerank", "/v1/rerank", "/v2/rerank", "/info", "/health", "/ready", "/metrics"} <= set(schema["paths"])
    assert httpx.get(f"{adapter.url}/docs", timeout=5).status_code == 200
