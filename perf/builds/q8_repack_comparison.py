"""ggml's repacked Q8_0 path against its plain path, same build, side by side (``q8_repack_vs_plain``): the
comparison that perf/builds/q8_repack_bench.py runs on its own and make bench (perf/load/bench.py) in its run;
its table is perf/tables.py's ``q8_repack_table``.

The installed build carries this project's x86 kernels for the repacked Q8_0 path
(stack/patches/ggml-cpu-q8_0-repack-x86.patch). One process loads the stand-in twice with the engine's options,
llama.cpp's extra buffer types on (the repacked weights) and off (the plain path), and times one forward pass
per length on each, taking turns, on the PyTorch peer's token ids and outputs. Where the build has AMX and the
CPU allows it, the extra buffer types are AMX's, not the repacking: there ``repack_build`` names the AVX-512 build
of the same version (built once and cached, as the AMX comparison builds it, perf/builds/amx_comparison.py), and the
passes run in child processes on it, one per path and round, taking turns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from perf.builds import amx_comparison
from perf.common import (
    WARMUP_TOKENS,
    cosine_rows,
    passes_in_turns,
    probe,
    shown_path,
    timed_engine_pass,
    tokens_per_s,
    turns,
)


def repack_build(say: Callable[[str], None] = print) -> Path | None:
    """Where the repacked path can be measured: None for the installed build, unless its extra buffer types are
    AMX's; then the AVX-512 build of the same version, flags and patches (unpacked, for a child's PYTHONPATH)."""
    from rerank_engine.amx_check import amx_in_play

    if not amx_in_play():
        return None
    say("the installed build's extra buffer types are AMX's: the repacking is measured on the AVX-512 build")
    return amx_comparison.build(amx=False, say=say)


def compare(model: Path, options: object, lengths: Sequence[int], rounds: int,
            say: Callable[[str], None] = print, python_path: Path | None = None) -> dict:
    """Tokens/s with the extra buffer types on and off at each length, their ratio, and the hidden states'
    agreement (the smallest row cosine): in this process on the installed build, or with ``python_path`` in
    child processes on the build unpacked there (``repack_build``)."""
    if python_path is not None:
        return _in_children(model, options, lengths, rounds, python_path, say)
    from rerank_engine.amx_check import amx_in_play
    from rerank_engine.llama_runner import LlamaRunner

    runners = {}
    try:
        for repacked in (True, False):
            runners[repacked] = LlamaRunner(str(model), dataclasses.replace(options, extra_buffers=repacked))
            runners[repacked].start()
            timed_engine_pass(runners[repacked], *probe(WARMUP_TOKENS, runners[repacked].n_vocab))
        seconds = {repacked: {n: [] for n in lengths} for repacked in runners}
        cosine = {}
        for n in lengths:
            ids, positions = probe(n, runners[True].n_vocab)
            hidden = {}
            for _, order in turns((True, False), rounds):
                for repacked in order:
                    hidden[repacked], elapsed = timed_engine_pass(runners[repacked], ids, positions)
                    seconds[repacked][n].append(elapsed)
            cosine[str(n)] = round(float(cosine_rows(hidden[True], hidden[False]).min()), 5)
            say(f"{n} tokens: repacked {n / min(seconds[True][n]):.1f} tokens/s, "
                f"plain {n / min(seconds[False][n]):.1f} tokens/s")
    finally:
        for runner in runners.values():
            runner.close()
    return _result("AMX" if amx_in_play() else "Q8_0 repack", "installed", lengths, rounds, seconds, cosine)


def _in_children(model: Path, options: object, lengths: Sequence[int], rounds: int, python_path: Path,
                 say: Callable[[str], None]) -> dict:
    seconds, reports, hidden = passes_in_turns(
        (True, False), rounds, lengths,
        lambda repacked, _: amx_comparison.run_child(
            model, dataclasses.replace(options, extra_buffers=repacked), lengths, python_path),  # type: ignore[type-var]
        lambda repacked: "repacked" if repacked else "plain", say)
    if "AMX_INT8 = 1" in reports[True][-1]["system_info"]:
        raise RuntimeError(f"{python_path} holds an AMX build: its extra buffer types are not the repacking")
    cosine = {str(n): round(float(cosine_rows(hidden[True][n], hidden[False][n]).min()), 5) for n in lengths}
    return _result("Q8_0 repack", shown_path(python_path), lengths, rounds, seconds, cosine) | {
        "system_info": reports[True][-1]["system_info"]}


def _result(extra_buffer_types: str, build: str, lengths: Sequence[int], rounds: int,
            seconds: dict[bool, dict[int, list[float]]], cosine: dict[str, float]) -> dict:
    measured = {("repacked" if repacked else "plain"): {str(n): tokens_per_s(n, seconds[repacked][n])
                                                        for n in lengths} for repacked in seconds}
    return {"extra_buffer_types": extra_buffer_types, "build": build, "rounds": rounds,
            "tokens_per_s": measured, "cosine_min": cosine,
            "q8_repack_vs_plain": {n: round(measured["repacked"][n] / measured["plain"][n], 3)
                                   for n in measured["plain"]}}
