"""The workloads as AIPerf custom datasets: the perf_analyzer files' requests, for NVIDIA's AIPerf.

    python -m perf.aiperf.aiperf_dataset             # (re)write perf/aiperf/* from perf/workloads/*.json
    python -m perf.aiperf.aiperf_dataset --check     # exit 1 if perf/aiperf/* differ from what this writes

Every workload in perf/load/workloads.py gets two files, one request per entry, in the entries' order (AIPerf
sends them sequentially, round robin, as perf_analyzer and perf/load/loadgen.py do):

- ``<workload>.jsonl`` for the adapter (``--endpoint-type cohere-rankings --custom-dataset-type single_turn``):
  one line per request, ``{"texts": [{"name": "query", ...}, {"name": "passages", ...}], "extra": {...}}``.
  AIPerf's rankings endpoint sends ``{"model", "query", "documents"}`` and adds ``extra``; with ``--model``
  set to LibreChat's model name the body is exactly LibreChat's (and perf/load/loadgen.py's).
- ``<workload>-triton.json`` for Triton's HTTP port (``--endpoint-type raw --custom-dataset-type
  inputs_json``): KServe v2 JSON inference requests, sent as they are, asking for SCORES and TOKENS only.

The entries come from the perf_analyzer files (``perf.load.workloads.load``), which perf/load/workloads.py generates:
one generator, and ``--check`` keeps the two formats from drifting apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from perf import ROOT
from perf.load.loadgen import LIBRECHAT_TOP_N
from perf.load.workloads import WORKLOAD_DIR, WORKLOADS, Entry, load

AIPERF_DIR = ROOT / "perf" / "aiperf"
OUTPUTS = ("SCORES", "TOKENS")


def adapter_path(name: str, directory: Path = AIPERF_DIR) -> Path:
    return directory / f"{name}.jsonl"


def triton_path(name: str, directory: Path = AIPERF_DIR) -> Path:
    return directory / f"{name}-triton.json"


def rankings_line(entry: Entry) -> dict:
    """One single_turn record: AIPerf's rankings endpoints read the texts named "query" and "passages"."""
    return {"texts": [{"name": "query", "contents": [entry.query]},
                      {"name": "passages", "contents": list(entry.documents)}],
            "extra": {"top_n": LIBRECHAT_TOP_N, "return_documents": True}}


def kserve_request(entry: Entry) -> dict:
    """A KServe v2 JSON inference request: one batch row, ``QUERY [1, 1]`` and ``DOCUMENTS [1, n]``."""
    return {"inputs": [{"name": "QUERY", "shape": [1, 1], "datatype": "BYTES", "data": [entry.query]},
                       {"name": "DOCUMENTS", "shape": [1, len(entry.documents)], "datatype": "BYTES",
                        "data": list(entry.documents)}],
            "outputs": [{"name": name} for name in OUTPUTS]}


def adapter_dumps(entries: Sequence[Entry]) -> str:
    return "".join(json.dumps(rankings_line(e), ensure_ascii=False) + "\n" for e in entries)


def triton_dumps(name: str, entries: Sequence[Entry]) -> str:
    # inputs_json: one session per request, each with one payload, so every entry is its own request.
    data = [{"session_id": f"{name}-{i}", "payloads": [kserve_request(e)]} for i, e in enumerate(entries)]
    return json.dumps({"data": data}, ensure_ascii=False, indent=1) + "\n"


def files_of(name: str, entries: Sequence[Entry], directory: Path = AIPERF_DIR) -> dict[Path, str]:
    """The AIPerf files of one workload and their text."""
    return {adapter_path(name, directory): adapter_dumps(entries),
            triton_path(name, directory): triton_dumps(name, entries)}


def write(name: str, entries: Sequence[Entry], directory: Path = AIPERF_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = files_of(name, entries, directory)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)


def differing(name: str, entries: Sequence[Entry], directory: Path = AIPERF_DIR) -> list[Path]:
    """The AIPerf files of a workload that are missing or differ from what ``write`` would write."""
    return [path for path, text in files_of(name, entries, directory).items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def sync(names: Sequence[str], check: bool, workloads: Path = WORKLOAD_DIR, out: Path = AIPERF_DIR) -> list[Path]:
    """Writes the workloads' AIPerf files from their perf_analyzer files, or with ``check`` only lists the
    files that are missing or differ."""
    differ: list[Path] = []
    for name in names:
        entries = load(name, workloads)
        if check:
            differ += differing(name, entries, out)
        else:
            for path in write(name, entries, out):
                print(f"wrote {path} ({len(entries)} requests)")
    return differ


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    differ = sync(list(WORKLOADS), parser.parse_args(argv).check)
    if differ:
        print(f"differ from perf/workloads/ (run python -m perf.aiperf.aiperf_dataset): {', '.join(map(str, differ))}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
