"""perf/README.md's figures, rendered from the results files, so that they cannot go stale.

    python -m perf.report           # rewrite the generated blocks of perf/README.md (the bench targets run it)
    python -m perf.report --check   # exit 1 if perf/README.md says other than the results files

A generated block is everything between ``<!-- figures: NAME -->`` and ``<!-- end figures -->``. NAME picks a
results file in perf/results/ and renders it with perf/tables.py, whose functions the bench that wrote the file
prints too (make bench's table holds the PyTorch peer's, the AMX comparison's and the repacked Q8_0's too), then
the file's envelope (perf.common.envelope: command, date, commit, machine, load) in one line under it. Every
results file has a block. This
module imports no bench: rendering needs neither llama.cpp nor torch. The prose around the blocks is written by
hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from perf import ROOT, tables

README = ROOT / "perf" / "README.md"
RESULTS = ROOT / "perf" / "results"
BLOCK = re.compile(r"(<!-- figures: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end figures -->)", re.S)


RENDERERS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "cpu-latest": ("cpu-latest.json", tables.bench_table),
    "cpu-peer": ("cpu-peer-latest.json", lambda results: tables.peer_table(results["cpu_peer"])),
    "cpu-q8-repack": ("cpu-q8-repack.json", lambda results: tables.q8_repack_table(results["q8_repack"])),
    "cpu-amx": ("cpu-amx.json", lambda results: tables.amx_table(results["amx"])),
    "cpu-patch-revision": ("cpu-patch-revision.json",
                           lambda results: tables.patch_revision_table(results["patch_revision"])),
    "cpu-softmax-base2": ("cpu-softmax-base2.json",
                          lambda results: tables.patch_revision_table(results["patch_revision"])),
    "cpu-softmax-exp2": ("cpu-softmax-exp2.json",
                         lambda results: tables.patch_revision_table(results["patch_revision"])),
    "cpu-pack-k16": ("cpu-pack-k16.json", lambda results: tables.patch_revision_table(results["patch_revision"])),
    "cpu-q8-tile-3x4": ("cpu-q8-tile-3x4.json", lambda results: tables.patch_revision_table(results["patch_revision"])),
    "cpu-avx2-patch-chain": ("cpu-avx2-patch-chain.json",
                             lambda results: tables.patch_revision_table(results["patch_revision"])),
    "cpu-bf16-attention": ("cpu-bf16-attention.json",
                           lambda results: tables.bf16_attention_table(results["bf16_attention"])),
    "cpu-bf16-attention-zen5": ("cpu-bf16-attention-zen5.json",
                                lambda results: tables.bf16_attention_table(results["bf16_attention"])),
    "cpu-amx-attention": ("cpu-amx-attention.json",
                          lambda results: tables.bf16_attention_table(results["bf16_attention"])),
    "cpu-peer-amx-attention": ("cpu-peer-amx-attention.json", lambda results: tables.peer_table(results["cpu_peer"])),
    "cpu-peer-zen4": ("cpu-peer-zen4.json", lambda results: tables.peer_table(results["cpu_peer"])),
    "cpu-peer-zen5": ("cpu-peer-zen5.json", lambda results: tables.peer_table(results["cpu_peer"])),
    "cpu-peer-ubatch-zen4": ("cpu-peer-ubatch-zen4.json", lambda results: tables.peer_table(results["cpu_peer"])),
    "cpu-peer-avx2": ("cpu-peer-avx2.json", lambda results: tables.peer_table(results["cpu_peer"])),
    "cpu-swa": ("cpu-swa.json", lambda results: tables.swa_table(results["swa"])),
    "cpu-swa-xeon": ("cpu-swa-xeon.json", lambda results: tables.swa_table(results["swa"])),
    "aiperf": ("aiperf-latest.json", lambda results: tables.aiperf_table(results["levels"])),
    "aiperf-librechat-search": ("aiperf-librechat-search.json", lambda results: tables.aiperf_table(results["levels"])),
    "librechat-search": ("librechat-search-cpu.json", lambda results: tables.librechat_summary(results["summary"])),
    "librechat-search-before": ("librechat-search-cpu-before.json",
                                lambda results: tables.librechat_summary(results["summary"])),
    "librechat-search-f32-attention": ("librechat-search-cpu-f32-attention.json",
                                       lambda results: tables.librechat_summary(results["summary"])),
    "librechat-search-xeon": ("librechat-search-cpu-xeon.json",
                              lambda results: tables.librechat_summary(results["summary"])),
    "librechat-search-xeon-previous": ("librechat-search-cpu-xeon-previous.json",
                                       lambda results: tables.librechat_summary(results["summary"])),
    "librechat-search-xeon-f32-attention": ("librechat-search-cpu-xeon-f32-attention.json",
                                            lambda results: tables.librechat_summary(results["summary"])),
    "librechat-search-zen5": ("librechat-search-cpu-zen5.json",
                              lambda results: tables.librechat_summary(results["summary"])),
    "librechat-search-swa": ("librechat-search-swa.json",
                             lambda results: tables.librechat_comparison(results["summaries"])),
    "gpu-h200": ("gpu-h200.json", tables.gpu_table),
    "docker-cpu": ("docker-cpu.json", tables.docker_cpu_table),
    "docker-cpu-xeon": ("docker-cpu-xeon.json", tables.docker_cpu_table),
}


def render_block(name: str, results_dir: Path = RESULTS) -> str:
    if name not in RENDERERS:
        raise KeyError(f"no renderer for the generated block {name!r}; known: {', '.join(sorted(RENDERERS))}")
    filename, render = RENDERERS[name]
    results = json.loads((results_dir / filename).read_text())
    return f"{render(results).rstrip()}\n\n{tables.envelope_line(results)}\n"


def render(text: str, results_dir: Path = RESULTS) -> str:
    """``text`` with every generated block rendered again from ``results_dir``."""
    return BLOCK.sub(lambda m: m[1] + render_block(m["name"], results_dir) + m[4], text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if perf/README.md is not up to date")
    args = parser.parse_args(argv)
    current = README.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print(f"{README} is stale: run python -m perf.report", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered)
    print(f"wrote {README} ({len(BLOCK.findall(rendered))} generated blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
