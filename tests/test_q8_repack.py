"""ggml's repacked Q8_0 path on x86 (stack/patches/ggml-cpu-q8_0-repack-x86.patch), one build per kernel path.

Each instruction-set path this CPU runs (AVX-512 VNNI, AVX-VNNI, AVX2; tests/q8_repack_builds.py) is checked in a
child process on its own build: its GEMM and GEMV kernels against a float64 product of the same quantized
operands, on shapes with leftover tiles and on the qwen3-0.6b shapes; then whole models, repacked against plain
(extra buffer types on and off, same build), on the tiny model, on a model with odd shapes, and for the best
path on the qwen3-0.6b stand-in. Both paths quantize the activations alike, so only the order of summation
differs; attention is computed exactly (no flash attention, F32 cache) so that F16 rounding inside it does not
magnify that. The next layer's Q8_0 quantization of the activations still does: a float difference of 1e-7
flips an activation quant now and then, and one flip moves a product by ~1e-4. Over the stand-in's 28 random
layers that leaves a cosine of ~0.9997 for any kernel that sums in another order: ggml's own AMX kernel
against the plain path measured 0.99969 there, this patch's 0.99971 (2 layers: 0.99999+ for both).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perf import tables
from perf.builds import q8_repack_comparison
from perf.common import ensure_standin
from rerank_engine import EngineConfig
from stack import cpu_features
from tests import amx_emulation, ggml_cpu_build, q8_repack_builds

pytestmark = pytest.mark.build  # builds libggml-cpu once per instruction-set path (cached)

ROOT = Path(__file__).resolve().parent.parent
MIN_COSINE = 0.99999  # the hidden states of all output rows as one vector; 2-layer models
MIN_COSINE_STANDIN = 0.9995  # 28 layers: see the module's docstring
# the repack's tensor-type name in ggml's log: Q8_0 weights in 16-row tiles, activations in the 4x8 layout
REPACKED_AS = "with q8_0_16x8"
# 101 tokens: 8-row GEMM tiles, one 4-row tile and one row left for the GEMV
N_TOKENS = 101
# d_model 96 (3 blocks), 4 heads of 40: K and V have 40 rows (not a multiple of 16: not repacked), the
# attention output has K = 160 (5 blocks); the FFN's 160 rows leave a 16-row tile beside the 32-row ones
ODD_SHAPES = {"n_embd": 96, "n_head": 4, "n_head_kv": 1, "head_dim": 40, "n_ff": 160}
PATHS = list(q8_repack_builds.PATHS)

KERNELS = """
import ctypes, json, sys
from pathlib import Path
import llama_cpp
from tests.test_q8_repack import kernel_errors
lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
print(json.dumps([kernel_errors(lib, *map(int, shape.split("x"))) for shape in sys.argv[1:]]))
"""
MODEL = """
import json, sys
from perf.builds.amx_comparison import loaded_llama_libraries
from perf.common import cosine_rows
from tests.test_q8_repack import both_paths, repack_log

repacked = repack_log()
_, _, states = both_paths(sys.argv[1], int(sys.argv[2]))
print(json.dumps({"cosine": float(cosine_rows(states[True].reshape(1, -1), states[False].reshape(1, -1))[0]),
                  "repacked": repacked,
                  "libraries": loaded_llama_libraries()}))
"""


def q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise Q8_0 of ``x`` [rows, k]: scales [rows, k/32] (F16) and quants [rows, k/32, 32]."""
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(blocks).max(-1)
    quants = np.round(blocks / np.where(amax == 0, 1, amax / 127)[..., None]).astype(np.int8)
    return (amax / 127).astype(np.float16), quants


