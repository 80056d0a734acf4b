"""A bounded soak: 60 s with 8 requests in flight, every answer checked, memory watched."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from stack.stub_watchdog import live_stubs
from tests.servers import start_adapter, start_triton

pytestmark = pytest.mark.system

SOAK_S = 60.0
IN_FLIGHT = 8
WARM_UP_S = 10.0
MAX_GROWTH_MB = 50.0


def rss_mb(*pids: int) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def requests() -> list[dict]:
    """Deterministic, all different: queries, document counts and lengths vary."""
    return [{"query": f"question {i} about rivers and mountains",
             "documents": [f"request {i} passage {d}: " + "the river flows to the sea " * (1 + (i * d) % 9)
                           for d in range(1 + i % 12)],
             "top_n": 1 + i % 5, "return_documents": i % 2 == 0}
            for i in range(24)]


def answer(body: dict) -> dict:
    """A rerank answer without its ``id``, which Cohere's v1 format makes new for every call."""
    return {key: value for key, value in body.items() if key != "id"}


@pytest.mark.slow
def test_soak_answers_stay_correct_and_memory_flat(tiny_q8, tmp_path):
    triton = start_triton(tiny_q8, tmp_path / "triton.log")
    # The soak checks answers and memory, not latency: a deadline a busy CI machine cannot miss.
    adapter = start_adapter(triton.grpc_url, tmp_path / "adapter.log", REQUEST_TIMEOUT_S="120")
    try:
        bodies = requests()
        with httpx.Client(base_url=adapter.url, timeout=30) as client:
            expected = [answer(client.post("/v1/rerank", json=b).json()) for b in bodies]  # one at a time
        assert all("results" in e for e in expected)

        def triton_mb() -> float:
            return rss_mb(triton.process.pid, *live_stubs(triton.process.pid))

        samples: dict[str, list[float]] = {"triton": [], "adapter": []}
        mismatches: list[tuple[int, int, str]] = []
        answered = 0

        async def worker(client: httpx.AsyncClient, first: int, stop_at: float) -> None:
            nonlocal answered
            i = first
            while time.monotonic() < stop_at:
                response = await client.post("/v1/rerank", json=bodies[i % len(bodies)])
                if response.status_code != 200 or answer(response.json()) != expected[i % len(bodies)]:
                    mismatches.append((i % len(bodies), response.status_code, response.text[:300]))
                answered += 1
                i += IN_FLIGHT

        async def sampler(stop_at: float, warm_until: float) -> None:
            while time.monotonic() < stop_at:
                if time.monotonic() >= warm_until:
                    samples["triton"].append(triton_mb())
                    samples["adapter"].append(rss_mb(adapter.process.pid))
                await asyncio.sleep(1.0)

        async def soak() -> None:
            started = time.monotonic()
            stop_at = started + SOAK_S
            async with httpx.AsyncClient(base_url=adapter.url, timeout=150) as client:
                await asyncio.gather(sampler(stop_at, started + WARM_UP_S),
                                     *(worker(client, k, stop_at) for k in range(IN_FLIGHT)))

        asyncio.run(soak())
        samples["triton"].append(triton_mb())
        samples["adapter"].append(rss_mb(adapter.process.pid))
        assert not mismatches, f"{len(mismatches)} answers differed from the sequential ones: {mismatches[:3]}"
        assert answered > 100
        for name, values in samples.items():
            growth = max(values) - values[0]
            assert growth < MAX_GROWTH_MB, f"{name} RSS grew {growth:.1f} MB after warm-up ({values[0]:.0f} MB)"
    finally:
        adapter.stop()
        triton.stop()
