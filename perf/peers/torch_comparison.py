"""The PyTorch CPU peer's comparison: the engine's llama.cpp forward pass against a Qwen3 forward in PyTorch,
in one process (run by perf/peers/torch_peer.py on its own, and by make bench, perf/load/bench.py).

Both sides compute the same thing from the same weights, on the same token ids, with the same threads:

  engine      rerank_engine.llama_runner.LlamaRunner with the CPU Triton config's options: the Q8_0 GGUF,
              outputs only at the ~20 probe positions, final-norm hidden states read in the eval callback
  torch_bf16  transformers' Qwen3Model (SDPA attention), config from the GGUF's metadata, weights the GGUF's
              own tensors dequantised with the ``gguf`` package, then held in bfloat16 (perf/peers/qwen3_torch.py)
  torch_fp32  the same model in float32

One forward pass per length and round, no LM head on either side (the engine's runner stops llama.cpp's graph
at the final norm; results before that change show its logits for the 20 output rows as ``lm_head``, 1-2% of a
1k pass), final-norm hidden states at the probe positions. llama.cpp also skips the
last layer's attention output and FFN for rows that are not outputs (~2% of the work); torch computes them.
The hidden states are compared by cosine: the weights are the same values on both sides (the torch side
rounds them to bfloat16 in bf16 mode), but llama.cpp quantises activations to Q8_0 for its matrix products
and keeps the KV cache in the configured type.

The profiles say where each side spends a pass: torch.profiler grouped by aten op (self time), and for
llama.cpp the runner's ``on_node`` observer: the scheduler is asked for every graph node, so each node is
computed on its own and timed (that costs a few percent; the profiled pass's total is reported beside the
plain one). The knobs are engine options worth trying on a CPU, measured side by side against the configured
ones. The tables of the results are perf/tables.py's ``peer_table``.

Nothing here imports torch at module level: the pure parts (grouping, ratios) are tested without it (CI does
not install torch; ``make bench`` installs perf/peers/requirements.txt).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from perf.common import (
    LENGTHS,
    N_OUTPUTS,
    PROFILE_GROUPS,
    WARMUP_TOKENS,
    cosine_rows,
    ensure_standin,
    probe,
    timed_engine_pass,
    tokens_per_s,
)
from perf.peers.qwen3_torch import TorchQwen3

PATHS = ("engine", "torch_bf16", "torch_fp32")

# Engine options worth trying on a CPU, measured against the configured ones in the same run. "weights"
# is not an engine option but the GGUF's type: the stand-in generated again in that type (same shapes).
KNOBS: dict[str, dict[str, object]] = {
    "configured": {},
    "flash_attn off, kv_cache_type f16": {"flash_attn": False, "kv_cache_type": "f16"},
    "flash_attn on, kv_cache_type f16": {"flash_attn": True, "kv_cache_type": "f16"},
    "flash_attn off, kv_cache_type f32": {"flash_attn": False, "kv_cache_type": "f32"},
    "n_ubatch 1024": {"n_ubatch": 1024},
    "n_ubatch 2048": {"n_ubatch": 2048},
    "BF16 GGUF": {"weights": "bf16"},
}

# -- grouping of profiles -------------------------------------------------------------------------------

_GGML_ATTENTION_MATMULS = ("kq", "kqv")  # llama.cpp's names for Q·K^T and softmax(..)·V without flash attention


def ggml_group(op: str, name: str) -> str:
    """Group of a ggml graph node: weight matmuls, attention (scores, softmax, weighted sum), the LM head
    over the output rows, or the rest (norms, RoPE, SwiGLU, adds, KV cache stores, copies)."""
    base = name.split("-", 1)[0]
    if op in ("SOFT_MAX", "FLASH_ATTN_EXT") or (op == "MUL_MAT" and base in _GGML_ATTENTION_MATMULS):
        return "attention"
    if op == "MUL_MAT":
        return "lm_head" if base == "result_output" else "matmul"
    return "other"


def torch_group(op: str) -> str:
    """Group of an aten op by self time: matrix products, attention (SDPA kernels, softmax), the rest."""
    if "attention" in op or "softmax" in op:
        return "attention"
    if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear") or "mkldnn_matmul" in op:
        return "matmul"
    return "other"


def group_times(times: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Seconds per group (every group present), from (group, seconds) pairs."""
    totals = dict.fromkeys(PROFILE_GROUPS, 0.0)
    for group, seconds in times:
        totals[group] += seconds
    return totals


