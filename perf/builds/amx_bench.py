"""llama.cpp's AMX build against its AVX-512 build on its own (``amx_vs_avx512``): perf/builds/amx_comparison.py's
comparison, its table (perf/tables.py) printed.

    python -m perf.builds.amx_bench                 # quick: 1,024 tokens
    python -m perf.builds.amx_bench --mode full     # 1,024, 3,072 and 8,192 tokens: perf/results/cpu-amx.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from perf import ROOT
from perf.builds import amx_comparison
from perf.common import LENGTHS, PRESET, BenchRun, engine_config, ensure_standin
from perf.tables import amx_table

RESULTS = ROOT / "perf" / "results" / "cpu-amx.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{amx_comparison.__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(LENGTHS), default="quick")
    parser.add_argument("--lengths", help="comma-separated token counts (default: the mode's)")
    parser.add_argument("--out", type=Path, help=f"results JSON (default: {RESULTS.relative_to(ROOT)} in full mode, "
                                                 "none in quick mode)")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS if args.mode == "full" and not args.lengths else None)
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else list(LENGTHS[args.mode])
    model, projector = ensure_standin()
    run = BenchRun(__spec__.name, argv)
    result = amx_comparison.compare(model, engine_config(model, projector).llama, lengths,
                                    amx_comparison.ROUNDS[args.mode])
    print(amx_table(result))
    if out:
        run.write(out, {"model": PRESET, "amx": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
