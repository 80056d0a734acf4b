"""The GPU check's measurements, in one process, on one GPU (run by perf/gpu/gpu_check.sh once it has built
llama.cpp's CUDA libraries and put a ``llama_cpp`` package holding them first on the path).

    perf/gpu/gpu_check.sh run                                     # on the GPU host (builds, then runs this)
    python -m perf.gpu.gpu_check --lengths 1024 --search-rounds 1  # this step alone, with fewer figures
    python -m perf.gpu.gpu_check --smoke                           # no GPU: the script itself, on the CPU

In order, each step's figures kept even when a later one fails:
  fidelity    the engine's reference checks on the GPU (tests/test_engine_reference.py's texts): the tiny F32
              model against the float64 NumPy reference with exact options (hidden states cosine >= 0.99999,
              scores within 1e-4), and the tiny F32 and Q8_0 models with the GPU config's options (Q8_0
              scores within 0.05 and in the reference's order)
  forward     the ``qwen3-0.6b`` Q8_0 stand-in: the engine's forward pass with the GPU config's options at 1k, 3k
              and 8k tokens against transformers' Qwen3 in bfloat16 (SDPA) on the same GPU, weights and token
              ids (perf/peers/qwen3_torch.py, perf/common.py's probe), turns alternating, median of the rounds
  librechat   LibreChat's web search (perf/load/workloads.py ``librechat-search``: five concurrent requests per
              search), in-process with the GPU config's options, ``share_decodes`` on and off: latency per call
              with the search's requests in one batch (as Triton's dynamic batcher hands them over) and alone

Results: perf/results/gpu-<gpu>.json (e.g. gpu-h200.json), with the targets (every search call under 2 s;
engine tokens/s at least 0.8x PyTorch bf16) and whether they were met.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from perf import ROOT, tables
from perf.common import (
    GPU_CONFIG,
    WARMUP_TOKENS,
    command_line,
    cosine_rows,
    engine_config,
    envelope,
    probe,
    timed_engine_pass,
    turns,
    write_results,
)
from perf.peers.qwen3_torch import TorchQwen3, peer_available

if TYPE_CHECKING:  # the engine loads llama.cpp when imported: only once the run has begun
    from rerank_engine import EngineConfig

RESULTS_DIR = ROOT / "perf" / "results"
STEPS = ("fidelity", "forward", "librechat")
LENGTHS = (1024, 3072, 8192)
ROUNDS = 5
SEARCH_ROUNDS = 2
# Preferred first: LibreChat's real requests; the others are stand-ins for a checkout that lacks it.
LIBRECHAT_WORKLOADS = ("librechat-search", "librechat", "docs-20x400")
REQUESTS_PER_SEARCH = 5  # LibreChat reranks a search's five pages in five concurrent requests
LIBRECHAT_BUDGET_S = 100.0  # both settings together; at least one search each, however long it takes
SMOKE_DOCUMENTS = 16  # per request in --smoke: the CPU computes the real searches' 40k-token requests slowly
TARGETS = {"librechat_call_max_s": 2.0, "engine_vs_torch_bf16_min": 0.8}
F32_HIDDEN_COSINE, F32_SCORE_ATOL, Q8_SCORE_ATOL = 0.99999, 1e-4, 0.05


# -- configuration ------------------------------------------------------------------------------------


def gpu_engine_config(model: Path, projector: Path, smoke: bool = False) -> EngineConfig:
    """The engine options the GPU config serves on its first GPU, with these model files (``smoke``: on the
    CPU, as the CPU instance kind would place them, without llama.cpp's extra buffer types: its AMX kernels die
    with SIGILL in a process where PyTorch's bf16 kernels ran first, as seen on an AMX machine)."""
    config = engine_config(model, projector, GPU_CONFIG, "KIND_CPU" if smoke else "KIND_GPU")
    if not smoke:
        return config
    return dataclasses.replace(config, llama=dataclasses.replace(config.llama, extra_buffers=False))


def results_path(gpu_name: str, directory: Path = RESULTS_DIR) -> Path:
    """perf/results/gpu-<name>.json: "NVIDIA H200" -> gpu-h200.json."""
    name = re.sub(r"^nvidia\s+", "", gpu_name.strip(), flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"
    return directory / f"gpu-{slug}.json"


# -- the machine --------------------------------------------------------------------------------------


def gpu_facts() -> dict[str, str]:
    """nvidia-smi's view of the first GPU; empty without one."""
    fields = ("name", "driver_version", "compute_cap", "memory.total", "clocks.max.sm")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    first = out.strip().splitlines()[0] if out.strip() else ""
    return dict(zip(fields, (v.strip() for v in first.split(",")), strict=False))


def gpu_machine(device: str) -> dict:
    """What the GPU check adds to the results envelope's machine (perf.common.machine): the GPU, the device the
    steps ran on, and the builds of numpy, llama.cpp and PyTorch it measured with."""
    import llama_cpp

    info: dict = {"gpu": gpu_facts(), "device": device, "numpy": np.__version__, "llama_cpp_file": llama_cpp.__file__,
                  "llama_supports_gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())}
    with contextlib.suppress(ImportError):
        import torch
        import transformers

        info |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "transformers": transformers.__version__}
    return info


# -- fidelity -----------------------------------------------------------------------------------------


def fidelity(gpu_layers: int, say: Callable[[str], None]) -> dict:
    """The engine's reference checks with every layer where ``gpu_layers`` puts it; each check's figures and
    verdict (``passed``), the tiny models generated here."""
    from models.generate_test_model import PRESETS, generate
    from models.reference_check import DOCS, EXACT, QUERY, Reference, open_engine, words
    from rerank_engine import RerankRequest

    gpu_options = {"n_gpu_layers": gpu_layers, "flash_attn": True, "kv_cache_type": "f16"}
    checks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        f32 = generate(PRESETS["tiny"], "f32", Path(scratch) / "f32")
        q8 = generate(PRESETS["tiny"], "q8_0", Path(scratch) / "q8")
        for label, paths, options in (("f32_exact", f32, {**EXACT, "n_gpu_layers": gpu_layers}),
                                      ("f32_gpu_config", f32, gpu_options), ("q8_gpu_config", q8, gpu_options)):
            engine = open_engine(paths, n_ctx=8192, **options)
            try:
                reference = Reference(paths, engine)
                docs = DOCS if label.startswith("f32") else [*DOCS, *(words(40, seed) for seed in range(10))]
                prompt = engine.plan(RerankRequest(QUERY, docs)).prompts[0]
                [hidden] = engine.runner.hidden_states([prompt.ids], [prompt.output_positions])
                expected_hidden = reference.model.hidden_states(prompt.ids)[prompt.output_positions]
                scores = engine.rerank(QUERY, docs).scores
                expected = reference.rerank(QUERY, docs).scores
            finally:
                engine.close()
            cosine = cosine_rows(hidden, expected_hidden)
            error = float(np.max(np.abs(scores - expected)))
            check = {"options": options, "documents": len(docs), "hidden_cosine_min": round(float(cosine.min()), 8),
                     "score_max_abs_error": error}
            if label == "f32_exact":
                check["passed"] = bool(cosine.min() >= F32_HIDDEN_COSINE and error <= F32_SCORE_ATOL)
            elif label == "q8_gpu_config":
                check["passed"] = bool(error <= Q8_SCORE_ATOL and reference_order_kept(scores, expected))
            checks[label] = check
            say(f"fidelity {label}: hidden cosine min {cosine.min():.8f}, scores max |error| {error:.2e}"
                + (f" -> {'pass' if check['passed'] else 'FAIL'}" if "passed" in check else ""))
    return {"checks": checks, "passed": all(c.get("passed", True) for c in checks.values()),
            "criteria": {"f32_exact": f"hidden cosine >= {F32_HIDDEN_COSINE}, scores within {F32_SCORE_ATOL}",
                         "q8_gpu_config": f"scores within {Q8_SCORE_ATOL}, order of clearly separated documents kept",
                         "f32_gpu_config": "reported only (flash attention and the F16 cache round through F16)"}}


def reference_order_kept(scores: np.ndarray, expected: np.ndarray) -> bool:
    """Whether every pair the reference separates by more than a quarter of its spread keeps its order."""
    spread = expected.max() - expected.min()
    return all(scores[i] > scores[j] for i in range(len(expected)) for j in range(len(expected))
               if expected[i] - expected[j] > 0.25 * spread)


# -- forward passes against PyTorch ------------------------------------------------------------------


class TorchOnDevice:
    """perf/peers/qwen3_torch.py's Qwen3 in bfloat16 (SDPA), moved to ``device``, timed to the device's completion."""

    def __init__(self, model_path: Path, device: str) -> None:
        import torch

        self.torch, self.device = torch, device
        peer = TorchQwen3(model_path, threads=os.cpu_count() or 1)
        self.build_s = peer.build("bfloat16")
        self.model = peer.models["bfloat16"].to(device)
        self.vocab_size = peer.vocab_size
        self.weights_type = peer.weights_type

    def forward(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[np.ndarray, float]:
        torch = self.torch
        with torch.inference_mode():
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
            self._sync()
            start = time.perf_counter()
            hidden = self.model(input_ids=input_ids, use_cache=False).last_hidden_state[0, list(positions)]
            self._sync()
            seconds = time.perf_counter() - start
        return hidden.float().cpu().numpy(), seconds

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


def forward(model: Path, options: object, lengths: Sequence[int], rounds: int, device: str,
            say: Callable[[str], None]) -> dict:
    """Engine and torch bf16 tokens/s per length (median of ``rounds``, turns alternating) and the cosine of
    their hidden states; torch's side is skipped, saying why, where it does not import."""
    from rerank_engine.llama_runner import LlamaRunner

    missing = peer_available()
    runner = LlamaRunner(str(model), options)  # type: ignore[arg-type]
    runner.start()
    peer = None if missing else TorchOnDevice(model, device)
    paths = {"engine": lambda ids, pos: timed_engine_pass(runner, ids, pos)}
    if peer is not None:
        paths["torch_bf16"] = peer.forward
    results: dict = {"rounds": rounds, "lengths": {}, "torch": {"skipped": missing} if missing else
                     {"dtype": "bfloat16", "attn_implementation": "sdpa", "device": device,
                      "build_s": round(peer.build_s, 1)}}
    try:
        for run_path in paths.values():  # pages in the weights, creates kernels, handles and buffers
            run_path(*probe(WARMUP_TOKENS, runner.n_vocab))
        for n in lengths:
            ids, positions = probe(n, runner.n_vocab)
            seconds: dict[str, list[float]] = {p: [] for p in paths}
            hidden: dict[str, np.ndarray] = {}
            for run_path in paths.values():  # one untimed pass per length: what is chosen by shape is set up
                run_path(ids, positions)
            for _, order in turns(list(paths), rounds):
                for path in order:
                    hidden[path], spent = paths[path](ids, positions)
                    seconds[path].append(spent)
            measured: dict = {p: {"tokens_per_s": round(n / float(np.median(s)), 1),
                                  "seconds": [round(x, 4) for x in s]} for p, s in seconds.items()}
            if peer is not None:
                cosine = cosine_rows(hidden["torch_bf16"], hidden["engine"])
                measured["cosine_engine_vs_torch_bf16"] = {"min": round(float(cosine.min()), 5),
                                                           "mean": round(float(cosine.mean()), 5)}
                measured["engine_vs_torch_bf16"] = round(measured["engine"]["tokens_per_s"]
                                                         / measured["torch_bf16"]["tokens_per_s"], 3)
            results["lengths"][str(n)] = measured
            say(f"forward {n} tokens: " + ", ".join(f"{p} {m['tokens_per_s']:.0f} tokens/s"
                                                     for p, m in measured.items() if isinstance(m, dict)
                                                     and "tokens_per_s" in m))
    finally:
        runner.close()
    return results


# -- LibreChat's search -------------------------------------------------------------------------------


def librechat_workload() -> tuple[str, list]:
    """The first of LIBRECHAT_WORKLOADS this checkout has, and its entries."""
    from perf.load.workloads import WORKLOADS, load, path_of

    for name in LIBRECHAT_WORKLOADS:
        if name in WORKLOADS and path_of(name).is_file():
            return name, load(name)
    raise FileNotFoundError(f"none of the workloads {', '.join(LIBRECHAT_WORKLOADS)} is in perf/workloads/")


def searches(entries: Sequence, limit: int | None = None) -> list[list]:
    """Consecutive groups of REQUESTS_PER_SEARCH entries: one LibreChat search each (at most ``limit``)."""
    groups = [list(entries[i:i + REQUESTS_PER_SEARCH]) for i in range(0, len(entries), REQUESTS_PER_SEARCH)]
    groups = [g for g in groups if len(g) == REQUESTS_PER_SEARCH] or [list(entries)]
    return groups[:limit] if limit else groups


def run_search(engine: object, group: Sequence) -> list[tuple[float, int, int]]:
    """One search's requests in one batch, as Triton hands the engine a dynamic batch: (seconds until each
    request's result, its documents, its tokens), in request order."""
    from rerank_engine import RerankRequest

    requests = [RerankRequest(e.query, e.documents) for e in group]
    answered: dict[int, tuple[float, int, int]] = {}
    start = time.perf_counter()
    for index, result in engine.rerank_stream(requests):  # type: ignore[attr-defined]
        if isinstance(result, Exception):
            raise result
        answered[index] = (time.perf_counter() - start, len(requests[index].documents), result.tokens)
    return [answered[i] for i in range(len(requests))]


def librechat(model: Path, projector: Path, smoke: bool, rounds: int, limit: int | None, budget_s: float,
              say: Callable[[str], None]) -> dict:
    """Latency per call, share_decodes on and off: each search's requests batched together, then alone; each
    setting stops after the search that uses up its half of ``budget_s``."""
    from perf.load.loadgen import Level, Sample, summarize
    from rerank_engine import Reranker

    name, entries = librechat_workload()
    if smoke:
        entries = [dataclasses.replace(e, documents=e.documents[:SMOKE_DOCUMENTS]) for e in entries]
    groups = searches(entries, limit)
    base = gpu_engine_config(model, projector, smoke)
    results: dict = {"workload": name, "searches": len(groups), "requests_per_search": len(groups[0]),
                     "rounds": rounds, "budget_s": budget_s}
    if name != LIBRECHAT_WORKLOADS[0]:
        results["note"] = f"{LIBRECHAT_WORKLOADS[0]} is not in this checkout: {name} stands in for it"
    for share in (True, False):
        config = dataclasses.replace(base, llama=dataclasses.replace(base.llama, share_decodes=share))
        engine = Reranker(config)
        try:
            run_search(engine, groups[0])  # warm-up: the context's buffers reach their largest shapes
            batched: list[Sample] = []
            alone: list[Sample] = []
            wall = {"search": 0.0, "alone": 0.0}
            deadline = time.perf_counter() + budget_s / 2
            measured = 0
            for group in [g for _ in range(rounds) for g in groups]:
                if measured and time.perf_counter() > deadline:
                    break
                measured += 1
                started = time.perf_counter()
                batched += [Sample(s, d, t) for s, d, t in run_search(engine, group)]
                wall["search"] += time.perf_counter() - started
                started = time.perf_counter()
                for entry in group:
                    alone += [Sample(s, d, t) for s, d, t in run_search(engine, [entry])]
                wall["alone"] += time.perf_counter() - started
        finally:
            engine.close()
        key = f"share_decodes_{'on' if share else 'off'}"
        results[key] = {
            "searches_measured": measured,
            "search_batch": summarize(Level(key, name, len(groups[0]), wall["search"], tuple(batched))),
            "alone": summarize(Level(key, name, 1, wall["alone"], tuple(alone)))}
        lat = results[key]["search_batch"]["latency_ms"]
        say(f"librechat {key}: a search's calls batched p50 {lat['p50'] / 1000:.3f} s, p99 {lat['p99'] / 1000:.3f} s, "
            f"max {lat['max'] / 1000:.3f} s; alone p50 {results[key]['alone']['latency_ms']['p50'] / 1000:.3f} s")
    return results


# -- the run ------------------------------------------------------------------------------------------


def verdicts(results: Mapping) -> dict[str, bool | None]:
    """Each target met or not (the search's calls batched, as Triton serves them); None where not measured."""
    search = results.get("librechat", {})
    ratios = [m["engine_vs_torch_bf16"] for m in results.get("forward", {}).get("lengths", {}).values()
              if "engine_vs_torch_bf16" in m]
    met: dict[str, bool | None] = {
        f"librechat_every_call_under_2s_{key}": search[key]["search_batch"]["latency_ms"]["max"] / 1000
        < TARGETS["librechat_call_max_s"] if key in search else None
        for key in ("share_decodes_on", "share_decodes_off")}
    met["engine_at_least_0.8x_torch_bf16_every_length"] = (
        min(ratios) >= TARGETS["engine_vs_torch_bf16_min"] if ratios else None)
    return met


def run(args: argparse.Namespace, say: Callable[[str], None], checkpoint: Callable[[dict], object]) -> dict:
    """Every step in order, ``checkpoint`` called with the results after each (a run stopped by a time limit keeps
    what it measured); a step that fails records its error and the rest still run."""
    from perf.common import ensure_standin

    device = "cpu" if args.smoke else "cuda"
    results: dict = {"machine": gpu_machine(device)}
    if not args.smoke and not results["machine"]["llama_supports_gpu_offload"]:
        raise RuntimeError(f"{results['machine']['llama_cpp_file']}: this llama_cpp was built without GPU offload")
    if args.smoke:
        from models.generate_test_model import PRESETS, generate

        with tempfile.TemporaryDirectory() as scratch:
            return measure(args, say, checkpoint, results, generate(PRESETS["tiny"], "q8_0", Path(scratch)))
    return measure(args, say, checkpoint, results, ensure_standin())


def measure(args: argparse.Namespace, say: Callable[[str], None], checkpoint: Callable[[dict], object],
            results: dict, model_files: tuple[Path, Path]) -> dict:
    """The steps of ``run`` on these (model, projector) files, their results added to ``results``."""
    from perf.common import PRESET

    model, projector = model_files
    device, gpu_layers = ("cpu", 0) if args.smoke else ("cuda", -1)
    steps: dict[str, Callable[[], dict]] = {"fidelity": lambda: fidelity(gpu_layers, say)}
    results["model"] = {"preset": "tiny" if args.smoke else PRESET, "bytes": model.stat().st_size,
                        "note": "generated stand-in: real shapes and vocabulary, random weights"}
    options = gpu_engine_config(model, projector, args.smoke).llama
    results["engine_options"] = {"source": str(GPU_CONFIG.relative_to(ROOT)), **dataclasses.asdict(options)}
    steps["forward"] = lambda: forward(model, options, args.lengths, args.rounds, device, say)
    steps["librechat"] = lambda: librechat(model, projector, args.smoke, args.search_rounds, args.searches,
                                           args.librechat_budget_s, say)
    for name, step in steps.items():
        if name not in args.steps:
            continue
        started = time.perf_counter()
        try:
            results[name] = step() | {"duration_s": round(time.perf_counter() - started, 1)}
        except Exception as error:  # recorded, and the next step runs: one run of the machine gets all it can
            say(f"{name} failed: {error!r}")
            results[name] = {"error": repr(error)}
        checkpoint(results)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def lengths(text: str) -> tuple[int, ...]:
        values = tuple(int(x) for x in text.split(","))
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError("token counts must be positive integers")
        return values

    def steps(text: str) -> tuple[str, ...]:
        names = tuple(text.split(","))
        if not set(names) <= set(STEPS):
            raise argparse.ArgumentTypeError(f"steps are {', '.join(STEPS)}")
        return names

    parser.add_argument("--lengths", type=lengths, default=LENGTHS, help="forward pass lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed forward passes per side and length")
    parser.add_argument("--search-rounds", type=int, default=SEARCH_ROUNDS, help="passes over the searches")
    parser.add_argument("--searches", type=int, default=None, help="LibreChat searches to use (default: all)")
    parser.add_argument("--librechat-budget-s", type=float, default=LIBRECHAT_BUDGET_S,
                        help="seconds for the LibreChat step's timed searches, both settings together")
    parser.add_argument("--steps", type=steps, default=STEPS, help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU needed: every step on the CPU, tiny model (checks the script, not the GPU)")
    parser.add_argument("--build-info", type=Path, help="build.json from perf/gpu/gpu_check.sh (the build's time)")
    parser.add_argument("--revision", type=Path, help="revision.json from perf/gpu/gpu_check_prepare.py")
    parser.add_argument("--out", type=Path, help="results JSON (default: perf/results/gpu-<gpu>.json)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.search_rounds < 1 or (args.searches is not None and args.searches < 1):
        parser.error("--rounds, --search-rounds and --searches must be at least 1")
    if args.smoke:
        args.lengths = tuple(min(n, 512) for n in args.lengths)
    return args


def _read_json(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.time(), os.getloadavg()

    def say(message: str) -> None:
        print(f"[{time.time() - started:5.0f} s] {message}", flush=True)

    command = command_line(__spec__.name, argv)
    command = f"perf/gpu/gpu_check.sh run, which ran: {command}" if args.build_info else command
    out = args.out or (RESULTS_DIR / "gpu-smoke.json" if args.smoke else results_path(gpu_facts().get("name", "")))

    def finished(results: dict, complete: bool) -> dict:
        """The results so far in their envelope (the commit as perf/gpu/gpu_check_prepare.py read it, where given)."""
        measured = {key: value for key, value in results.items() if key != "machine"}
        return (envelope(command, started, load_before, more_machine=results["machine"],
                         measured_revision=_read_json(args.revision))
                | {"build": _read_json(args.build_info), "complete": complete, **measured, "targets": TARGETS,
                   "meets_targets": verdicts(results)})

    results = finished(run(args, say, lambda partial: write_results(out, finished(partial, False))), True)
    write_results(out, results)
    failed = [name for name in args.steps if "error" in results[name]]
    fidelity_passed = results.get("fidelity", {}).get("passed")
    build = results["build"] or {}
    built = f"CUDA libraries built in {build['seconds']} s on {build['jobs']} cores; " if "seconds" in build else ""
    print(f"\n{tables.gpu_table(results)}\n\n{built}fidelity passed: {fidelity_passed}; targets: "
          f"{json.dumps(results['meets_targets'])}\nwrote {out}" + (f"\nfailed steps: {', '.join(failed)}"
                                                                    if failed else ""))
    return 1 if failed or fidelity_passed is False else 0


if __name__ == "__main__":
    sys.exit(main())
