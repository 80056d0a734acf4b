"""`make bench-aiperf`: NVIDIA's AIPerf and perf/load/loadgen.py on the same requests, same server, one run.

    python -m perf.aiperf.aiperf_bench                  # starts Triton (CPU config) and the adapter on the stand-in
    python -m perf.aiperf.aiperf_bench --workloads short,librechat-search --concurrency 1,5
    python -m perf.aiperf.aiperf_bench --adapter-url http://host:8080 --triton-url host:8000   # a running deployment

Per target, workload and concurrency, each client sends the same requests, the workload's first entries in
order, with that many in flight: AIPerf (``aiperf profile``, from its own virtualenv, .cache/aiperf-venv) from
perf/aiperf/ (perf/aiperf/aiperf_dataset.py), perf/load/loadgen.py from perf/workloads/. Each runs twice on half the
requests, in the order A B B A, A alternating from level to level, so a machine whose load drifts during a
level favours neither. Targets:

  adapter  POST /v1/rerank with LibreChat's body: AIPerf's ``cohere-rankings`` endpoint type
  triton   Triton's HTTP port, KServe v2: AIPerf's ``raw`` endpoint type sends the JSON requests of
           <workload>-triton.json as they are (tritonclient, in perf/load/loadgen.py, sends the same tensors in
           the binary-data extension)

AIPerf counts tokens with a tokenizer made here from the stand-in's vocabulary (perf/aiperf/aiperf_tokenizer.py),
so it never asks a model hub; it runs with a dead HTTP proxy for every host but the servers', so a download
attempt would fail the run instead of passing unnoticed. The run checks that tokenizer against the engine's.
AIPerf 0.13's timing manager waits for a free slot by yielding to its event loop in a loop: a busy wait. On a
machine that also runs the server, a process that never sleeps preempts one of llama.cpp's threads, and the
other waits for it at every barrier; so the run records AIPerf's CPU inside its window, and measures the effect
itself: our load generator at concurrency 1 alone and beside such a spinning process (``busy_wait_check``).

Writes perf/results/aiperf-latest.json: per level both clients' requests/s (AIPerf's: its own count over its
own benchmark durations), p50 and p99 latency (nearest-rank, as perf/load/loadgen.py reports them, for AIPerf over
the latencies in its per-request records; its own interpolated percentiles per run are kept under ``runs``),
each client's CPU time, the load average, and the AIPerf / loadgen ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import itertools
import json
import operator
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from perf import ROOT
from perf.aiperf import aiperf_dataset
from perf.aiperf.aiperf_tokenizer import ensure_tokenizer
from perf.common import command_line, envelope, write_results
from perf.load.loadgen import (
    LIBRECHAT_MODEL,
    MODEL,
    AdapterTarget,
    Level,
    Target,
    TritonTarget,
    format_line,
    percentile,
    run_level,
    summarize,
)
from perf.load.workloads import WORKLOADS, Entry, load, model_tokenizer
from perf.tables import aiperf_table

AIPERF = ROOT / ".cache" / "aiperf-venv" / "bin" / "aiperf"
RUNS = ROOT / ".cache" / "aiperf" / "runs"
RESULTS = ROOT / "perf" / "results" / "aiperf-latest.json"
# 5: the pages of one LibreChat web search, reranked at the same moment (shared/notes/clients.md).
CONCURRENCIES = (1, 5)
REQUESTS_PER_WORKER, MIN_REQUESTS = 2, 4
TIMEOUT_S = 3600.0
AGREEMENT = 0.10  # the bar for requests/s
TARGETS = ("adapter", "triton")
# KServe v2 JSON: a response counts as answered when it carries the SCORES tensor's data.
TRITON_RESPONSE_FIELD = "outputs[?name=='SCORES'].data | [0]"


# -- AIPerf -------------------------------------------------------------------------------------------


def aiperf_command(target: str, url: str, dataset: Path, concurrency: int, requests: int, artifacts: Path,
                   tokenizer: Path, api_key: str = "") -> list[str]:
    """``aiperf profile`` for one level: the dataset's requests in order, ``concurrency`` in flight."""
    command = [str(AIPERF), "profile", "--url", url, "--input-file", str(dataset), "--tokenizer", str(tokenizer),
               "--concurrency", str(concurrency), "--request-count", str(requests),
               "--request-timeout-seconds", str(TIMEOUT_S), "--artifact-dir", str(artifacts), "--ui-type", "none",
               # No scraping of the server's metrics or GPU telemetry: load on the server and CPU here.
               "--no-server-metrics", "--no-gpu-telemetry"]
    if target == "adapter":
        command += ["--endpoint-type", "cohere-rankings", "--endpoint", "/v1/rerank", "--model", LIBRECHAT_MODEL,
                    "--custom-dataset-type", "single_turn"]
        if api_key:
            command += ["--api-key", api_key]
    else:
        command += ["--endpoint-type", "raw", "--endpoint", f"/v2/models/{MODEL}/infer", "--model", MODEL,
                    "--custom-dataset-type", "inputs_json",
                    "--extra-inputs", json.dumps({"response_field": TRITON_RESPONSE_FIELD})]
    return command


