"""`make bench-librechat`: LibreChat's web-search load, sent by LibreChat's own reranker client.

    python -m perf.load.librechat_bench                                # a stack started as make serve does, 10 searches
    python -m perf.load.librechat_bench --url http://127.0.0.1:8080    # a running adapter instead
    python -m perf.load.librechat_bench --searches 3 --out /tmp/librechat.json
    python -m perf.load.librechat_bench --client-only                  # only install the client (make librechat-client)
    python -m perf.load.librechat_bench --v35                          # v3's stand-in and v3.5's, searches in turn

The client is npm ``@librechat/agents`` (pinned below), installed under .cache/librechat-agents the first time;
perf/load/librechat_rerank.mjs loads its Jina reranker and sends each search of the ``librechat-search`` workload
as LibreChat does: one rerank call per page, the five at once, the next search when all five are back
(searches taken round robin from the workload's file). LibreChat gives up on a call after 10 s and then, without
any error shown, uses the page's first five chunks with score 0: per call the bench records whether it was
answered or fell back (and why), its latency, and how many documents the model scored (the adapter's
``X-Rerank-Scored: <model-scored>/<total>`` header; none for a fallback; an answer without the header is
counted apart, its share unknown). Without --url it starts ``python -m stack.serve`` (what ``make serve``
runs, with its defaults) on the qwen3-0.6b Q8_0 stand-in.
Results: perf/results/librechat-search-cpu.json, every call and a summary.

With --v35 it starts two such stacks, one on the stand-in and one on the same weights with jina-reranker-v3.5's
sliding-window layers (qwen3-0.6b-v35), and sends each search to both in turn, the one served first alternating,
so that both see the same searches under the same load: perf/results/librechat-search-swa.json, a summary per
model and every call.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from perf import ROOT
from perf.common import PRESET, BenchRun, ensure_standin, shown_path
from perf.load.loadgen import LIBRECHAT_TOP_N, percentile
from perf.load.workloads import Entry, from_input_data, load
from perf.tables import librechat_comparison, librechat_summary
from stack.processes import free_port

AGENTS_PACKAGE, AGENTS_VERSION = "@librechat/agents", "3.9.2"
AGENTS_DIR = ROOT / ".cache" / "librechat-agents"
SCRIPT = ROOT / "perf" / "load" / "librechat_rerank.mjs"
RESULTS = ROOT / "perf" / "results" / "librechat-search-cpu.json"
SWA_RESULTS = ROOT / "perf" / "results" / "librechat-search-swa.json"
# --v35's two stand-ins: same shapes and weights, v3.5's with its sliding-window layers
STANDINS = {"v3": PRESET, "v3.5": f"{PRESET}-v35"}
LOGS = ROOT / ".cache" / "perf"
WORKLOAD = "librechat-search"
# Every call answered within this (LibreChat's own limit is 10 s) is the goal.
DEADLINE_S = 9.5
SEARCHES = 10
SERVE_START_S = 900.0


# -- the client ---------------------------------------------------------------------------------------


def installed_version(directory: Path = AGENTS_DIR) -> str | None:
    manifest = directory / "node_modules" / AGENTS_PACKAGE / "package.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(manifest.read_text())["version"]
    return None


def ensure_client(directory: Path = AGENTS_DIR) -> Path:
    """LibreChat's agents package at the pinned version under ``directory`` (npm install the first time)."""
    if installed_version(directory) == AGENTS_VERSION:
        return directory
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("node and npm are needed to run LibreChat's own reranker client")
    print(f"installing {AGENTS_PACKAGE}@{AGENTS_VERSION} into {directory} (once)", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    # No install scripts: only the reranker's plain JavaScript (and axios) is loaded.
    subprocess.run([npm, "install", "--prefix", str(directory), "--no-audit", "--no-fund", "--ignore-scripts",
                    "--loglevel", "error", f"{AGENTS_PACKAGE}@{AGENTS_VERSION}"], check=True)
    if installed_version(directory) != AGENTS_VERSION:
        raise RuntimeError(f"npm did not install {AGENTS_PACKAGE}@{AGENTS_VERSION} into {directory}")
    return directory


@dataclasses.dataclass(frozen=True)
class Search:
    query: str
    pages: tuple[tuple[str, ...], ...]


def searches_of(entries: Sequence[Entry]) -> list[Search]:
    """Consecutive entries with the same query are the pages of one search."""
    grouped: list[Search] = []
    for entry in entries:
        if grouped and grouped[-1].query == entry.query:
            grouped[-1] = Search(entry.query, (*grouped[-1].pages, entry.documents))
        else:
            grouped.append(Search(entry.query, (entry.documents,)))
    return grouped


def run_client(url: str, searches: Sequence[Search], api_key: str = "librechat-bench", timeout_ms: int | None = None,
               agents_dir: Path = AGENTS_DIR, report: bool = True) -> list[dict]:
    """Every call's record (perf/load/librechat_rerank.mjs), searches one after another; prints a line per search."""
    job = {"agents_dir": str(agents_dir), "timeout_ms": timeout_ms, "top_n": LIBRECHAT_TOP_N,
           "searches": [{"query": s.query, "pages": [list(p) for p in s.pages]} for s in searches]}
    env = {**os.environ, "JINA_API_URL": f"{url.rstrip('/')}/v1/rerank", "JINA_API_KEY": api_key}
    calls: list[dict] = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as job_file:
        json.dump(job, job_file, ensure_ascii=False)
        job_file.flush()
        with subprocess.Popen(["node", str(SCRIPT), job_file.name], stdout=subprocess.PIPE, text=True,
                              env=env) as node:
            for line in node.stdout:
                calls.append(json.loads(line))
                done = [c for c in calls if c["search"] == calls[-1]["search"]]
                if report and len(done) == len(searches[calls[-1]["search"]].pages):
                    print(f"search {calls[-1]['search'] + 1}/{len(searches)}: "
                          + ", ".join(map(outcome, sorted(done, key=lambda c: c["page"]))), flush=True)
        if node.returncode != 0:
            raise RuntimeError(f"{SCRIPT.name} exited with status {node.returncode}")
    return calls


def run_in_turn(urls: Mapping[str, str], searches: Sequence[Search], api_key: str, timeout_ms: int | None,
                agents_dir: Path) -> dict[str, list[dict]]:
    """Every call's record per target (numbered by search): each search sent to every target, one after another,
    the target served first alternating from search to search."""
    calls: dict[str, list[dict]] = {label: [] for label in urls}
    for index, search in enumerate(searches):
        for label in (list(urls) if index % 2 == 0 else list(reversed(urls))):
            done = run_client(urls[label], [search], api_key, timeout_ms, agents_dir, report=False)
            for call in done:
                call["search"] = index
            calls[label] += done
            print(f"search {index + 1}/{len(searches)} on {label}: "
                  + ", ".join(map(outcome, sorted(done, key=lambda c: c["page"]))), flush=True)
    return calls


# -- summary ------------------------------------------------------------------------------------------


def scored(call: dict) -> int | None:
    """Documents whose model score reached the client in one call: the header's count, none when the client fell
    back, unknown (None) for an answer without the header."""
    if call["fell_back"]:
        return 0
    if call.get("scored_header"):
        return int(call["scored_header"].split("/")[0])
    return None


def outcome(call: dict) -> str:
    """One call in a few words: its latency and its fallback's cause, or how many documents the model scored."""
    if call["fell_back"]:
        what = f"fell back ({fallback_cause(call)})"
    else:
        what = "answered" if scored(call) is None else f"answered, {scored(call)} scored by the model"
    return f"{call['documents']} docs in {call['latency_ms'] / 1000:.1f} s {what}"


def fallback_cause(call: dict) -> str:
    """Why the client fell back: the service's HTTP status, the client's own timeout, or the client's reason."""
    if call.get("status"):
        return f"HTTP {call['status']}"
    if "timeout" in str((call.get("error") or {}).get("message", "")):
        return "client timeout"
    return str(call["reason"])


def summarize(calls: Sequence[dict], deadline_s: float = DEADLINE_S) -> dict:
    """Fallbacks, answers within the deadline, latency percentiles (ms, nearest rank) and the model-scored share."""
    latencies = [c["latency_ms"] for c in calls]
    answered = [c for c in calls if not c["fell_back"]]
    known = [c for c in calls if scored(c) is not None]  # the shares count these calls only
    known_answered = [c for c in known if not c["fell_back"]]
    known_documents = sum(c["documents"] for c in known)
    model_scored = sum(scored(c) for c in known)
    return {
        "calls": len(calls), "searches": len({c["search"] for c in calls}),
        "fallbacks": len(calls) - len(answered),
        "fallback_causes": dict(collections.Counter(fallback_cause(c) for c in calls if c["fell_back"])),
        "answered_within_deadline": sum(c["latency_ms"] <= deadline_s * 1000 for c in answered),
        "deadline_s": deadline_s,
        "latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                       "max": max(latencies, default=None)},
        "documents": sum(c["documents"] for c in calls),
        "answered_without_scored_header": len(answered) - len(known_answered),
        "documents_model_scored": model_scored, "documents_of_known_calls": known_documents,
        "model_scored_share": round(model_scored / known_documents, 4) if known_documents else None,
        "model_scored_share_of_answered": (round(sum(scored(c) for c in known_answered)
                                                 / sum(c["documents"] for c in known_answered), 4)
                                           if known_answered else None),
        "tokens_per_answered_call": (round(sum(c["tokens"] or 0 for c in answered) / len(answered), 1)
                                     if answered else None),
    }


# -- the stack, as make serve starts it ---------------------------------------------------------------


@contextlib.contextmanager
def served_stack(model: Path, projector: Path, log_path: Path) -> Iterator[str]:
    """``python -m stack.serve`` on these model files and free ports; yields the adapter's URL once it is ready."""
    ports = {name: free_port() for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT",
                                            "ADAPTER_PORT")}
    env = {**os.environ, **{name: str(port) for name, port in ports.items()}, "RERANKER_MODEL": str(model),
           "RERANKER_PROJECTOR": str(projector)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ready, banner = threading.Event(), []
    process = subprocess.Popen([sys.executable, "-m", "stack.serve"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)

    def copy_output() -> None:  # into the log; the banner (printed once both servers are ready) sets ready
        with log_path.open("w") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if line.startswith("ready: "):
                    banner.append(line)
                    ready.set()
        ready.set()  # the output ended: the process is gone, with or without its banner

    copier = threading.Thread(target=copy_output, daemon=True)
    copier.start()
    try:
        if not ready.wait(SERVE_START_S) or not banner or process.poll() is not None:
            raise RuntimeError(f"python -m stack.serve did not become ready (log: {log_path})")
        yield f"http://127.0.0.1:{ports['ADAPTER_PORT']}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        copier.join(timeout=10)


def check_ready(url: str) -> None:
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/ready", timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"the adapter at {url} is not ready: HTTP {response.status_code}")


# -- command line -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running adapter (default: start python -m stack.serve on the stand-in)")
    parser.add_argument("--searches", type=int, default=SEARCHES, help=f"searches in a row (default {SEARCHES})")
    parser.add_argument("--input-data", type=Path, help=f"a perf_analyzer input-data file (default: {WORKLOAD})")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY") or "librechat-bench",
                        help="sent as JINA_API_KEY (default: $API_KEY, or any key for a service without one)")
    parser.add_argument("--timeout-ms", type=int, help="the client's rerankerTimeout (default: its own, 10 s)")
    parser.add_argument("--label", default="", help="a note stored with the results (what was measured)")
    parser.add_argument("--v35", action="store_true",
                        help="v3's stand-in and v3.5's (sliding-window layers) side by side, searches in turn")
    parser.add_argument("--out", type=Path, help=f"results JSON (default {shown_path(RESULTS)}, with --v35 "
                                                 f"{shown_path(SWA_RESULTS)})")
    parser.add_argument("--client-only", action="store_true", help="install LibreChat's client (once), then exit")
    args = parser.parse_args(argv)
    if args.client_only:
        ensure_client()
        return 0
    if args.searches < 1:
        parser.error("--searches must be >= 1")
    if args.v35 and args.url:
        parser.error("--v35 starts its own two stacks: it takes no --url")
    entries = (from_input_data(json.loads(args.input_data.read_text(encoding="utf-8"))) if args.input_data
               else load(WORKLOAD))
    available = searches_of(entries)
    searches = [available[i % len(available)] for i in range(args.searches)]
    agents_dir = ensure_client()
    run = BenchRun(__spec__.name, argv)
    with contextlib.ExitStack() as stack:
        if args.url:
            check_ready(args.url)
            urls = {"service": args.url}
        else:
            presets = STANDINS if args.v35 else {"v3": PRESET}
            urls = {}
            for label, preset in presets.items():
                print(f"starting python -m stack.serve on the {preset} stand-in (as make serve does) ...", flush=True)
                urls[label] = stack.enter_context(served_stack(*ensure_standin(preset=preset),
                                                               LOGS / f"librechat-serve-{preset}.log"))
        print(f"{len(searches)} searches of {len(searches[0].pages)} pages through {AGENTS_PACKAGE} "
              f"{AGENTS_VERSION}'s Jina reranker at {', '.join(urls.values())}", flush=True)
        if args.v35:
            calls_of = run_in_turn(urls, searches, args.api_key, args.timeout_ms, agents_dir)
        else:
            [url] = urls.values()
            calls = run_client(url, searches, args.api_key, args.timeout_ms, agents_dir)
    results = {
        "label": args.label,
        "client": {"package": AGENTS_PACKAGE, "version": AGENTS_VERSION, "reranker": "jina",
                   "timeout_ms": args.timeout_ms or "client default (10000)"},
        "workload": {"name": args.input_data.stem if args.input_data else WORKLOAD,
                     "searches_in_file": len(available), "pages_per_search": len(searches[0].pages)},
    }
    if args.v35:
        results["target"] = {"started": "python -m stack.serve (make serve's defaults), one per stand-in",
                             "models": {label: f"{preset} Q8_0 stand-in" for label, preset in STANDINS.items()},
                             "order": "each search sent to both in turn, the first alternating"}
        results["summaries"] = {label: summarize(done) for label, done in calls_of.items()}
        results["calls"] = calls_of
        print(f"\n{librechat_comparison(results['summaries'])}")
    else:
        started = {"started": "python -m stack.serve (make serve's defaults)", "model": f"{PRESET} Q8_0 stand-in"}
        results["target"] = {"url": args.url} if args.url else started
        results["summary"], results["calls"] = summarize(calls), calls
        print(f"\n{librechat_summary(results['summary'])}")
    run.write(args.out or (SWA_RESULTS if args.v35 else RESULTS), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