def repacked_16x4(scales: np.ndarray, quants: np.ndarray) -> bytes:
    """The patch's weight layout: per 16 rows and block, 16 F16 scales, then the quants in groups of 4 bytes,
    row after row for each group, offset by 128."""
    rows, nb, _ = quants.shape
    tiles = quants.view(np.uint8) ^ 0x80
    out = bytearray()
    for r in range(0, rows, 16):
        for b in range(nb):
            out += scales[r:r + 16, b].tobytes()
            out += tiles[r:r + 16, b].reshape(16, 8, 4).transpose(1, 0, 2).tobytes()
    return bytes(out)


def kernel_errors(lib: ctypes.CDLL, n: int, k: int, m: int) -> dict[str, float]:
    """Largest error (relative to the largest output) of the GEMM (m rows) and the GEMV against float64."""
    lib.ggml_cpu_init()
    rng = np.random.default_rng(n + k + m)
    weights_d, weights_q = q8_0(rng.standard_normal((n, k)).astype(np.float32))
    activations = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1))).astype(np.float32)
    nb = k // 32
    tile_bytes = (8 + 128) * nb  # per 4 rows, nb block_q8_0x4: 4 F16 scales, 4 x 32 quants each
    vx = ctypes.create_string_buffer(repacked_16x4(weights_d, weights_q))
    vy = ctypes.create_string_buffer(tile_bytes * (m // 4))
    for t in range(m // 4):
        rows = np.ascontiguousarray(activations[4 * t:4 * t + 4])
        lib.ggml_quantize_mat_q8_0_4x8(ctypes.c_void_p(rows.ctypes.data), ctypes.byref(vy, t * tile_bytes),
                                       ctypes.c_int64(k))
    tiles = np.frombuffer(vy.raw, np.uint8).reshape(m // 4, nb, 136)
    a_d = tiles[..., :8].copy().view(np.float16).transpose(0, 2, 1).reshape(m, nb).astype(np.float64)
    a_q = tiles[..., 8:].copy().view(np.int8).reshape(m // 4, nb, 4, 4, 8).transpose(0, 3, 1, 2, 4).reshape(m, nb, 32)
    w_d, w_q = weights_d.astype(np.float64), weights_q.astype(np.float64)
    expected = np.einsum("mbk,nbk,mb,nb->mn", a_q.astype(np.float64), w_q, a_d, w_d)
    gemm = np.zeros((m, n), np.float32)
    lib.ggml_gemm_q8_0_16x4_q8_0(ctypes.c_int(k), ctypes.c_void_p(gemm.ctypes.data), ctypes.c_size_t(n), vx, vy,
                                 ctypes.c_int(m), ctypes.c_int(n))
    row = np.ascontiguousarray(activations[0])
    vq = ctypes.create_string_buffer(34 * nb)  # block_q8_0: an F16 scale, 32 quants
    lib.quantize_row_q8_0(ctypes.c_void_p(row.ctypes.data), vq, ctypes.c_int64(k))
    blocks = np.frombuffer(vq.raw, np.uint8).reshape(nb, 34)
    r_d = blocks[:, :2].copy().view(np.float16)[:, 0].astype(np.float64)
    r_q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
    expected_row = np.einsum("bk,nbk,b,nb->n", r_q, w_q, r_d, w_d)
    gemv = np.zeros(n, np.float32)
    lib.ggml_gemv_q8_0_16x4_q8_0(ctypes.c_int(k), ctypes.c_void_p(gemv.ctypes.data), ctypes.c_size_t(n), vx, vq,
                                 ctypes.c_int(1), ctypes.c_int(n))
    return {"gemm": float(np.abs(gemm - expected).max() / np.abs(expected).max()),
            "gemv": float(np.abs(gemv - expected_row).max() / np.abs(expected_row).max())}


def repack_log() -> list[str]:
    """In a child process: the list that every tensor ggml's repack names in its log is appended to, as the
    models load (the runner passes ggml's log on at DEBUG)."""
    repacked: list[str] = []

    class Repacks(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "repack tensor " in text:
                repacked.append(text.split("repack tensor ", 1)[1])

    logger = logging.getLogger("rerank_engine.llama_runner")
    logger.addHandler(Repacks())
    logger.setLevel(logging.DEBUG)
    return repacked


def both_paths(model: str, n_tokens: int) -> tuple[list[int], list[int], dict[bool, np.ndarray]]:
    """In a child process: the probe's token ids and output positions, and the hidden states there with the extra
    buffer types on (the repacked weights) and off, attention computed exactly (no flash attention, F32 cache)."""
    from perf.common import probe
    from rerank_engine.llama_runner import LlamaRunner, RunnerOptions

    states = {}
    for extra in (True, False):
        runner = LlamaRunner(model, RunnerOptions(n_ctx=512, n_batch=512, n_ubatch=512, flash_attn=False,
                                                  kv_cache_type="f32", extra_buffers=extra))
        runner.start()
        ids, positions = probe(n_tokens, runner.n_vocab)
        [states[extra]] = runner.hidden_states([ids], [positions])
        runner.close()
    return ids, positions, states


def run_child(script: str, package: Path, *args: str) -> dict | list:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package), str(ROOT),
                                                                    os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=PATHS)
def path_build(request: pytest.FixtureRequest) -> tuple[str, Path]:
    reason = q8_repack_builds.why_not_here(request.param)
    if reason:
        pytest.skip(f"{request.param} path: {reason}")
    return request.param, q8_repack_builds.build(request.param)


def test_every_build_gets_the_repack_patch_and_amx_builds_the_amx_fix_too():
    always = [cpu_features.Q8_0_REPACK_PATCH, cpu_features.Q8_0_AMX_BF16_PATCH, cpu_features.FLASH_ATTN_PATCH,
              cpu_features.FLASH_ATTN_BF16_PATCH, cpu_features.FLASH_ATTN_AMX_PATCH,
              cpu_features.FLASH_ATTN_SOFTMAX_PATCH, cpu_features.FLASH_ATTN_SKIP_PATCH,
              cpu_features.FLASH_ATTN_PACK_K16_PATCH, cpu_features.RMS_NORM_PATCH]
    assert cpu_features.ggml_patches(amx=False) == always
    assert cpu_features.ggml_patches(amx=True) == [*always, cpu_features.AMX_PATCH]
    assert cpu_features.patches(amx=True) == [cpu_features.PACKAGE_PATCH, *always, cpu_features.AMX_PATCH,
                                              cpu_features.QWEN3_SWA_PATCH]


def test_the_patches_apply_exactly_in_order(tmp_path):
    source = ggml_cpu_build.unpack_llama_cpp(tmp_path)
    ggml_cpu_build.apply_patches(source, cpu_features.ggml_patches(amx=True))
    repack = (source / "vendor/llama.cpp/ggml/src/ggml-cpu/repack.cpp").read_text()
    assert "return &q8_0_16x4_q8_0;" in repack  # registered in the repack type selection


def test_the_installed_build_has_the_kernels():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
    assert hasattr(lib, "ggml_gemm_q8_0_16x4_q8_0")
    assert hasattr(lib, "ggml_gemv_q8_0_16x4_q8_0")


def test_kernels_match_float64(path_build):
    """N x K x M: an odd number of blocks (K = 96, 160), 4-row activation tiles left over (M = 12, 20, 36), weight
    tiles left over after the AVX-512 tile's steps of 3 (N = 48, 3072: none; 80, 2048: two; 1024: one), and the
    qwen3-0.6b stand-in's projections (K = 1024, 2048, 3072)."""
    _, package = path_build
    for errors in run_child(KERNELS, package, "48x96x12", "80x160x20", "2048x1024x36", "1024x2048x20",
                            "1024x3072x20", "3072x1024x8"):
        assert errors["gemm"] < 1e-6, errors
        assert errors["gemv"] < 1e-6, errors


@pytest.mark.parametrize("shapes", ["tiny", "odd"])
def test_repacked_matches_plain(path_build, make_model, shapes):
    name, package = path_build
    model, _ = make_model("q8_0", **(ODD_SHAPES if shapes == "odd" else {}))
    result = run_child(MODEL, package, str(model), str(N_TOKENS))
    assert all(Path(lib).is_relative_to(package) for lib in result["libraries"])
    repacked = {text.split()[0] for text in result["repacked"] if REPACKED_AS in text}
    assert {"blk.0.attn_q.weight", "blk.1.ffn_down.weight"} <= repacked, result["repacked"]
    if shapes == "odd":  # 40 rows: left to the plain path
        assert not repacked & {"blk.0.attn_k.weight", "blk.0.attn_v.weight"}
    assert result["cosine"] >= MIN_COSINE, f"{name}: cosine {result['cosine']:.7f}"


def test_repacked_matches_plain_on_the_standin():
    """The qwen3-0.6b-shaped stand-in (generated once, ~20 s; shared with the benchmarks), best path here."""
    best = next((p for p in PATHS if q8_repack_builds.why_not_here(p) is None), None)
    if best is None:
        pytest.skip("no x86 path of the repacked Q8_0 kernels runs here")
    model, _ = ensure_standin()
    result = run_child(MODEL, q8_repack_builds.build(best), str(model), str(N_TOKENS))
    # 7 projections in each of 28 layers, and the LM head (the tied embeddings' copy that llama.cpp multiplies)
    assert len([text for text in result["repacked"] if REPACKED_AS in text]) == 28 * 7 + 1
    assert result["cosine"] >= MIN_COSINE_STANDIN, f"{best}: cosine {result['cosine']:.7f}"


def test_bench_times_both_paths_on_the_same_build(tiny_q8):
    """perf/builds/q8_repack_bench.py, as `make bench` runs it (the installed build; AMX's extra buffer types where AMX
    is in play), on the tiny model."""
    options = EngineConfig.from_options(*map(str, tiny_q8), n_ctx=512).llama
    result = q8_repack_comparison.compare(tiny_q8[0], options, [N_TOKENS], 2, say=lambda _: None)
    assert result["extra_buffer_types"] in ("AMX", "Q8_0 repack")
    assert result["q8_repack_vs_plain"][str(N_TOKENS)] > 0
    assert result["cosine_min"][str(N_TOKENS)] >= 0.999
    assert f"| {N_TOKENS} | " in tables.q8_repack_table(result)


def test_on_an_amx_build_the_repacking_is_measured_on_a_build_without_amx(tiny_q8, monkeypatch):
    """Where the installed build's extra buffer types are AMX's, make bench and perf/builds/q8_repack_bench.py time the
    repacking in child processes on the AVX-512 build (a wheel; here the tests' cheaper AVX-512 variant)."""
    from rerank_engine import amx_check

    monkeypatch.setattr(amx_check, "amx_in_play", lambda: False)
    assert q8_repack_comparison.repack_build(say=lambda _: None) is None  # nothing to build: measured in-process
    monkeypatch.undo()
    if not amx_check.amx_in_play():
        pytest.skip("the installed build's extra buffer types are the repacking here: measured in-process")
    options = EngineConfig.from_options(*map(str, tiny_q8), n_ctx=512).llama
    variant = amx_emulation.variant(amx=False)
    result = q8_repack_comparison.compare(tiny_q8[0], options, [N_TOKENS], 2, say=lambda _: None, python_path=variant)
    assert result["extra_buffer_types"] == "Q8_0 repack"
    assert "AMX_INT8 = 1" not in result["system_info"]
    assert "AVX512_VNNI = 1" in result["system_info"]
    assert result["q8_repack_vs_plain"][str(N_TOKENS)] > 0
    assert result["cosine_min"][str(N_TOKENS)] >= 0.999
    assert "beside the installed AMX build" in tables.q8_repack_table(result)
