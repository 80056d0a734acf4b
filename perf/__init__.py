"""Benchmarks: workloads, a load generator, and the baselines behind perf/results/.

The engine package lives inside the Triton model folder; put it on the path as pytest does.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_VERSION_DIR = ROOT / "model_repository" / "jina_reranker_v3" / "1"
for _path in (str(MODEL_VERSION_DIR), str(ROOT)):
    if _path not in sys.path:
        sys.path.append(_path)