def profile_summary(by_group: Mapping[str, float], by_op: Mapping[str, float], wall_s: float,
                    top: int = 8) -> dict:
    """A profile for the results: seconds and shares per group, the heaviest ops, the profiled wall time."""
    total = sum(by_group.values()) or 1.0
    return {"wall_s": round(wall_s, 3),
            "seconds": {g: round(s, 3) for g, s in by_group.items()},
            "shares": {g: round(s / total, 3) for g, s in by_group.items()},
            "top_ops": [[op, round(s, 3)] for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]]}


def length_ratios(lengths: Mapping[str, dict]) -> dict[str, dict[str, float]]:
    """Engine tokens/s over each torch path's, per length."""
    return {f"engine_vs_{path}": {n: round(m["engine"]["tokens_per_s"] / m[path]["tokens_per_s"], 3)
                                  for n, m in lengths.items()} for path in ("torch_bf16", "torch_fp32")}


# -- the engine side ------------------------------------------------------------------------------------


def engine_profile(model_path: Path, options: object, ids: Sequence[int], positions: Sequence[int]
                   ) -> tuple[dict[str, float], dict[str, float], float]:
    """One pass with every graph node timed (the runner's ``on_node``): seconds per group and per op, and the
    pass's wall time."""
    from rerank_engine.llama_runner import LlamaRunner

    nodes: list[tuple[str, str, float]] = []
    runner = LlamaRunner(str(model_path), options, on_node=lambda *node: nodes.append(node))  # type: ignore[arg-type]
    try:
        runner.start()
        _, wall = timed_engine_pass(runner, ids, positions)
    finally:
        runner.close()
    by_group, by_op = node_times(nodes)
    return by_group, by_op, wall


