"""llama.cpp's AMX build against its AVX-512 build on its own (``amx_vs_avx512``): perf/amx_comparison.py's
comparison, its table (perf/tables.py) printed, the results written with --out.

    python -m perf.amx_bench                 # quick: 1,024 tokens
    python -m perf.amx_bench --mode full     # 1,024, 3,072 and 8,192 tokens
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from perf import amx_comparison
from perf.common import LENGTHS, engine_config
from perf.standin import ensure_standin
from perf.tables import amx_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{amx_comparison.__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(LENGTHS), default="quick")
    parser.add_argument("--lengths", help="comma-separated token counts (default: the mode's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else list(LENGTHS[args.mode])
    model, projector = ensure_standin()
    result = amx_comparison.compare(model, engine_config(model, projector).llama, lengths,
                                    amx_comparison.ROUNDS[args.mode])
    print(amx_table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
