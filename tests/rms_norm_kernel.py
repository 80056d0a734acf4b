"""ggml's CPU rms_norm (GGML_OP_RMS_NORM) on one case, called through ggml's C API (perf/builds/ggml_c_api.py),
against float64 (test support; run in a child process whose PYTHONPATH puts the build to test first).

A case is "rows x n x plain|fused": ``rows`` rows of ``n`` F32 values from a fixed seed, each row at its own scale
(1e-3 to 1e3), normalised alone (plain) or followed by the MUL by a weight row, which ggml's CPU backend fuses
into the norm's own pass as qwen3's graph has it (fused). stack/patches/ggml-cpu-rms-norm-sum-sq.patch sums the
squares in 16 partial sums: rows shorter than 16, of whole and partial 16-element blocks, and qwen3's head size
and hidden size, split unevenly between threads, are where a lane or tail would go missing.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import numpy as np

from perf.builds import ggml_c_api

EPS = 1e-6  # qwen3's rms_norm_eps


def case(lib_dir: Path, spec: str, threads: int) -> dict:
    """One case (``spec``, see the module's docstring) on the build in ``lib_dir``: the largest error against
    float64, relative to its row's largest output, and a digest of the output's bytes."""
    rows, n, kind = spec.split("x")
    rows, n = int(rows), int(n)
    rng = np.random.default_rng(int(hashlib.sha256(spec.encode()).hexdigest()[:8], 16))
    x = (rng.standard_normal((rows, n)) * 10.0 ** rng.uniform(-3, 3, (rows, 1))).astype(np.float32)
    weight = rng.standard_normal(n).astype(np.float32)
    with ggml_c_api.graph(lib_dir, 3 * x.nbytes + 2**20) as graph:
        base = graph.base
        base.ggml_rms_norm.restype = ctypes.c_void_p
        base.ggml_rms_norm.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float]
        base.ggml_mul.restype = ctypes.c_void_p
        base.ggml_mul.argtypes = [ctypes.c_void_p] * 3
        out = base.ggml_rms_norm(graph.context, graph.tensor(x, "f32", (n, rows)), EPS)
        if kind == "fused":
            out = base.ggml_mul(graph.context, out, graph.tensor(weight, "f32", (n,)))
        result = graph.compute(out, (rows, n), threads)
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt(np.mean(x64 * x64, axis=1, keepdims=True) + EPS)
    if kind == "fused":
        expected *= weight
    error = np.abs(result - expected).max(axis=1) / np.abs(expected).max(axis=1)
    return {"error": float(error.max()), "digest": hashlib.sha256(result.tobytes()).hexdigest()}
