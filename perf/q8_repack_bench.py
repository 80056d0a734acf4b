"""ggml's repacked Q8_0 path against its plain path, same build, side by side (``q8_repack_vs_plain``).

The installed build carries this project's x86 kernels for the repacked Q8_0 path
(stack/patches/ggml-cpu-q8_0-repack-x86.patch). One process loads the stand-in twice with the engine's options,
llama.cpp's extra buffer types on (the repacked weights) and off (the plain path), and times one forward pass
per length on each, taking turns, on the PyTorch peer's token ids and outputs. Where the build has AMX and the
CPU allows it, the extra buffer types are AMX's, not the repacking: the results say so.

    python -m perf.q8_repack_bench                # quick: 1,024 tokens
    python -m perf.q8_repack_bench --mode full    # 1,024, 3,072 and 8,192 tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from perf.common import (
    LENGTHS,
    ROUNDS,
    WARMUP_TOKENS,
    cosine_rows,
    engine_config,
    probe,
    timed_engine_pass,
    tokens_per_s,
)
from perf.standin import ensure_standin


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


def table(result: dict) -> str:
    lines = [f"Extra buffer types ({result['extra_buffer_types']}) on vs off, same build:", "",
             "| tokens | plain | repacked | repacked / plain | cosine (min) |", "|---:|---:|---:|---:|---:|"]
    for n, ratio in result["q8_repack_vs_plain"].items():
        lines.append(f"| {n} | {result['tokens_per_s']['plain'][n]:.1f} | {result['tokens_per_s']['repacked'][n]:.1f}"
                     f" | {ratio:.2f} | {result['cosine_min'][n]:.5f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(LENGTHS), default="quick")
    args = parser.parse_args(argv)
    model, projector = ensure_standin()
    result = compare(model, engine_config(model, projector).llama, LENGTHS[args.mode], ROUNDS[args.mode])
    print(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
