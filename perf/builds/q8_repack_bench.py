"""ggml's repacked Q8_0 path against its plain path on its own (``q8_repack_vs_plain``):
perf/builds/q8_repack_comparison.py's comparison, its results and table (perf/tables.py) printed.

    python -m perf.builds.q8_repack_bench                # quick: 1,024 tokens
    python -m perf.builds.q8_repack_bench --mode full  # 1,024, 3,072 and 8,192 tokens: perf/results/cpu-q8-repack.json
"""

from __future__ import annotations

from collections.abc import Sequence

from perf import ROOT
from perf.builds import q8_repack_comparison
from perf.common import (
    LENGTHS,
    PRESET,
    ROUNDS,
    BenchRun,
    comparison_arguments,
    engine_config,
    ensure_standin,
)
from perf.tables import q8_repack_table

RESULTS = ROOT / "perf" / "results" / "cpu-q8-repack.json"


def main(argv: Sequence[str] | None = None) -> int:
    args, out = comparison_arguments(f"{__doc__}\n{q8_repack_comparison.__doc__}", RESULTS, argv)
    model, projector = ensure_standin()
    run = BenchRun(__spec__.name, argv)
    result = q8_repack_comparison.compare(model, engine_config(model, projector).llama, LENGTHS[args.mode],
                                          ROUNDS[args.mode], python_path=q8_repack_comparison.repack_build())
    print(q8_repack_table(result))
    if out:
        run.write(out, {"model": PRESET, "q8_repack": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
