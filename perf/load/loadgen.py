"""A closed-loop load generator (asyncio) for Triton (HTTP or gRPC) and the adapter, reporting as perf_analyzer does.

    python -m perf.load.loadgen --target triton-grpc --workload short --concurrency 1,2,4
    python -m perf.load.loadgen --target adapter --url http://127.0.0.1:8080 --workload docs-20x400 --concurrency 1,2

At concurrency N, N workers each send a request as soon as their previous one is answered (perf_analyzer's
concurrency mode), round robin over the workload's entries. Per level it prints one line: throughput in
requests, documents and tokens per second (tokens as the server counts them: TOKENS / usage.total_tokens)
and p50/p90/p99 latency; it writes the levels as CSV and JSON, and a PNG of latency against throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from perf import MODEL_VERSION_DIR, ROOT
from perf.load.workloads import WORKLOADS, Entry, from_input_data, load

MODEL = MODEL_VERSION_DIR.parent.name  # the Triton model is its folder (tests check it is TRITON_MODEL)
# LibreChat's body: it always names the v2 model and asks for the top 5 with the documents back.
LIBRECHAT_MODEL, LIBRECHAT_TOP_N = "jina-reranker-v2-base-multilingual", 5
DEFAULT_URLS = {"triton-grpc": "127.0.0.1:8001", "triton-http": "127.0.0.1:8000", "adapter": "http://127.0.0.1:8080"}


@dataclasses.dataclass(frozen=True)
class Sample:
    latency_s: float
    documents: int
    tokens: int
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Level:
    """The requests of one measurement: one target, one workload, one concurrency."""

    target: str
    workload: str
    concurrency: int
    wall_s: float
    samples: tuple[Sample, ...]

    def __add__(self, other: Level) -> Level:
        """Two measurements of the same thing taken at different times, as one."""
        if (self.target, self.workload, self.concurrency) != (other.target, other.workload, other.concurrency):
            raise ValueError("only levels of the same target, workload and concurrency add up")
        return dataclasses.replace(self, wall_s=self.wall_s + other.wall_s, samples=self.samples + other.samples)


# -- statistics ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: always an observed value, never an interpolation between two."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def summarize(level: Level) -> dict:
    """Throughput over the level's wall time (answered requests only) and latency percentiles in ms.

    Figures that need at least one answered request are None without one.
    """
    ok = [s for s in level.samples if s.error is None]
    latencies = [s.latency_s * 1000 for s in ok]
    summary = {"target": level.target, "workload": level.workload, "concurrency": level.concurrency,
               "requests": len(ok), "errors": len(level.samples) - len(ok), "wall_s": round(level.wall_s, 3)}
    if not ok or level.wall_s <= 0:
        return summary | {"requests_per_s": 0.0, "documents_per_s": 0.0, "tokens_per_s": 0.0,
                          "tokens_per_request": None, "latency_ms": dict.fromkeys(("mean", "p50", "p90", "p99", "max"))}
    return summary | {
        "requests_per_s": round(len(ok) / level.wall_s, 4),
        "documents_per_s": round(sum(s.documents for s in ok) / level.wall_s, 3),
        "tokens_per_s": round(sum(s.tokens for s in ok) / level.wall_s, 2),
        "tokens_per_request": round(sum(s.tokens for s in ok) / len(ok), 1),
        "latency_ms": {"mean": round(sum(latencies) / len(latencies), 1),
                       **{f"p{q}": round(percentile(latencies, q), 1) for q in (50, 90, 99)},
                       "max": round(max(latencies), 1)},
    }


def format_line(summary: dict) -> str:
    lat = summary["latency_ms"]
    errors = f", {summary['errors']} errors" if summary["errors"] else ""
    if not summary["requests"]:
        return (f"{summary['target']:<14} {summary['workload']:<9} Concurrency: {summary['concurrency']}, "
                f"no request answered{errors}")
    return (f"{summary['target']:<14} {summary['workload']:<9} Concurrency: {summary['concurrency']}, "
            f"throughput: {summary['requests_per_s']:.3g} infer/sec, {summary['documents_per_s']:.3g} docs/sec, "
            f"{summary['tokens_per_s']:.4g} tokens/sec, latency p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, "
            f"p99 {lat['p99']:.0f} ms ({summary['requests']} requests{errors})")


# -- targets ------------------------------------------------------------------------------------------


class Target:
    """Sends workload entries (by index) and reads documents and tokens back; keeps the last scores per entry."""

    name = "target"

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.scores: dict[int, np.ndarray] = {}

    async def open(self, entries: Sequence[Entry]) -> None:
        self.entries = list(entries)

    async def send(self, index: int) -> tuple[int, int]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class TritonTarget(Target):
    """Triton's KServe API through tritonclient's asyncio clients; inputs are encoded once, before timing."""

    def __init__(self, url: str, protocol: str = "grpc", model: str = MODEL, timeout_s: float = 3600.0) -> None:
        super().__init__()
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
        self.name = f"triton_{protocol}"
        self.url, self.protocol, self.model, self.timeout_s = url, protocol, model, timeout_s
        self._client = None
        self._requests: list[tuple[list, list]] = []

    async def open(self, entries: Sequence[Entry]) -> None:
        await super().open(entries)
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as module

            self._client = module.InferenceServerClient(self.url)
        else:
            import tritonclient.http.aio as module

            self._client = module.InferenceServerClient(self.url, conn_timeout=self.timeout_s)
        self._requests = []
        for entry in self.entries:
            inputs = []
            for name, texts in (("QUERY", [entry.query]), ("DOCUMENTS", list(entry.documents))):
                array = np.array([[t.encode("utf-8") for t in texts]], dtype=np.object_)
                tensor = module.InferInput(name, list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            outputs = [module.InferRequestedOutput("SCORES"), module.InferRequestedOutput("TOKENS")]
            self._requests.append((inputs, outputs))
        if not await self._client.is_model_ready(self.model):  # also opens the connection before timing
            raise RuntimeError(f"model {self.model} is not ready at {self.url}")

    async def send(self, index: int) -> tuple[int, int]:
        inputs, outputs = self._requests[index]
        extra = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        result = await self._client.infer(self.model, inputs, outputs=outputs, **extra)
        self.scores[index] = result.as_numpy("SCORES")[0]
        return len(self.entries[index].documents), int(result.as_numpy("TOKENS")[0, 0])

    async def server_version(self) -> str:
        metadata = await self._client.get_server_metadata()
        return metadata.version if self.protocol == "grpc" else metadata["version"]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


class AdapterTarget(Target):
    """The adapter's POST /v1/rerank with LibreChat's body; bodies are serialised once, before timing."""

    name = "adapter"

    def __init__(self, url: str, timeout_s: float = 3600.0, api_key: str = "") -> None:
        super().__init__()
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key
                                                                 else {})}
        self._client = None
        self._bodies: list[bytes] = []

    async def open(self, entries: Sequence[Entry]) -> None:
        import httpx

        await super().open(entries)
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s)
        ready = await self._client.get("/ready")  # also opens the connection before timing
        if ready.status_code != 200:
            raise RuntimeError(f"the adapter at {self.url} is not ready: HTTP {ready.status_code} {ready.text[:200]}")
        self._bodies = [json.dumps({"model": LIBRECHAT_MODEL, "query": e.query, "documents": list(e.documents),
                                    "top_n": LIBRECHAT_TOP_N, "return_documents": True}).encode() for e in entries]

    async def send(self, index: int) -> tuple[int, int]:
        response = await self._client.post("/v1/rerank", content=self._bodies[index], headers=self._headers)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        body = response.json()
        scores = np.full(len(self.entries[index].documents), np.nan, dtype=np.float32)
        for result in body["results"]:
            scores[result["index"]] = result["relevance_score"]
        self.scores[index] = scores
        return len(self.entries[index].documents), int(body["usage"]["total_tokens"])

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class CallTarget(Target):
    """A blocking in-process call, run in a worker thread: ``call(index) -> (scores, tokens)``."""

    def __init__(self, name: str, call: Callable[[int], tuple[np.ndarray, int]]) -> None:
        super().__init__()
        self.name, self._call = name, call

    async def send(self, index: int) -> tuple[int, int]:
        scores, tokens = await asyncio.to_thread(self._call, index)
        self.scores[index] = scores
        return len(self.entries[index].documents), tokens


# -- measuring ----------------------------------------------------------------------------------------


async def run_level(target: Target, workload: str, concurrency: int, requests: int, first: int = 0) -> Level:
    """``requests`` requests, ``concurrency`` in flight, entries round robin from index ``first``."""
    counter = itertools.count()
    samples: list[Sample] = []

    async def worker() -> None:
        while (k := next(counter)) < requests:
            index = (first + k) % len(target.entries)
            started = time.perf_counter()
            try:
                documents, tokens = await target.send(index)
            except Exception as exc:  # a failed request is a measured outcome, reported as an error
                samples.append(Sample(time.perf_counter() - started, 0, 0, f"{type(exc).__name__}: {exc}"))
            else:
                samples.append(Sample(time.perf_counter() - started, documents, tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Level(target.name, workload, concurrency, time.perf_counter() - started, tuple(samples))


async def sweep(target: Target, workload: str, concurrencies: Sequence[int], requests_per_worker: int,
                warmup: int = 1, report: Callable[[str], None] = print) -> list[Level]:
    """One level per concurrency, after ``warmup`` unmeasured requests; prints each level's line."""
    if warmup:
        await run_level(target, workload, 1, warmup)
    levels = []
    for concurrency in concurrencies:
        level = await run_level(target, workload, concurrency, concurrency * requests_per_worker)
        report(format_line(summarize(level)))
        levels.append(level)
    return levels


