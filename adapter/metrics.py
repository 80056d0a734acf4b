"""Prometheus metrics, in a registry of the app's own (no process-global state)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rerank_requests", "Rerank requests answered, by HTTP status.",
                                ["status"], registry=self.registry)
        self.latency = Histogram("rerank_request_duration_seconds", "Time to answer a rerank request.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.documents = Counter("rerank_documents", "Documents ranked.", registry=self.registry)
        self.tokens = Counter("rerank_tokens", "Tokens processed by the model.", registry=self.registry)
        self.errors = Counter("rerank_errors", "Failed rerank requests, by kind.", ["kind"], registry=self.registry)
        self.budgeted = Counter("rerank_budgeted_requests",
                                "Requests answered in time with part of their documents ranked lexically.",
                                registry=self.registry)
        self.ranked = Counter("rerank_ranked_documents", "Documents ranked, by who scored them (model or lexical).",
                              ["by"], registry=self.registry)
        self.in_flight = Gauge("rerank_in_flight", "Rerank requests being answered.", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts and times every request to the given paths, rejected ones (401, 413, 422) included."""

    def __init__(self, app: Any, metrics: Metrics, paths: frozenset[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def capture(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, capture)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.latency.observe(time.perf_counter() - started)
            self.metrics.requests.labels(str(status)).inc()
