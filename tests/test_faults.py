"""Faults, bounded in time and on loopback: Triton killed mid-request, a backend process killed."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from stack.stub_watchdog import live_stubs
from tests.servers import start_adapter, start_triton

QUERY = "Which rivers are the longest?"
DEADLINE_S = 5.0


@pytest.fixture
def stack(tiny_q8, tmp_path):
    triton = start_triton(tiny_q8, tmp_path / "triton.log")
    adapter = start_adapter(triton.grpc_url, tmp_path / "adapter.log", REQUEST_TIMEOUT_S=str(DEADLINE_S))
    yield triton, adapter
    adapter.stop()
    triton.stop()


async def timed_posts(url: str, bodies: list[dict], after_first_s: float, action) -> list[tuple[int, float]]:
    """Send every body at once, run ``action`` shortly after, and return (status, seconds) per request."""
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(body: dict) -> tuple[int, float]:
            started = time.monotonic()
            response = await client.post(url, json=body)
            return response.status_code, time.monotonic() - started

        tasks = [asyncio.create_task(one(body)) for body in bodies]
        await asyncio.sleep(after_first_s)
        action()
        return await asyncio.gather(*tasks)


@pytest.mark.slow
def test_triton_killed_with_requests_in_flight(stack):
    triton, adapter = stack
    bodies = [{"query": f"{QUERY} {i}", "documents": [f"passage {i}.{d} " * 60 for d in range(60)]}
              for i in range(8)]
    results = asyncio.run(timed_posts(f"{adapter.url}/v1/rerank", bodies, 0.5, triton.kill))
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
def test_killed_backend_process_is_reloaded(stack):
    """Triton keeps a model READY whose Python-backend process died; the watchdog reloads it."""
    triton, adapter = stack
    body = {"query": QUERY, "documents": ["The Nile", "Bread"]}
    assert httpx.post(f"{adapter.url}/v1/rerank", json=body, timeout=10).status_code == 200
    [stub] = live_stubs(triton.process.pid)
    os.kill(stub, signal.SIGKILL)
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses.append(httpx.post(f"{adapter.url}/v1/rerank", json=body, timeout=10).status_code)
        if statuses[-1] == 200:
            break
    assert statuses[-1] == 200, statuses
    assert set(statuses) <= {200, 503}, "a dead backend process is 'unavailable', never a 5xx of another kind"
    assert triton.watchdog.reloads == 1
    assert live_stubs(triton.process.pid) - {stub}
    assert httpx.get(f"{adapter.url}/ready", timeout=5).status_code == 200
