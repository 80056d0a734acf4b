"""ggml's CPU rms_norm as the served build computes it (stack/patches/ggml-cpu-rms-norm-sum-sq.patch: the sum of
squares in 16 partial sums the compiler vectorizes), one GGML_OP_RMS_NORM per case through ggml's C API
(tests/rms_norm_kernel.py), against float64; and the same bits from a build of another SIMD width.

Error model, relative to a row's largest output, u = 2^-24 (F32's unit roundoff): each square rounded to F32 (u),
the sum in double (nothing), the mean and the mean plus epsilon each rounded to F32 (u, u), those three halved by
the square root, which rounds too (u/2), its reciprocal (u), the product by it and by the weight (u each): 5u,
~3e-7. A dropped or doubled element moves a row of a thousand by ~1e-3 of its norm.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import q8_repack_builds
from tests.test_q8_repack import run_child

pytestmark = pytest.mark.integration

KERNEL = """
import json, sys
from pathlib import Path
import llama_cpp
from tests.rms_norm_kernel import case
lib = Path(llama_cpp.__file__).parent / "lib"
print(json.dumps({"system_info": llama_cpp.llama_print_system_info().decode(),
                  "cases": {spec: case(lib, spec, threads=2) for spec in sys.argv[1:]}}))
"""
# rows x n x plain|fused: rows shorter than the 16 partial sums, one block, a block and one, qwen3-0.6b's head
# (128) and hidden (1024) sizes, rows of whole blocks plus a tail; odd row counts, split unevenly by 2 threads.
CASES = [f"{rows}x{n}x{kind}" for rows, n in ((3, 1), (5, 15), (7, 16), (9, 17), (33, 128), (17, 1000),
                                             (31, 1024), (5, 1031)) for kind in ("plain", "fused")]
MAX_ERROR = 6 * 2.0 ** -24  # the model's 5u (module docstring) and one u to spare


def kernel_results(package: Path) -> dict:
    return run_child(KERNEL, package, *CASES)  # type: ignore[return-value]


def test_rms_norm_matches_float64():
    import llama_cpp

    result = kernel_results(Path(llama_cpp.__file__).parent.parent)
    assert set(result["cases"]) == set(CASES)
    for spec, errors in result["cases"].items():
        assert errors["error"] <= MAX_ERROR, (spec, errors)


@pytest.mark.build
def test_an_avx2_build_gives_the_same_bits():
    """Each partial sum takes the same additions in the same order whatever the vector width, so the AVX2 build
    (libggml-cpu alone, tests/q8_repack_builds.py; cached, the repack tests build it too) and the served build agree
    bit for bit."""
    import llama_cpp

    reason = q8_repack_builds.why_not_here("avx2")
    if reason:
        pytest.skip(f"avx2 build: {reason}")
    served = kernel_results(Path(llama_cpp.__file__).parent.parent)
    if "AVX512 = 1" not in served["system_info"]:
        pytest.skip("the served build is no wider than the AVX2 build")
    avx2 = kernel_results(q8_repack_builds.build("avx2"))
    assert "AVX512 = 1" not in avx2["system_info"]
    for spec in CASES:
        assert avx2["cases"][spec]["digest"] == served["cases"][spec]["digest"], spec
