"""`make bench`: the four baselines side by side in one run, a concurrency sweep, and perf/results/cpu-latest.json.

    python -m perf.load.bench                      # quick (default): the short workload, under 5 minutes on 2 cores
    python -m perf.load.bench --mode full          # short, docs-20x400 and long (hours on 2 cores)
    python -m perf.load.bench --mode full --workloads docs-20x400

Same machine, same generated stand-in model (qwen3-0.6b Q8_0), same requests, same engine options (the CPU
Triton config's parameters):

  a  seed_approach  the first plan: model loaded per request, embeddings mode, every token an output
  b  engine         the engine called in-process: the limit for this stack
  c  triton_grpc    through Triton (CPU config) over gRPC, the adapter's protocol; triton_http beside it
  d  adapter        through the adapter (Jina API over HTTP, then gRPC to Triton)

Then, once the servers have stopped, the PyTorch CPU peer (perf/peers/torch_comparison.py): the engine's llama.cpp
forward pass against transformers' Qwen3 in bf16 and fp32 on the same GGUF's weights, in this process (quick:
1,024 tokens; full: 1,024, 3,072 and 8,192 tokens and the engine's CPU knobs), with per-op profiles of both; and
where AMX is usable, llama.cpp's AMX build against its AVX-512 build at the same lengths
(perf/builds/amx_comparison.py); and the installed build's extra buffer types (the repacked Q8_0 weights) on vs off
(perf/builds/q8_repack_comparison.py). Those comparisons are library modules, which perf/peers/torch_peer.py,
perf/builds/amx_bench.py and perf/builds/q8_repack_bench.py also run on their own; the tables printed at the end are
perf/tables.py's, as perf/README.md's (perf/report.py). No bench imports another (tests/test_import_graph.py).

At concurrency 1 the baselines take turns request by request (order rotated each round), so a machine
that slows down during the run slows all of them alike; the ratios compare those turns in tokens/s
(``ratios``: totals over all rounds; ``ratios_median_of_rounds``: the median of each round's ratio,
which one disturbed round cannot move; far apart, they say the run was noisy).
A sweep then raises the concurrency on Triton (gRPC) and the adapter. Every figure in the results file
is measured here; nothing is copied in by hand. Other processes' CPU time during the run is recorded
too (``machine.other_cpu_share``): a share above a few percent means the figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import operator
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from perf import ROOT
from perf.builds import amx_comparison, q8_repack_comparison
from perf.common import (
    CPU_CONFIG,
    LENGTHS,
    PEER_LENGTH,
    PRESET,
    ROUNDS,
    SWEPT,
    engine_config,
    ensure_standin,
    envelope,
    write_results,
)
from perf.load.loadgen import (
    AdapterTarget,
    CallTarget,
    Level,
    Target,
    TritonTarget,
    format_line,
    plot,
    run_level,
    summarize,
    write_csv,
)
from perf.load.seed_approach import SeedApproach
from perf.load.workloads import Entry, ensure_workloads, load, token_stats
from perf.peers import torch_comparison
from perf.peers.qwen3_torch import peer_available
from perf.tables import bench_table
from rerank_engine import Reranker, RerankRequest
from stack.adapter_server import AdapterServer
from stack.processes import free_port
from stack.settings import Settings
from stack.triton_server import TritonServer

RESULTS = ROOT / "perf" / "results" / "cpu-latest.json"
LOGS = ROOT / ".cache" / "perf"
BASELINES = ("seed_approach", "engine", "triton_grpc", "triton_http", "adapter")
# name: (numerator, denominator); b/a, c/b, d/b of the issue, and HTTP beside gRPC.
RATIOS = {"engine_vs_seed_approach": ("engine", "seed_approach"), "triton_vs_engine": ("triton_grpc", "engine"),
          "adapter_vs_engine": ("adapter", "engine"), "triton_http_vs_engine": ("triton_http", "engine")}
TARGETS = {"engine_vs_seed_approach": 1.4, "triton_vs_engine": 0.9, "adapter_vs_engine": 0.9}
# The headline ratios come from the first of these that was measured. (LibreChat's real load, many short chunks
# per request, is measured through its own client by perf/load/librechat_bench.py.)
HEADLINE_ORDER = ("docs-20x400", "short", "long")
# Any target whose scores stray further from the in-process engine's is computing something else.
SCORE_TOLERANCE = 1e-2
TIMEOUT_S = 3600.0


@dataclasses.dataclass(frozen=True)
class WorkloadPlan:
    rounds: int  # concurrency-1 requests per baseline, taken in turns
    sweep: tuple[int, ...]  # further concurrency levels for Triton (gRPC) and the adapter
    requests_per_worker: int  # per sweep level: concurrency x this requests


MODES = {
    # ~7 s per short request on 2 cores: 3 rounds of 5 baselines plus a concurrency-2 level fit in 5 minutes.
    "quick": {"short": WorkloadPlan(rounds=3, sweep=(2,), requests_per_worker=1)},
    "full": {"short": WorkloadPlan(rounds=5, sweep=(2, 4, 8), requests_per_worker=2),
             "docs-20x400": WorkloadPlan(rounds=3, sweep=(2, 4), requests_per_worker=1),
             "long": WorkloadPlan(rounds=2, sweep=(2,), requests_per_worker=1)},
}


# -- peak memory of the Triton server -----------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"no {field} for process {pid}")


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: the parent pid follows the last ')'.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def triton_peak_rss(server_pid: int) -> dict:
    """VmHWM (peak resident set) of tritonserver and of its Python backend stubs, where the model lives."""
    stubs, pending = [], _children(server_pid)
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError):
            if b"triton_python_backend_stub" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                stubs.append(pid)
        pending += _children(pid)
    server = _status_kib(server_pid, "VmHWM") * 1024
    stub = sum(_status_kib(pid, "VmHWM") for pid in stubs) * 1024
    return {"tritonserver_vmhwm_bytes": server, "stub_vmhwm_bytes": stub, "total_bytes": server + stub,
            "stub_processes": len(stubs)}


# -- measuring ----------------------------------------------------------------------------------------


def max_score_difference(target: Target, reference: Target) -> float | None:
    diffs = [float(np.nanmax(np.abs(scores - reference.scores[i]))) for i, scores in target.scores.items()
             if i in reference.scores and not np.all(np.isnan(scores))]
    return max(diffs) if diffs else None


async def measure_workload(name: str, entries: Sequence[Entry], plan: WorkloadPlan, targets: dict[str, Target]
                           ) -> tuple[dict, list[dict]]:
    """The concurrency-1 turns, then the sweep; returns the baselines' summaries and every level's."""
    # No warm-up requests: Triton warms its instance at load, the engine allocates everything when it is
    # created, and open() connects the clients; the seed approach starts cold on every request by design.
    for target in targets.values():
        await target.open(entries)
    rounds: list[dict[str, Level]] = []
    for r in range(plan.rounds):
        order = BASELINES[r % len(BASELINES):] + BASELINES[:r % len(BASELINES)]
        rounds.append({key: await run_level(targets[key], name, 1, 1, first=r) for key in order})
        spent = ", ".join(f"{key} {level.wall_s:.1f} s" for key, level in rounds[-1].items())
        print(f"  {name} round {r + 1}/{plan.rounds}: {spent}", flush=True)
    baselines = {key: summarize(functools.reduce(operator.add, [turns[key] for turns in rounds]))
                 for key in BASELINES}
    for key in BASELINES:
        print(format_line(baselines[key]), flush=True)
    levels = list(baselines.values())
    for key in SWEPT:
        for concurrency in plan.sweep:
            level = summarize(await run_level(targets[key], name, concurrency, concurrency * plan.requests_per_worker))
            print(format_line(level), flush=True)
            levels.append(level)
    agreement = {key: max_score_difference(targets[key], targets["engine"]) for key in BASELINES if key != "engine"}
    for key, difference in agreement.items():
        if difference is None or difference > SCORE_TOLERANCE:
            raise RuntimeError(f"{name}: {key} scores differ from the engine's by {difference} (or none came back)")
    failed = [s for s in [*baselines.values(), *levels] if s["errors"]]
    if failed:
        raise RuntimeError(f"{name}: failed requests in {', '.join(s['target'] for s in failed)}")
    per_round = [ratios({key: summarize(level) for key, level in turns.items()}) for turns in rounds]
    return {"baselines": baselines, "ratios": ratios(baselines),
            "ratios_median_of_rounds": {key: round(statistics.median(r[key] for r in per_round), 3) for key in RATIOS},
            "max_score_difference_vs_engine": agreement}, levels


def ratios(baselines: dict[str, dict]) -> dict[str, float]:
    """Throughput quotients in tokens/s, as named in RATIOS."""
    return {key: round(baselines[a]["tokens_per_s"] / baselines[b]["tokens_per_s"], 3)
            for key, (a, b) in RATIOS.items()}


class CpuAccount:
    """CPU time the whole machine spent busy versus this run's processes (this one and the servers it started).

    The difference is other processes' (and the hypervisor's steal): the noise in the figures.
    """

    def __init__(self) -> None:
        self.wall, self.machine, self.ours = time.monotonic(), self._machine_busy_s(), self._ours_s()

    @staticmethod
    def _machine_busy_s() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours_s() -> float:
        t = os.times()  # children count once they are waited for: read after the servers have stopped
        return t.user + t.system + t.children_user + t.children_system

    def other_share(self) -> float:
        other = (self._machine_busy_s() - self.machine) - (self._ours_s() - self.ours)
        capacity = (time.monotonic() - self.wall) * len(os.sched_getaffinity(0))
        return round(max(other, 0.0) / capacity, 3)


async def run(mode: str, names: Sequence[str], peer: bool = True) -> dict:
    started, load_before, cpu = time.time(), os.getloadavg(), CpuAccount()

    def say(message: str) -> None:
        print(f"[{time.time() - started:5.0f} s] {message}", flush=True)

    if load_before[0] > 0.5 * len(os.sched_getaffinity(0)):
        say(f"warning: load average {load_before[0]:.2f} before starting: other work will make the figures noisy")
    model, projector = ensure_standin()
    ensure_workloads(names, model)
    config = engine_config(model, projector)
    LOGS.mkdir(parents=True, exist_ok=True)
    for log in ("triton.log", "adapter.log"):  # the servers append: keep this run's lines only
        (LOGS / log).unlink(missing_ok=True)
    settings = Settings(model=str(model), projector=str(projector), triton_http_port=free_port(),
                        triton_grpc_port=free_port(), triton_metrics_port=free_port())
    results: dict = {"workloads": {}}
    levels: list[dict] = []
    with contextlib.ExitStack() as stack:
        say(f"starting Triton on the CPU config (log {LOGS / 'triton.log'}) and the adapter")
        triton = stack.enter_context(TritonServer(settings, log_path=LOGS / "triton.log"))
        adapter = AdapterServer(free_port(), triton.grpc_url, LOGS / "adapter.log",
                                extra_env={"REQUEST_TIMEOUT_S": str(TIMEOUT_S)})
        adapter.start()
        stack.callback(adapter.stop)
        adapter.wait_ready()
        engine = Reranker(config)
        stack.callback(engine.close)
        options = engine.runner.options  # as configured, less what the engine's start-up checks turned off
        seed = SeedApproach(str(model), engine.projector, options)
        for name in names:
            plan = MODES[mode].get(name) or MODES["full"][name]
            entries = load(name)
            prompts = [engine.plan(RerankRequest(e.query, e.documents)).prompts for e in entries]

            def run_seed(i: int, prompts: list = prompts) -> tuple[np.ndarray, int]:
                return seed.rerank(prompts[i])

            def run_engine(i: int, entries: list = entries) -> tuple[np.ndarray, int]:
                result = engine.rerank(entries[i].query, entries[i].documents)
                return result.scores, result.tokens

            targets = {"seed_approach": CallTarget("seed_approach", run_seed),
                       "engine": CallTarget("engine", run_engine),
                       "triton_grpc": TritonTarget(triton.grpc_url, "grpc", timeout_s=TIMEOUT_S),
                       "triton_http": TritonTarget(triton.http_url, "http", timeout_s=TIMEOUT_S),
                       "adapter": AdapterTarget(adapter.url, TIMEOUT_S)}
            try:
                say(f"{name}: {len(entries)} requests round robin; {plan.rounds} rounds at concurrency 1, "
                    f"then concurrency {', '.join(map(str, plan.sweep))} for {' and '.join(SWEPT)}")
                measured, measured_levels = await measure_workload(name, entries, plan, targets)
                results.setdefault("triton_server_version", await targets["triton_grpc"].server_version())
            finally:
                for target in targets.values():
                    await target.close()
            measured["texts"] = token_stats(entries, engine.tokenize)
            results["workloads"][name] = measured
            levels += measured_levels
        # Read while the server runs: its peak covers loading, its warm-up and every request above.
        results["triton_peak_rss"] = triton_peak_rss(triton.process.pid)
        say("stopping the servers")
    results["cpu_peer"] = measure_peer(mode, model, options, say) if peer else {"skipped": "--no-peer"}
    results["amx"] = amx_comparison.compare(model, options, LENGTHS[mode], amx_comparison.ROUNDS[mode],
                                            say=lambda message: say(f"amx: {message}"))
    say(f"repacked Q8_0 vs plain at {', '.join(map(str, LENGTHS[mode]))} tokens")
    q8_say = lambda message: say(f"q8 repack: {message}")  # noqa: E731
    results["q8_repack"] = q8_repack_comparison.compare(model, options, LENGTHS[mode], ROUNDS[mode], say=q8_say,
                                                        python_path=q8_repack_comparison.repack_build(q8_say))
    headline = next(name for name in [*HEADLINE_ORDER, *names] if name in results["workloads"])
    command = " ".join(["python -m", __spec__.name, "--mode", mode,
                        *(["--workloads", ",".join(names)] if list(names) != list(MODES[mode]) else [])])
    return {
        **envelope(command, started, load_before, more_machine={"other_cpu_share": cpu.other_share()}),
        "mode": mode,
        "model": {"preset": PRESET, "path": str(model.relative_to(ROOT)), "bytes": model.stat().st_size,
                  "note": "generated stand-in: real Qwen3-0.6B shapes and vocabulary, random weights"},
        "engine_options": {"source": str(CPU_CONFIG.relative_to(ROOT)), **dataclasses.asdict(options),
                           **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                              if f.name not in ("model_path", "projector_path", "llama")}},
        "ratios_workload": headline,
        "ratios": {**results["workloads"][headline]["ratios"], **cpu_ratios(results["cpu_peer"], results["amx"]),
                   "q8_repack_vs_plain": results["q8_repack"]["q8_repack_vs_plain"][PEER_LENGTH]},
        "ratio_notes": {"engine_vs_torch_bf16": PEER_RATIO_NOTE,
                        "amx_vs_avx512": results["amx"].get("skipped", AMX_RATIO_NOTE),
                        "q8_repack_vs_plain": Q8_REPACK_RATIO_NOTE},
        "ratios_median_of_rounds": results["workloads"][headline]["ratios_median_of_rounds"], "ratio_targets": TARGETS,
        "meets_targets": {key: results["workloads"][headline]["ratios"][key] >= target
                          for key, target in TARGETS.items()},
        **results, "levels": levels,
    }


# -- the CPU comparisons' headline ratios: the PyTorch peer, AMX, repacked Q8_0 -----------------------

AMX_RATIO_NOTE = (f"AMX build tokens/s over AVX-512 build tokens/s on {PEER_LENGTH}-token forward passes, same "
                  "version, flags otherwise, ids and options (amx: every length, the self-check's outcome)")
Q8_REPACK_RATIO_NOTE = (f"tokens/s with llama.cpp's extra buffer types (repacked Q8_0 weights) over tokens/s "
                        f"without, same build (on an AMX build: the AVX-512 build beside it), {PEER_LENGTH}-token "
                        "passes (q8_repack: every length)")
PEER_RATIO_NOTE = (f"engine tokens/s over PyTorch bf16 tokens/s on {PEER_LENGTH}-token forward passes, same weights, "
                   "ids and threads (cpu_peer: rounds, profiles; in full mode every length and the knobs)")


def measure_peer(mode: str, model: Path, options: object, say: Callable[[str], None]) -> dict:
    """The PyTorch peer at the mode's lengths, or why it was skipped (torch not installed)."""
    missing = peer_available()
    if missing:
        say(f"warning: PyTorch peer skipped: {missing}")
        return {"skipped": missing}
    lengths = LENGTHS[mode]
    say(f"PyTorch CPU peer: engine vs torch bf16/fp32 at {', '.join(map(str, lengths))} tokens")
    return torch_comparison.compare(model, options, lengths, ROUNDS[mode], profile=True,
                                    knobs=torch_comparison.KNOBS if mode == "full" else None,
                                    say=lambda message: say(f"peer: {message}"))


