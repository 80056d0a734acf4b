"""The working tree's llama.cpp patches against the same patches at a git revision (``tree_vs_base``):
perf/builds/patch_revision_comparison.py's comparison, its results and table (perf/tables.py) printed.

    python -m perf.builds.patch_revision_bench --base HEAD~1               # quick: 1,024 tokens, 4 rounds
    python -m perf.builds.patch_revision_bench --base 94bd3ca~1 --mode full  # 1,024, 3,072 and 8,192 tokens:
                                                                          # perf/results/cpu-patch-revision.json
    python -m perf.builds.patch_revision_bench --base HEAD~1 --searches    # and LibreChat's searches, engine alone
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from perf import ROOT
from perf.builds import patch_revision_comparison
from perf.common import LENGTHS, PRESET, BenchRun, comparison_arguments, engine_config, ensure_standin
from perf.tables import patch_revision_table

RESULTS = ROOT / "perf" / "results" / "cpu-patch-revision.json"
ROUNDS = 4  # taking turns: a kernel change worth keeping wins every round, on a noisy VM too


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True,
                        help="the git revision whose patches the working tree's are measured against, e.g. HEAD~1")
    parser.add_argument("--searches", action="store_true",
                        help="also LibreChat's searches through the engine alone, builds taking turns")


def main(argv: Sequence[str] | None = None) -> int:
    description = f"{__doc__}\n{patch_revision_comparison.__doc__}"
    args, out = comparison_arguments(description, RESULTS, argv, ROUNDS, arguments)
    try:
        base, paths = patch_revision_comparison.builds(args.base)
    except ValueError as exc:
        raise SystemExit(f"patch_revision_bench: {exc}") from None
    model, projector = ensure_standin()
    run = BenchRun(__spec__.name, argv)
    options = engine_config(model, projector).llama
    result = {"base": base, **patch_revision_comparison.compare(model, options, LENGTHS[args.mode], args.rounds, paths),
              "attention_op": patch_revision_comparison.compare_attention(model, options, LENGTHS[args.mode],
                                                                          args.rounds, paths)}
    if args.searches:
        result["searches"] = patch_revision_comparison.compare_searches(model, projector, args.rounds, paths)
    print(patch_revision_table(result))
    if out:
        run.write(out, {"model": PRESET, "patch_revision": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