# -- output -------------------------------------------------------------------------------------------

CSV_FIELDS = ("target", "workload", "concurrency", "requests", "errors", "wall_s", "requests_per_s", "documents_per_s",
              "tokens_per_s", "tokens_per_request", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms",
              "latency_p99_ms", "latency_max_ms")


def write_csv(summaries: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for s in summaries:
            flat = {k: v for k, v in s.items() if k in CSV_FIELDS}
            writer.writerow(flat | {f"latency_{k}_ms": v for k, v in s["latency_ms"].items()})


def plot(summaries: Sequence[dict], path: Path, title: str) -> None:
    """Latency (p50, with a bar up to p99) against throughput, one panel per workload, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(s["workload"] for s in summaries))
    fig, axes = plt.subplots(1, len(workloads), figsize=(6.5 * len(workloads), 4.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for target in dict.fromkeys(s["target"] for s in summaries if s["workload"] == workload):
            points = sorted((s for s in summaries if s["workload"] == workload and s["target"] == target
                             and s["requests"]), key=lambda s: s["concurrency"])
            x = [s["tokens_per_s"] for s in points]
            p50 = [s["latency_ms"]["p50"] / 1000 for s in points]
            p99 = [s["latency_ms"]["p99"] / 1000 for s in points]
            line = ax.errorbar(x, p50, yerr=[[0] * len(points), [b - a for a, b in zip(p50, p99, strict=True)]],
                               marker="o", capsize=3, label=target)
            for s, xi, yi in zip(points, x, p50, strict=True):
                ax.annotate(f"c={s['concurrency']}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=line[0].get_color())
        ax.set_title(f"{workload}")
        ax.set_xlabel("throughput (tokens/s)")
        ax.set_ylabel("latency (s): p50, bar to p99")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line -------------------------------------------------------------------------------------


def make_target(kind: str, url: str, model: str, timeout_s: float, api_key: str) -> Target:
    if kind == "adapter":
        return AdapterTarget(url, timeout_s, api_key)
    return TritonTarget(url, kind.removeprefix("triton-"), model, timeout_s)


async def run_cli(args: argparse.Namespace, entries: list[Entry], workload: str) -> list[dict]:
    target = make_target(args.target, args.url or DEFAULT_URLS[args.target], args.model, args.timeout, args.api_key)
    await target.open(entries)
    try:
        levels = await sweep(target, workload, args.concurrency, args.requests_per_worker, args.warmup)
    finally:
        await target.close()
    return [summarize(level) for level in levels]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(DEFAULT_URLS), default="triton-grpc")
    parser.add_argument("--url", help="host:port for Triton, http://host:port for the adapter (default: local ports)")
    parser.add_argument("--model", default=MODEL, help="Triton model name")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--workload", choices=sorted(WORKLOADS), default="short")
    source.add_argument("--input-data", type=Path, help="a perf_analyzer input-data JSON file instead")
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated levels (default 1,2,4)")
    parser.add_argument("--requests-per-worker", type=int, default=3, help="requests per level = concurrency x this")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured requests before the first level")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per-request timeout in seconds")
    parser.add_argument("--api-key", default="", help="the adapter's API_KEY, if it has one")
    parser.add_argument("--out", type=Path, help="writes OUT.csv, OUT.json and OUT.png "
                                                  "(default perf/results/loadgen-TARGET-WORKLOAD)")
    args = parser.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency must be integers separated by commas, not {args.concurrency!r}")
    if min(args.concurrency) < 1 or args.requests_per_worker < 1:
        parser.error("concurrency levels and --requests-per-worker must be >= 1")
    if args.input_data:
        entries = from_input_data(json.loads(args.input_data.read_text(encoding="utf-8")))
        workload = args.input_data.stem
    else:
        entries, workload = load(args.workload), args.workload
    summaries = asyncio.run(run_cli(args, entries, workload))
    out = args.out or ROOT / "perf" / "results" / f"loadgen-{args.target}-{workload}"
    write_csv(summaries, out.with_suffix(".csv"))
    out.with_suffix(".json").write_text(json.dumps(summaries, indent=1) + "\n")
    plot(summaries, out.with_suffix(".png"), f"{args.target} ({args.url or DEFAULT_URLS[args.target]}), {workload}")
    print(f"wrote {out}.csv, .json and .png")
    return 1 if any(s["errors"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
