"""ggml's repacked Q8_0 path against its plain path on its own (``q8_repack_vs_plain``):
perf/q8_repack_comparison.py's comparison, its results and table (perf/tables.py) printed.

    python -m perf.q8_repack_bench                # quick: 1,024 tokens
    python -m perf.q8_repack_bench --mode full    # 1,024, 3,072 and 8,192 tokens
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from perf import q8_repack_comparison
from perf.common import LENGTHS, ROUNDS, engine_config
from perf.standin import ensure_standin
from perf.tables import q8_repack_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{q8_repack_comparison.__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(LENGTHS), default="quick")
    args = parser.parse_args(argv)
    model, projector = ensure_standin()
    result = q8_repack_comparison.compare(model, engine_config(model, projector).llama, LENGTHS[args.mode],
                                          ROUNDS[args.mode])
    print(json.dumps(result, indent=1))
    print(q8_repack_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
