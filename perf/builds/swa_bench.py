"""jina-reranker-v3.5's sliding-window layers against v3's global ones, on the qwen3-0.6b stand-in.

    python -m perf.builds.swa_bench                # quick: 1,024 tokens
    python -m perf.builds.swa_bench --mode full    # 1,024, 3,072 and 8,192 tokens: perf/results/cpu-swa.json

The two stand-ins have the same shapes and weights (same seed); the v3.5 one declares a 1,024-token window on
the layers of generate_test_model.v35_pattern. Both run with the CPU Triton config's engine options, in this
process, passes alternating between them so that both see the same load; the median pass per length is kept.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from models.generate_test_model import PRESETS
from perf import ROOT
from perf.common import (
    LENGTHS,
    PRESET,
    BenchRun,
    comparison_arguments,
    engine_config,
    ensure_standin,
    probe,
    timed_engine_pass,
)
from perf.tables import swa_table
from rerank_engine.llama_runner import LlamaRunner

RESULTS = ROOT / "perf" / "results" / "cpu-swa.json"
V35_PRESET = f"{PRESET}-v35"
ROUNDS = {"quick": 2, "full": 3}


def compare(lengths: Sequence[int], rounds: int) -> dict:
    """Median seconds per pass of each stand-in per length, and v3's over v3.5's."""
    runners = {}
    for label, preset in (("v3", PRESET), ("v35", V35_PRESET)):
        model, projector = ensure_standin(preset=preset)
        runner = LlamaRunner(str(model), engine_config(model, projector).llama)
        runner.start()
        runners[label] = runner
    if runners["v35"].sliding_window == 0:
        raise SystemExit("the installed llama.cpp runs the v3.5 stand-in without its window: make install")
    try:
        for runner in runners.values():  # lazy set-up, untimed
            timed_engine_pass(runner, *probe(64, runner.n_vocab))
        results = {}
        for n in lengths:
            ids, positions = probe(n, runners["v3"].n_vocab)
            seconds: dict[str, list[float]] = {label: [] for label in runners}
            for _ in range(rounds):
                for label, runner in runners.items():
                    seconds[label].append(timed_engine_pass(runner, ids, positions)[1])
            v3, v35 = statistics.median(seconds["v3"]), statistics.median(seconds["v35"])
            results[str(n)] = {"v3_s": round(v3, 3), "v35_s": round(v35, 3), "speedup": round(v3 / v35, 3),
                               "v3_all_s": [round(s, 3) for s in seconds["v3"]],
                               "v35_all_s": [round(s, 3) for s in seconds["v35"]]}
            print(f"{n} tokens: v3 {v3:.2f} s, v3.5 {v35:.2f} s ({v3 / v35:.2f}x)", flush=True)
    finally:
        for runner in runners.values():
            runner.close()
    spec = PRESETS[V35_PRESET]
    return {"lengths": results, "rounds": rounds, "window": spec.sliding_window, "layers": spec.n_layer,
            "sliding_layers": sum(spec.sliding_pattern)}


def main(argv: Sequence[str] | None = None) -> int:
    args, out = comparison_arguments(__doc__, RESULTS, argv)
    run = BenchRun(__spec__.name, argv)
    result = compare(LENGTHS[args.mode], ROUNDS[args.mode])
    print(swa_table(result))
    if out:
        run.write(out, {"model": f"{PRESET} / {V35_PRESET}", "swa": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
