"""Faults, bounded in time and on loopback: Triton killed mid-request, a backend process killed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from stack.stub_watchdog import alive, live_stubs
from stack.triton_server import MODEL_NAME
from tests.servers import prometheus_sample, start_adapter, start_serve, start_triton

pytestmark = [pytest.mark.system, pytest.mark.timed]

QUERY = "Which rivers are the longest?"
DEADLINE_S = 5.0
IN_FLIGHT_TIMEOUT_S = 30.0


@pytest.fixture
def stack(tiny_q8, tmp_path):
    triton = start_triton(tiny_q8, tmp_path / "triton.log")
    adapter = start_adapter(triton.grpc_url, tmp_path / "adapter.log", REQUEST_TIMEOUT_S=str(DEADLINE_S))
    yield triton, adapter
    adapter.stop()
    triton.stop()


async def timed_posts(adapter_url: str, bodies: list[dict], action) -> list[tuple[int, float]]:
    """Send every body at once to ``/v1/rerank``, run ``action`` once the adapter counts them all in flight (its
    ``rerank_in_flight`` gauge), and return (status, seconds) per request."""
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(body: dict) -> tuple[int, float]:
            started = time.monotonic()
            response = await client.post(f"{adapter_url}/v1/rerank", json=body)
            return response.status_code, time.monotonic() - started

        tasks = [asyncio.create_task(one(body)) for body in bodies]
        deadline = time.monotonic() + IN_FLIGHT_TIMEOUT_S
        while in_flight(await client.get(f"{adapter_url}/metrics")) < len(bodies):
            assert not any(task.done() for task in tasks), "a request was answered before all were in flight"
            assert time.monotonic() < deadline, f"the requests were not all in flight within {IN_FLIGHT_TIMEOUT_S} s"
            await asyncio.sleep(0.02)  # polling the gauge
        action()
        return await asyncio.gather(*tasks)


def in_flight(metrics: httpx.Response) -> float:
    """The adapter's ``rerank_in_flight`` gauge in its /metrics answer."""
    value = prometheus_sample(metrics.text, "rerank_in_flight")
    assert value is not None, "the adapter's /metrics has no rerank_in_flight gauge"
    return value


@pytest.mark.slow
def test_triton_killed_with_requests_in_flight(stack):
    triton, adapter = stack
    bodies = [{"query": f"{QUERY} {i}", "documents": [f"passage {i}.{d} " * 60 for d in range(60)]}
              for i in range(8)]
    results = asyncio.run(timed_posts(adapter.url, bodies, triton.kill))
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 503, 504}
    assert {503, 504} & set(statuses), "some requests should have been in flight when Triton died"
    assert max(seconds for _, seconds in results) < DEADLINE_S + 1.0, "no request may hang past its deadline"
    assert httpx.get(f"{adapter.url}/ready", timeout=5).status_code == 503
    triton.start()
    triton.wait_ready()
    adapter.wait_ready(timeout=30)
    response = httpx.post(f"{adapter.url}/v1/rerank", json={"query": QUERY, "documents": ["a", "b"]}, timeout=10)
    assert response.status_code == 200


@pytest.mark.slow
def test_killed_backend_process_restarts_triton_under_make_serve(tiny_q8):
    """Triton keeps a model READY whose Python-backend process died; the watchdog stops Triton and
    `make serve` starts a fresh one. Callers see 503s meanwhile (a request Triton cancels as it stops
    included: that was once a 504), then answers again."""
    serve = start_serve(tiny_q8, REQUEST_TIMEOUT_S=str(DEADLINE_S))
    try:
        url, body = f"{serve.adapter_url}/v1/rerank", {"query": QUERY, "documents": ["The Nile", "Bread"]}
        assert httpx.post(url, json=body, timeout=10).status_code == 200
        first = serve.triton_pid()
        stubs = live_stubs(first)
        assert len(stubs) == 2, "the CPU config runs two instances"
        os.kill(min(stubs), signal.SIGKILL)
        statuses, slowest = [], 0.0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            started = time.monotonic()
            statuses.append(httpx.post(url, json=body, timeout=30).status_code)
            slowest = max(slowest, time.monotonic() - started)
            if not alive(first) and statuses[-1] == 200:
                break
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}, "a dead backend process is 'unavailable', never a 5xx of another kind"
        assert slowest < DEADLINE_S + 1.0, "no request waits past its deadline"
        assert serve.triton_pid() != first
        assert len(live_stubs(serve.triton_pid())) == 2
        assert [httpx.post(url, json=body, timeout=10).status_code for _ in range(4)] == [200] * 4
        assert serve.stop() == 0
    finally:
        serve.stop()


@pytest.mark.slow
def test_a_large_request_does_not_hold_small_ones_past_their_deadline(stack):
    """The CPU config's second instance answers small requests while a large one runs on the first
    (with one instance they waited for the whole large request: measured in configs/cpu.pbtxt)."""
    triton, adapter = stack
    large_docs = [f"passage {d}: " + "rivers lakes and seas " * 30 for d in range(120)]  # ~54k tokens

    def large_request() -> float:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            inputs = []
            for name, items in (("QUERY", ["rivers"]), ("DOCUMENTS", large_docs)):
                tensor = grpcclient.InferInput(name, [1, len(items)], "BYTES")
                tensor.set_data_from_numpy(np.array([[i.encode() for i in items]], dtype=np.object_))
                inputs.append(tensor)
            started = time.monotonic()
            client.infer(MODEL_NAME, inputs)
            return time.monotonic() - started
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        large = pool.submit(large_request)
        small = []
        for i in range(3):
            started = time.monotonic()
            response = httpx.post(f"{adapter.url}/v1/rerank", json={"query": QUERY, "documents": [f"a {i}", "b"]},
                                  timeout=30)
            small.append((response.status_code, time.monotonic() - started))
        still_running = not large.done()
        large_s = large.result()
    assert still_running, "the large request should still have been running"
    assert [status for status, _ in small] == [200] * 3
    assert max(seconds for _, seconds in small) < min(DEADLINE_S, large_s / 2)

