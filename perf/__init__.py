"""Benchmarks: workloads, a load generator, and the baselines behind perf/results/.

The engine package lives inside the Triton model folder: ``make install`` puts that folder on the virtualenv's
path (a .pth file), as pytest's ``pythonpath`` does for the tests.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_VERSION_DIR = ROOT / "model_repository" / "jina_reranker_v3" / "1"
