"""ggml's repacked Q8_0 path against its plain path, same build, side by side (``q8_repack_vs_plain``): the
comparison that perf/q8_repack_bench.py runs on its own and make bench (perf/bench.py) in its run; its table is
perf/tables.py's ``q8_repack_table``.

The installed build carries this project's x86 kernels for the repacked Q8_0 path
(stack/patches/ggml-cpu-q8_0-repack-x86.patch). One process loads the stand-in twice with the engine's options,
llama.cpp's extra buffer types on (the repacked weights) and off (the plain path), and times one forward pass
per length on each, taking turns, on the PyTorch peer's token ids and outputs. Where the build has AMX and the
CPU allows it, the extra buffer types are AMX's, not the repacking: the results say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from perf.common import WARMUP_TOKENS, cosine_rows, probe, timed_engine_pass, tokens_per_s


def compare(model: Path, options: object, lengths: Sequence[int], rounds: int,
            say: Callable[[str], None] = print) -> dict:
    """Tokens/s with the extra buffer types on and off at each length, their ratio, and the hidden states'
    agreement (the smallest row cosine)."""
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
            for r in range(rounds):
                for repacked in ((True, False) if r % 2 == 0 else (False, True)):
                    hidden[repacked], elapsed = timed_engine_pass(runners[repacked], ids, positions)
                    seconds[repacked][n].append(elapsed)
            cosine[str(n)] = round(float(cosine_rows(hidden[True], hidden[False]).min()), 5)
            say(f"{n} tokens: repacked {n / min(seconds[True][n]):.1f} tokens/s, "
                f"plain {n / min(seconds[False][n]):.1f} tokens/s")
    finally:
        for runner in runners.values():
            runner.close()
    measured = {("repacked" if repacked else "plain"): {str(n): tokens_per_s(n, seconds[repacked][n])
                                                        for n in lengths} for repacked in seconds}
    return {"extra_buffer_types": "AMX" if amx_in_play() else "Q8_0 repack", "rounds": rounds,
            "tokens_per_s": measured, "cosine_min": cosine,
            "q8_repack_vs_plain": {n: round(measured["repacked"][n] / measured["plain"][n], 3)
                                   for n in measured["plain"]}}