def cpu_ratios(peer: dict, amx: dict) -> dict[str, float | None]:
    """The two CPU ratios at 1k tokens: engine vs torch bf16, and the AMX build vs the AVX-512 build;
    None where not measured (torch not installed, no AMX here)."""
    return {"engine_vs_torch_bf16": peer.get("ratios", {}).get("engine_vs_torch_bf16", {}).get(PEER_LENGTH),
            "amx_vs_avx512": amx.get("amx_vs_avx512", {}).get(PEER_LENGTH)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--workloads", help=f"comma-separated subset of {', '.join(MODES['full'])} "
                                            "(default: the mode's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON; CSV and PNG are written beside it")
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help="skip the PyTorch CPU peer (perf/peers/torch_comparison.py)")
    args = parser.parse_args(argv)
    names = args.workloads.split(",") if args.workloads else list(MODES[args.mode])
    unknown = sorted(set(names) - set(MODES["full"]))
    if unknown:
        parser.error(f"unknown workloads: {', '.join(unknown)}")
    results = asyncio.run(run(args.mode, names, args.peer))
    write_results(args.out, results)
    write_csv(results["levels"], args.out.with_suffix(".csv"))
    plot(results["levels"], args.out.with_suffix(".png"),
         f"{results['machine']['cpu_model']}, {results['machine']['usable_cpus']} cores, {PRESET} Q8_0 stand-in")
    print(f"\n{bench_table(results)}\n\nmeasured in {results['duration_s']:.0f} s; beside {args.out}: .csv, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