def offline_environment(server_urls: Sequence[str]) -> dict[str, str]:
    """AIPerf's environment: the servers reached directly, anything else through a proxy that refuses."""
    hosts = sorted({"127.0.0.1", "localhost", *(urlsplit(u).hostname or "" for u in server_urls)} - {""})
    dead = "http://127.0.0.1:9"
    return {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
            "NO_PROXY": ",".join(hosts), "no_proxy": ",".join(hosts), "HF_HUB_DISABLE_TELEMETRY": "1"}


def read_aiperf(artifacts: Path) -> dict:
    """One AIPerf run: its own aggregates, and the latency of each answered request from its per-request records."""
    aggregate = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    latencies, errors = [], 0
    for line in (artifacts / "profile_export.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["metadata"].get("benchmark_phase") != "profiling":
            continue
        if record.get("error"):
            errors += 1
        else:
            latencies.append(record["metrics"]["request_latency"]["value"])
    own = aggregate["request_latency"]
    return {"requests": len(latencies), "errors": errors, "wall_s": aggregate["benchmark_duration"]["avg"],
            "latencies_ms": latencies, **{key: datetime.datetime.fromisoformat(aggregate[f"{key}_time"]).timestamp()
                                          for key in ("start", "end")},
            "own": {"requests_per_s": round(aggregate["request_throughput"]["avg"], 4),
                    "latency_p50_ms": round(own["p50"], 1), "latency_p99_ms": round(own["p99"], 1)}}


def session_cpu_s(session: int) -> float:
    """CPU time (user + system) of the live processes of a session: AIPerf and the services it spawns."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the command name may hold spaces
            if int(fields[3]) == session:
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_between(samples: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """CPU seconds spent between two times, from (time, cumulative CPU) samples, interpolated linearly."""
    def at(t: float) -> float | None:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
        return None

    first, last = at(start), at(end)
    return None if first is None or last is None else last - first


def run_aiperf(command: list[str], artifacts: Path, env: dict[str, str]) -> dict:
    """One ``aiperf profile``; also the CPU its processes used inside its benchmark window, sampled twice a
    second (on a small machine, CPU the server it measures did not get)."""
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    samples = []
    with (artifacts / "console.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
        while True:
            samples.append((time.time(), session_cpu_s(process.pid)))
            try:
                returncode = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    if returncode != 0 or not (artifacts / "profile_export_aiperf.json").is_file():
        tail = "\n".join((artifacts / "console.log").read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"aiperf exited with {returncode} (log {artifacts / 'console.log'}):\n{tail}")
    run = read_aiperf(artifacts)
    return run | {"client_cpu_s": cpu_between(samples, run["start"], run["end"])}


def combine_aiperf(runs: Sequence[dict]) -> dict:
    """A level's AIPerf runs as one: answered requests over the runs' benchmark durations (AIPerf's own
    throughput, summed), and nearest-rank percentiles over every answered request, as perf/load/loadgen.py reports."""
    latencies = [x for run in runs for x in run["latencies_ms"]]
    requests, wall = len(latencies), sum(run["wall_s"] for run in runs)
    return {"requests": requests, "errors": sum(run["errors"] for run in runs), "wall_s": round(wall, 3),
            "requests_per_s": round(requests / wall, 4) if requests and wall else 0.0,
            "latency_ms": {f"p{q}": round(percentile(latencies, q), 1) if latencies else None for q in (50, 99)},
            "client_cpu_s": None if any(run["client_cpu_s"] is None for run in runs)
            else round(sum(run["client_cpu_s"] for run in runs), 1),
            "runs": [{"requests": run["requests"], "wall_s": round(run["wall_s"], 3), **run["own"]} for run in runs]}


# -- our load generator -------------------------------------------------------------------------------


def loadgen_figures(levels: Sequence[Level], client_cpu_s: float) -> dict:
    """A level's loadgen runs as one, with the same figures as ``combine_aiperf``."""
    level = functools.reduce(operator.add, levels)
    summary = summarize(level)
    print(format_line(summary), flush=True)
    return {"requests": summary["requests"], "errors": summary["errors"], "wall_s": summary["wall_s"],
            "requests_per_s": summary["requests_per_s"], "tokens_per_request": summary["tokens_per_request"],
            "latency_ms": {q: summary["latency_ms"][q] for q in ("p50", "p99")},
            "client_cpu_s": round(client_cpu_s, 1),
            "first_error": next((s.error for s in level.samples if s.error), None)}


# -- comparing ----------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def compare(aiperf: dict, loadgen: dict) -> dict:
    """AIPerf over loadgen for requests/s and latency, and whether the throughputs agree within AGREEMENT."""
    ratios = {"requests_per_s": ratio(aiperf["requests_per_s"], loadgen["requests_per_s"]),
              **{f"latency_{q}": ratio(aiperf["latency_ms"][q], loadgen["latency_ms"][q]) for q in ("p50", "p99")}}
    throughput = ratios["requests_per_s"]
    return {"ratios": ratios, "throughput_agrees": throughput is not None and abs(throughput - 1) <= AGREEMENT}


# An asyncio loop that only yields to itself, as AIPerf's timing manager does while every slot is taken.
SPINNER = "import asyncio\nasync def spin():\n    while True:\n        await asyncio.sleep(0)\nasyncio.run(spin())"


async def busy_wait_check(target: Target, name: str, requests: int = 2) -> dict:
    """Our load generator at concurrency 1, alone and beside a busy-waiting process, in the order A B B A:
    how much a client that spins on the server's machine slows the server."""
    runs: dict[str, list[Level]] = {"alone": [], "beside_spinner": []}
    for which in ("alone", "beside_spinner", "beside_spinner", "alone"):
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER]) if which == "beside_spinner" else None
        try:
            runs[which].append(await run_level(target, name, 1, requests))
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    alone, beside = (summarize(functools.reduce(operator.add, levels))["requests_per_s"] for levels in runs.values())
    return {"target": target.name, "workload": name, "requests_per_s_alone": alone,
            "requests_per_s_beside_spinner": beside, "ratio": ratio(beside, alone)}


