"""Benchmarks, in rooms named for what they measure; what they share sits at this level.

    perf/load/     make bench's paths under load, the workloads, LibreChat's client, perf_analyzer
    perf/peers/    the PyTorch CPU peer
    perf/builds/   llama.cpp builds and options side by side (AMX, repacked Q8_0, BF16 attention, v3.5's windows)
    perf/gpu/      the one-shot GPU check
    perf/aiperf/   NVIDIA's AIPerf beside the load generator (and its datasets)
    perf/common.py the shared helpers (the results envelope, the served options, the timed pass, the generated
                   stand-in model); perf/tables.py and perf/report.py: the results as Markdown

Benches never import each other (tests/test_import_graph.py). The engine package lives inside the Triton model
folder: ``make install`` puts that folder on the virtualenv's path (a .pth file), as pytest's ``pythonpath`` does
for the tests.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_VERSION_DIR = ROOT / "model_repository" / "jina_reranker_v3" / "1"
