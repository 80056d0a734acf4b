"""ggml's tiled flash attention on AVX512-BF16 dot products against its F32 products (``bf16_attention_vs_f32``),
or, where the build gets AMX-BF16 tiles, on those tiles against the dot products (``amx_attention_vs_bf16``):
perf/builds/bf16_attention_comparison.py's comparison, its results and table (perf/tables.py) printed.

    python -m perf.builds.bf16_attention_bench                # quick: 1,024 tokens
    python -m perf.builds.bf16_attention_bench --mode full    # 1,024, 3,072 and 8,192 tokens:
                                                       # perf/results/cpu-bf16-attention.json, or on an AMX host
                                                       # perf/results/cpu-amx-attention.json
"""

from __future__ import annotations

from collections.abc import Sequence

from perf import ROOT
from perf.builds import bf16_attention_comparison
from perf.common import (
    LENGTHS,
    PRESET,
    BenchRun,
    comparison_arguments,
    engine_config,
    ensure_standin,
)
from perf.tables import bf16_attention_table
from stack import cpu_features

RESULTS = {"bf16": ROOT / "perf" / "results" / "cpu-bf16-attention.json",
           "amx": ROOT / "perf" / "results" / "cpu-amx-attention.json"}
ROUNDS = 2  # taking turns; few, because an 8k pass takes tens of seconds on 2 cores


def main(argv: Sequence[str] | None = None) -> int:
    flags = cpu_features.cpu_flags()
    products = bf16_attention_comparison.products_here(flags, cpu_features.amx_permitted())
    args, out = comparison_arguments(f"{__doc__}\n{bf16_attention_comparison.__doc__}", RESULTS[products], argv,
                                     ROUNDS)
    model, projector = ensure_standin()
    run = BenchRun(__spec__.name, argv)
    reason = bf16_attention_comparison.why_not_here(flags, cpu_features.cpu_model())
    if reason:
        result: dict = {"skipped": reason, "products": products}
    else:
        result = bf16_attention_comparison.compare(model, engine_config(model, projector).llama, LENGTHS[args.mode],
                                                   args.rounds, bf16_attention_comparison.builds(products),
                                                   products=products)
    print(bf16_attention_table(result))
    if out:
        run.write(out, {"model": PRESET, "bf16_attention": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