def aiperf_version() -> str:
    return subprocess.run([str(AIPERF.with_name("python")), "-c", "import aiperf; print(aiperf.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def requests_at(concurrency: int) -> int:
    """Requests per client and level: an even number (two halves), at least two rounds of the concurrency."""
    return max(MIN_REQUESTS, concurrency * REQUESTS_PER_WORKER)


def tokenizer_agreement(tokenizer: Path, entries: Sequence[Entry], model: Path) -> dict:
    """Token counts of the workload's texts: AIPerf's tokenizer (in its virtualenv) against the engine's."""
    texts = sorted({t for e in entries for t in (e.query, *e.documents)})
    script = ("import json, sys\nfrom transformers import AutoTokenizer\n"
              "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
              "print(json.dumps([len(t.encode(s, add_special_tokens=False)) for s in json.load(sys.stdin)]))")
    python = AIPERF.with_name("python")
    ours = subprocess.run([str(python), "-c", script, str(tokenizer)], input=json.dumps(texts), capture_output=True,
                          text=True, check=True, env=offline_environment([])).stdout
    tokenize, release = model_tokenizer(model)
    try:
        engine = [len(tokenize(t)) for t in texts]
    finally:
        release()
    differences = [abs(a - b) for a, b in zip(json.loads(ours), engine, strict=True)]
    return {"texts": len(texts), "equal_counts": sum(d == 0 for d in differences), "max_difference": max(differences)}


# -- the run ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_stack() -> Iterator[tuple[str, str, Callable[[], None]]]:
    """Triton on the CPU config and the adapter, on the stand-in, on free loopback ports (as `make bench`), and a
    check that raises if either has exited."""
    from perf.common import ensure_standin
    from stack.adapter_server import AdapterServer
    from stack.processes import free_port
    from stack.settings import Settings
    from stack.triton_server import TritonServer

    model, projector = ensure_standin()
    logs = ROOT / ".cache" / "aiperf"
    logs.mkdir(parents=True, exist_ok=True)
    settings = Settings(model=str(model), projector=str(projector), triton_http_port=free_port(),
                        triton_grpc_port=free_port(), triton_metrics_port=free_port())
    with TritonServer(settings, log_path=logs / "triton.log") as triton:
        # Every request does all its work, as in `make bench`: the adapter's deadline would cut long ones short.
        adapter = AdapterServer(free_port(), triton.grpc_url, logs / "adapter.log",
                                extra_env={"REQUEST_TIMEOUT_S": str(TIMEOUT_S)})
        adapter.start()
        try:
            adapter.wait_ready()

            def check() -> None:
                for server in (triton, adapter):
                    if not server.running():
                        raise RuntimeError(f"{server.name} exited during the run:\n{server.log_tail()}")

            yield adapter.url, triton.http_url, check
        finally:
            adapter.stop()


async def measure(urls: dict[str, str], names: Sequence[str], concurrencies: Sequence[int], tokenizer: Path,
                  api_key: str, say: Callable[[str], None], check: Callable[[], None]) -> tuple[list[dict], dict]:
    """Per level, each client runs twice on half the requests, in the order A B B A (which client is A
    alternates from level to level), so a machine that speeds up or slows down during a level favours neither.
    Then, on the first target and workload, ``busy_wait_check``."""
    levels, turn, spin = [], 0, {}
    env = offline_environment([u if "://" in u else f"http://{u}" for u in urls.values()])
    for target_name, url in urls.items():
        for name in names:
            entries = load(name)
            if target_name == "adapter":
                target: Target = AdapterTarget(url, TIMEOUT_S, api_key)
                dataset, aiperf_url = aiperf_dataset.adapter_path(name), url
            else:
                target = TritonTarget(url, "http", timeout_s=TIMEOUT_S)
                dataset, aiperf_url = aiperf_dataset.triton_path(name), f"http://{url}"
            await target.open(entries)
            try:
                for concurrency in concurrencies:
                    requests = requests_at(concurrency)
                    first, second = ("aiperf", "loadgen") if turn % 2 == 0 else ("loadgen", "aiperf")
                    turn += 1
                    say(f"{target_name} {name} concurrency {concurrency}: {requests} requests per client, "
                        f"in halves, {first} {second} {second} {first}")
                    load_before = os.getloadavg()[0]
                    aiperf_runs: list[dict] = []
                    loadgen_levels: list[Level] = []
                    loadgen_cpu = 0.0
                    for i, client in enumerate((first, second, second, first)):
                        if client == "aiperf":
                            artifacts = RUNS / f"{target_name}-{name}-c{concurrency}-{i}"
                            run = run_aiperf(aiperf_command(target_name, aiperf_url, dataset, concurrency,
                                                            requests // 2, artifacts, tokenizer, api_key),
                                             artifacts, env)
                            aiperf_runs.append(run)
                            say(f"  aiperf: {json.dumps(run['own'])} ({run['errors']} errors)")
                        else:
                            cpu = time.process_time()
                            loadgen_levels.append(await run_level(target, name, concurrency, requests // 2))
                            loadgen_cpu += time.process_time() - cpu
                    aiperf, loadgen = combine_aiperf(aiperf_runs), loadgen_figures(loadgen_levels, loadgen_cpu)
                    level = {"target": target_name, "workload": name, "concurrency": concurrency,
                             "requests": requests, "aiperf": aiperf, "loadgen": loadgen, **compare(aiperf, loadgen),
                             "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
                    say(f"  AIPerf / loadgen: {json.dumps(level['ratios'])}")
                    levels.append(level)
                    check()
                if not spin:
                    say(f"{target_name} {name}: loadgen at concurrency 1 alone and beside a busy-waiting process")
                    spin = await busy_wait_check(target, name)
                    say(f"  {json.dumps(spin)}")
                    check()
            finally:
                await target.close()
    return levels, spin


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="short", help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)), help="comma-separated levels")
    parser.add_argument("--targets", default=",".join(TARGETS), help="adapter, triton or both")
    parser.add_argument("--adapter-url", help="a running adapter, http://host:port (default: start the stack)")
    parser.add_argument("--triton-url", help="its Triton's HTTP port, host:port (with --adapter-url)")
    parser.add_argument("--api-key", default="", help="the adapter's API_KEY, if it has one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names, targets = args.workloads.split(","), args.targets.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if sorted(set(names) - set(WORKLOADS)) or sorted(set(targets) - set(TARGETS)):
        parser.error(f"workloads are {', '.join(WORKLOADS)}; targets are {', '.join(TARGETS)}")
    if args.adapter_url and "triton" in targets and not args.triton_url:
        parser.error("--adapter-url with the triton target needs --triton-url (or --targets adapter)")
    if not AIPERF.is_file():
        parser.error(f"no {AIPERF}: run `make bench-aiperf`, which installs AIPerf there")
    stale = [str(p) for name in names for p in aiperf_dataset.differing(name, load(name))]
    if stale:
        parser.error(f"AIPerf datasets differ from perf/workloads/: {', '.join(stale)}; "
                     "run python -m perf.aiperf.aiperf_dataset")
    started, load_before = time.time(), os.getloadavg()

    def say(message: str) -> None:
        print(f"[{time.time() - started:5.0f} s] {message}", flush=True)

    from perf.common import ensure_standin

    tokenizer = ensure_tokenizer()
    model = ensure_standin()[0]
    checks = {name: tokenizer_agreement(tokenizer, load(name), model) for name in names}
    say(f"AIPerf's tokenizer ({tokenizer}) against the engine's: {json.dumps(checks)}")
    with contextlib.ExitStack() as stack:
        if args.adapter_url:
            urls, check = {"adapter": args.adapter_url, "triton": args.triton_url}, lambda: None
        else:
            say("starting Triton (CPU config) and the adapter on the stand-in (logs in .cache/aiperf/)")
            adapter_url, triton_url, check = stack.enter_context(local_stack())
            urls = {"adapter": adapter_url, "triton": triton_url}
        urls = {key: urls[key] for key in TARGETS if key in targets}
        levels, spin = asyncio.run(measure(urls, names, concurrencies, tokenizer, args.api_key, say, check))
    head = envelope(command_line(__spec__.name, argv), started, load_before)
    results = {
        "servers": "started here: Triton CPU config + adapter, qwen3-0.6b Q8_0 stand-in" if not args.adapter_url
        else {"adapter": args.adapter_url, "triton": args.triton_url},
        "aiperf_version": aiperf_version(),
        "tokenizer_vs_engine": checks, "agreement_bar": AGREEMENT,
        "all_throughputs_agree": all(v["throughput_agrees"] for v in levels), "busy_wait_check": spin,
        "levels": levels,
    }
    write_results(args.out, head | results)
    print(f"\n{aiperf_table(levels)}\n\nloadgen beside a busy-waiting process / alone: {spin.get('ratio')} requests/s "
          f"({spin.get('target')}, {spin.get('workload')}, concurrency 1)\n"
          f"measured in {head['duration_s']:.0f} s")
    return 0 if all(v["aiperf"]["errors"] == 0 and v["loadgen"]["errors"] == 0 for v in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
