"""Q8_0 weights on AMX-BF16 tiles (stack/patches/ggml-cpu-q8_0-amx-bf16.patch), on the build this CPU's flags give.

Where the CPU lists AMX-TILE and AMX-BF16 and the kernel grants the tiles, stack/cpu_features.py builds with
GGML_AMX_TILE and GGML_AMX_BF16: the repacked Q8_0 weights are then expanded to BF16 at load and multiplied with
TDPBF16PS. Checked here on libggml-cpu built from this CPU's flags and patches (tests/amx_emulation.py's variant,
cached; on a CPU without AMX, the same build with the AMX-BF16 flags forced, its tile instructions carried out by
tests/amx_emulator, which must count them): the GEMM against a float64 product of the same BF16 operands, on
leftover rows and a last 16-column panel; whole models against the NumPy reference's float64 forward of the
dequantized weights, where BF16 activations must do at least as well as the plain path's Q8_0 activations.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from stack import cpu_features
from tests import amx_emulation
from tests.test_q8_repack import N_TOKENS, ODD_SHAPES, q8_0, run_child

pytestmark = pytest.mark.build

REPACKED_AS = "with q8_0 to bf16 for AMX"
# the smallest row cosine against float64, 2-layer models (measured 0.999986-0.999989; plain Q8_0: 0.99991-0.99993)
MIN_COSINE = 0.99997
T = TypeVar("T")
KERNELS = """
import ctypes, json, sys
from pathlib import Path
import llama_cpp
from tests.test_q8_amx_bf16 import kernel_error
lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
print(json.dumps([kernel_error(lib, *map(int, shape.split("x"))) for shape in sys.argv[1:]]))
"""
REFERENCE = """
import json, sys
from models import numpy_reference as ref
from perf.common import cosine_rows
from tests.test_q8_repack import both_paths, repack_log