def node_times(nodes: Iterable[tuple[str, str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per group (every group present) and per op and name (layer numbers dropped) of timed graph nodes."""
    by_op: dict[str, float] = collections.defaultdict(float)
    grouped = []
    for op, name, seconds in nodes:
        grouped.append((ggml_group(op, name), seconds))
        by_op[f"{op} {re.sub(r'-[0-9]+$', '', name)}"] += seconds
    return group_times(grouped), dict(by_op)


# -- the torch side -------------------------------------------------------------------------------------


def torch_profile(peer: TorchQwen3, dtype_name: str, ids: Sequence[int], positions: Sequence[int]) -> dict:
    """One pass of the torch model under torch.profiler, grouped by aten op (self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, seconds = peer.forward(dtype_name, ids, positions)
    by_op: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        by_op[event.key] += event.self_cpu_time_total / 1e6
    by_group = group_times((torch_group(op), s) for op, s in by_op.items())
    return profile_summary(by_group, by_op, seconds)


# -- the comparison -------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"  peer: {message}", flush=True)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def compare(model_path: Path, options: object, lengths: Sequence[int] = LENGTHS["quick"], rounds: int = 1,
            profile: bool = True, knobs: Mapping[str, Mapping[str, object]] | None = None,
            say: Callable[[str], None] = _log) -> dict:
    """Engine against torch bf16 and fp32 at each length, one process, same ids and threads."""
    import torch

    from rerank_engine.llama_runner import LlamaRunner

    threads = options.n_threads or len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    started = time.perf_counter()
    peer = TorchQwen3(model_path, threads)
    build_s = {dtype: peer.build(dtype) for dtype in ("bfloat16", "float32")}
    say(f"torch model from the GGUF: dequantised in {peer.dequantise_s:.1f} s, built in "
        f"{sum(build_s.values()):.1f} s; {torch.get_num_threads()} threads")
    engine = LlamaRunner(str(model_path), options)  # type: ignore[arg-type]
    engine.start()
    runs: dict[str, Callable[[list[int], list[int]], tuple[np.ndarray, float]]] = {
        "engine": lambda ids, pos: timed_engine_pass(engine, ids, pos),
        "torch_bf16": lambda ids, pos: peer.forward("bfloat16", ids, pos),
        "torch_fp32": lambda ids, pos: peer.forward("float32", ids, pos),
    }
    results: dict = {"weights_type": peer.weights_type, "threads": threads,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     **_versions(), "attn_implementation": "sdpa", "outputs_per_pass": N_OUTPUTS,
                     "rounds": rounds, "engine_options": dataclasses.asdict(options),  # type: ignore[call-overload]
                     "load_s": {"dequantise": round(peer.dequantise_s, 1),
                                **{f"torch_{d}": round(s, 1) for d, s in build_s.items()}},
                     "lengths": {}}
    references: dict[int, tuple] = {}  # per length: ids, positions, torch fp32 hidden states (for the knobs)
    try:
        warm_ids, warm_pos = probe(WARMUP_TOKENS, peer.vocab_size)
        for run in runs.values():  # pages in the weights, primes oneDNN's kernels and llama.cpp's buffers
            run(warm_ids, warm_pos)
        for n in lengths:
            ids, positions = probe(n, peer.vocab_size)
            seconds: dict[str, list[float]] = {path: [] for path in PATHS}
            hidden: dict[str, np.ndarray] = {}
            for r in range(rounds):
                order = PATHS[r % len(PATHS):] + PATHS[:r % len(PATHS)]
                for path in order:
                    hidden[path], spent = runs[path](ids, positions)
                    seconds[path].append(spent)
                say(f"{n} tokens, round {r + 1}/{rounds}: "
                    + ", ".join(f"{p} {n / seconds[p][-1]:.1f} tokens/s" for p in PATHS))
            measured: dict = {path: {"tokens_per_s": tokens_per_s(n, s), "seconds": [round(x, 3) for x in s]}
                              for path, s in seconds.items()}
            measured["cosine_vs_engine"] = {}
            for path in ("torch_bf16", "torch_fp32"):
                cos = cosine_rows(hidden[path], hidden["engine"])
                measured["cosine_vs_engine"][path] = {"min": round(float(cos.min()), 5),
                                                      "mean": round(float(cos.mean()), 5)}
            cos = cosine_rows(hidden["torch_bf16"], hidden["torch_fp32"])
            measured["cosine_vs_engine"]["torch_bf16_vs_torch_fp32"] = {"min": round(float(cos.min()), 5),
                                                                        "mean": round(float(cos.mean()), 5)}
            if profile:
                measured["profile"] = _profiles(model_path, options, peer, ids, positions, seconds["engine"])
                say(f"{n} tokens, profile shares: " + "; ".join(
                    f"{side} " + ", ".join(f"{g} {s:.0%}" for g, s in p["shares"].items() if s)
                    for side, p in measured["profile"].items()))
            results["lengths"][str(n)] = measured
            references[n] = (ids, positions, hidden["torch_fp32"])
        results["ratios"] = length_ratios(results["lengths"])
        if knobs:
            engine.close()
            results["knobs"] = _knobs(model_path, options, references, knobs, rounds, say)
    finally:
        engine.close()
    results["duration_s"] = round(time.perf_counter() - started, 1)
    return results


def _profiles(model_path: Path, options: object, peer: TorchQwen3, ids: list[int], positions: list[int],
              plain_engine_s: Sequence[float]) -> dict:
    by_group, by_op, wall = engine_profile(model_path, options, ids, positions)
    engine = profile_summary(by_group, by_op, wall) | {"plain_wall_s": round(min(plain_engine_s), 3)}
    return {"engine": engine, "torch_bf16": torch_profile(peer, "bfloat16", ids, positions)}


def _knobs(model_path: Path, options: object, references: Mapping[int, tuple],
           knobs: Mapping[str, Mapping[str, object]], rounds: int, say: Callable[[str], None]) -> dict:
    """Each option set's tokens/s per length over ``rounds`` passes, and its hidden states' cosine to torch fp32 on
    the same weights (the BF16 stand-in has other random weights: no cosine). Per length and round the sets take
    turns, the order rotated, each pass on a runner of its own (loaded, warmed up, closed)."""
    from rerank_engine.llama_runner import LlamaRunner

    measured: dict[str, dict] = {label: {"changes": dict(changes), "tokens_per_s": {}, "cosine_vs_torch_fp32": {}}
                                 for label, changes in knobs.items()}
    labels = list(knobs)
    for i, (n, (ids, positions, reference)) in enumerate(references.items()):
        seconds: dict[str, list[float]] = {label: [] for label in labels}
        for r in range(rounds):
            shift = (i + r) % len(labels)
            for label in labels[shift:] + labels[:shift]:
                changes = dict(knobs[label])
                weights = changes.pop("weights", None)
                path = ensure_standin(dtype=str(weights))[0] if weights else model_path
                runner = LlamaRunner(str(path), dataclasses.replace(options, **changes))  # type: ignore[type-var]
                try:
                    runner.start()
                    timed_engine_pass(runner, *probe(WARMUP_TOKENS, 1000))  # pages in, as the comparison's warm-up
                    hidden, spent = timed_engine_pass(runner, ids, positions)
                finally:
                    runner.close()
                seconds[label].append(spent)
                if not weights:
                    measured[label]["cosine_vs_torch_fp32"][str(n)] = round(
                        float(cosine_rows(hidden, reference).min()), 5)
                say(f"knob {label!r} at {n} tokens, round {r + 1}/{rounds}: {n / spent:.1f} tokens/s")
        for label in labels:
            measured[label]["tokens_per_s"][str(n)] = tokens_per_s(n, seconds[label])
    base = measured.get("configured")
    for entry in measured.values():
        if base:
            entry["vs_configured"] = {n: round(tps / base["tokens_per_s"][n], 3)
                                      for n, tps in entry["tokens_per_s"].items()}
    return measured

