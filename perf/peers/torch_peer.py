"""The PyTorch CPU peer on its own: perf/peers/torch_comparison.py's comparison, results in
perf/results/cpu-peer-latest.json (under ``cpu_peer``, as make bench writes it in cpu-latest.json), its tables
(perf/tables.py) printed.

    python -m perf.peers.torch_peer                      # quick: 1,024 tokens, per-op profiles (about a minute)
    python -m perf.peers.torch_peer --mode full          # 1,024, 3,072 and 8,192 tokens, profiles and the knobs
    python -m perf.peers.torch_peer --lengths 3072 --knobs --out /tmp/peer.json
    python -m perf.peers.torch_peer --lengths 8192 --rounds 3 --knob configured --knob 'n_ubatch 2048'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from perf import ROOT
from perf.common import (
    CPU_CONFIG,
    LENGTHS,
    PRESET,
    ROUNDS,
    BenchRun,
    engine_config,
    ensure_standin,
    shown_path,
)
from perf.peers import torch_comparison
from perf.peers.qwen3_torch import peer_available
from perf.tables import peer_table

RESULTS = ROOT / "perf" / "results" / "cpu-peer-latest.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{torch_comparison.__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(LENGTHS), default="quick")
    parser.add_argument("--lengths", help="comma-separated token counts (default: the mode's)")
    parser.add_argument("--rounds", type=int, help="passes per path and length (default: quick 2, full 1)")
    parser.add_argument("--knobs", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the engine's CPU knobs (default: in full mode)")
    parser.add_argument("--knob", action="append", choices=list(torch_comparison.KNOBS), metavar="LABEL",
                        help="time only this knob (repeat for several; implies --knobs): "
                             + "; ".join(torch_comparison.KNOBS))
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-op profiles")
    parser.add_argument("--model", type=Path, help="another qwen3 GGUF for both sides (default: the Q8_0 stand-in), "
                                                   "e.g. .cache/models/qwen3-0.6b-bf16/model.gguf")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    missing = peer_available()
    if missing:
        parser.error(missing)
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else list(LENGTHS[args.mode])
    rounds = args.rounds or ROUNDS[args.mode]
    knobs = torch_comparison.KNOBS if (args.knobs if args.knobs is not None else args.mode == "full") else None
    if args.knob:
        knobs = {label: torch_comparison.KNOBS[label] for label in args.knob}
    model, projector = ensure_standin()
    options = engine_config(model, projector).llama
    model = args.model.resolve() if args.model else model
    run = BenchRun(__spec__.name, argv)
    peer = torch_comparison.compare(model, options, lengths, rounds, args.profile, knobs)
    results = {"model": {"preset": PRESET if not args.model else None, "path": shown_path(model),
                         "bytes": model.stat().st_size},
               "engine_options_source": str(CPU_CONFIG.relative_to(ROOT)),
               "ratios": {"engine_vs_torch_bf16": peer["ratios"]["engine_vs_torch_bf16"]},
               "cpu_peer": peer}
    print(f"\n{peer_table(peer)}\n\nmeasured in {peer['duration_s']:.0f} s")
    run.write(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