repacked = repack_log()
ids, positions, states = both_paths(sys.argv[1], int(sys.argv[2]))
expected = ref.Qwen3Reference(sys.argv[1]).hidden_states(ids)[positions]
cosine = {str(extra): float(cosine_rows(states[extra], expected).min()) for extra in states}
print(json.dumps({"cosine": cosine, "repacked": repacked}))
"""


def bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to BF16 (to nearest even), as uint16."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def widened(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def tiles(weights: np.ndarray) -> bytes:
    """The patch's weight layout: per 16 rows, one tile per 32 values of K, its row r holding K pairs 2r, 2r + 1."""
    n, k = weights.shape
    return weights.reshape(n // 16, 16, k // 32, 16, 2).transpose(0, 2, 3, 1, 4).tobytes()


def kernel_error(lib: ctypes.CDLL, n: int, k: int, m: int) -> float:
    """Largest error (relative to the largest output) of ggml_gemm_bf16_amx (m rows) against float64."""
    lib.ggml_cpu_init()
    lib.ggml_amx_bf16_permitted.restype = ctypes.c_bool
    assert lib.ggml_amx_bf16_permitted()
    rng = np.random.default_rng(n + k + m)
    scales, quants = q8_0(rng.standard_normal((n, k)).astype(np.float32))
    weights = bf16((scales.astype(np.float32)[..., None] * quants).reshape(n, k))
    activations = bf16(rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1)))
    padded = np.zeros((-(-m // 16) * 16, k), np.uint16)  # the tile's 16 rows are read: zeros past the last
    padded[:m] = activations
    vx = ctypes.create_string_buffer(tiles(weights))
    out = np.full((m, n), np.nan, np.float32)
    lib.ggml_gemm_bf16_amx(ctypes.c_int(k), ctypes.c_void_p(out.ctypes.data), ctypes.c_size_t(n), vx,
                           ctypes.c_void_p(padded.ctypes.data), ctypes.c_int(m), ctypes.c_int(n))
    expected = widened(activations) @ widened(weights).T
    return float(np.abs(out - expected).max() / np.abs(expected).max())


@dataclasses.dataclass(frozen=True)
class AmxBf16Build:
    package: Path  # a folder holding a llama_cpp package whose CPU backend has the AMX-BF16 flags
    report: Path | None  # the emulator's report where the tiles are emulated (tests/amx_emulator), else None

    def tiles_run_during(self, call: Callable[[], T]) -> T:
        """``call()``'s result; where the tiles are emulated, TDPBF16PS must have run during it."""
        before = emulated_tdpbf16ps(self.report)
        result = call()
        if self.report is not None:
            assert emulated_tdpbf16ps(self.report) > before, "no tile product ran under the emulator"
        return result


def emulated_tdpbf16ps(report: Path | None) -> int:
    return 0 if report is None else sum(process["tdpbf16ps"] for process in amx_emulation.reports(report))


@pytest.fixture(scope="module")
def amx_bf16_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmxBf16Build]:
    """This CPU's build with GGML_AMX_TILE and GGML_AMX_BF16: on the real tiles where the CPU has AMX-BF16 and the
    kernel grants them; on a CPU without AMX, the same flags forced and the tile instructions carried out by
    tests/amx_emulator (children inherit its LD_PRELOAD)."""
    flags = cpu_features.cpu_flags()
    if {"amx_tile", "amx_bf16"} <= flags:
        if not cpu_features.amx_permitted():
            pytest.skip("the kernel does not grant AMX tile data here: the build leaves AMX-BF16 out")
        assert "-DGGML_AMX_BF16=ON" in cpu_features.cmake_args(flags, amx=False)
        yield AmxBf16Build(amx_emulation.variant(amx=False), None)
        return
    reason = amx_emulation.why_not_here()
    if reason:
        pytest.skip(f"emulated AMX: {reason}")
    report = tmp_path_factory.mktemp("emulator") / "report.jsonl"
    emulator, package = amx_emulation.build(), amx_emulation.variant(amx=False, tiles=True)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in emulator.environment(None, report).items():
            patch.setenv(name, value)
        yield AmxBf16Build(package, report)


def test_the_amx_bf16_patch_follows_the_repack_patch():
    patches = cpu_features.ggml_patches(amx=False)
    assert patches[patches.index(cpu_features.Q8_0_REPACK_PATCH) + 1] == cpu_features.Q8_0_AMX_BF16_PATCH


def test_amx_bf16_only_where_tiles_are_permitted_and_never_amx_int8():
    flags = {"avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}
    without_tiles = cpu_features.cmake_args(flags, amx=False, tiles_permitted=False)
    assert not [arg for arg in without_tiles if "AMX" in arg]
    args = cpu_features.cmake_args(flags, amx=False, tiles_permitted=True)
    assert {"-DGGML_AMX_TILE=ON", "-DGGML_AMX_BF16=ON"} <= set(args)
    assert "-DGGML_AMX_INT8=ON" not in args
    assert "-DGGML_AMX_BF16=ON" not in cpu_features.cmake_args(flags - {"amx_bf16"}, amx=False, tiles_permitted=True)


def test_gemm_matches_float64(amx_bf16_build):
    """N x K x M: a last 16-column panel (N = 48, 80), odd block counts (K = 96, 160), activation rows that leave
    part of a tile (M = 5, 20, 37, 130), and the qwen3-0.6b stand-in's projections."""
    errors = amx_bf16_build.tiles_run_during(lambda: run_child(
        KERNELS, amx_bf16_build.package, "48x96x5", "80x160x20", "64x96x37", "48x64x130", "2048x1024x36",
        "1024x3072x20", "3072x1024x8"))
    assert max(errors) < 1e-5, errors


@pytest.mark.parametrize("shapes", ["tiny", "odd"])
def test_hidden_states_match_the_reference_at_least_as_well_as_plain(amx_bf16_build, make_model, shapes):
    model, _ = make_model("q8_0", **(ODD_SHAPES if shapes == "odd" else {}))
    result = amx_bf16_build.tiles_run_during(lambda: run_child(REFERENCE, amx_bf16_build.package, str(model),
                                                               str(N_TOKENS)))
    repacked = {text.split()[0] for text in result["repacked"] if REPACKED_AS in text}
    assert {"blk.0.attn_q.weight", "blk.1.ffn_down.weight"} <= repacked, result["repacked"]
    if shapes == "odd":  # 40 rows: left to the plain path
        assert not repacked & {"blk.0.attn_k.weight", "blk.0.attn_v.weight"}
    assert result["cosine"]["True"] >= max(result["cosine"]["False"], MIN_COSINE), result["cosine"]
