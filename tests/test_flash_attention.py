"""The served attention (flash attention, ggml's tiled path) against the NumPy reference, on prompts long enough
for several Q and KV tiles.

The CPU config serves flash attention; for ubatches of 64 tokens or more ggml computes it in 64x64 tiles
(``ggml_compute_forward_flash_attn_ext_tiled``; 128x128 where AMX tiles take its products), which
stack/patches/ggml-cpu-flash-attn-tiled.patch changes: each thread converts K and V once per KV head and reuses
them for every later Q tile of that head. A stale or wrong head, tile or padding shows up here as hidden states far
from the reference. The shapes cover GQA (Q heads sharing a KV head, with several heads per thread's chunk), the
real head size 128, lengths that are not multiples of the tile, one ubatch and several (the second attends to a
longer, padded cache), and a prompt too short for the tiled path. Flash attention rounds K and V through F16, so
agreement is to F16 rounding, not to 1e-5; where the build has AVX512-BF16,
stack/patches/ggml-cpu-flash-attn-bf16.patch also rounds Q, K, V and the softmax weights P to BF16 for the two
products, and MIN_COSINE holds for those too.

Below, the kernel itself (one GGML_OP_FLASH_ATTN_EXT call through ggml's C API, tests/flash_attention_kernel.py)
against float64, with the BF16 products' error model; the builds without AVX512-BF16 (the AVX2 build) bit for
bit as before the BF16 patch; the hidden states of the BF16 products against the F32 products (this CPU's build
without the patch) on the tiny model and the stand-in; the Q8_0 scores with the served attention; and the
bench's comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import numpy_reference as ref
from perf import tables
from perf.builds import bf16_attention_comparison
from perf.common import cosine_rows, engine_config, ensure_standin
from rerank_engine import RerankRequest
from stack import cpu_features
from tests import amx_emulation, flash_attention_kernel, q8_repack_builds
from tests.conftest import Reference, open_engine
from tests.test_q8_repack import run_child

pytestmark = pytest.mark.integration

MIN_COSINE = 0.9999
# ggml splits the Q rows (heads x tokens) into 4 chunks per thread, so with 2 threads (set, whatever the machine
# has) a chunk is half a head (tiny), one head, or, with 16 or 12 heads, two or a head and a half: Q tiles of a
# chunk then pass from one KV head to the next, where K and V must be converted anew.
THREADS = 2
SHAPES = {
    "tiny": {},  # 4 Q heads, 2 KV heads of 16
    "gqa-4-head-128": {"n_head": 8, "n_head_kv": 2, "head_dim": 128},
    "mha-16-heads": {"n_head": 16, "n_head_kv": 16},
    "gqa-3-12-heads": {"n_head": 12, "n_head_kv": 4},
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def model_and_reference(request, make_model):
    paths = make_model("f32", **SHAPES[request.param])
    served = engine_config(*paths).llama  # configs/cpu.pbtxt's attention
    assert served.flash_attn
    engine = open_engine(paths, n_ctx=4096, n_ubatch=512, n_threads=THREADS, flash_attn=True,
                         kv_cache_type=served.kv_cache_type)
    return engine, ref.Qwen3Reference(str(paths[0]))


@pytest.mark.parametrize("n_tokens", [40, 200, 700])
def test_flash_attention_matches_reference(model_and_reference, n_tokens):
    engine, reference = model_and_reference
    rng = np.random.default_rng(n_tokens)
    ids = rng.integers(0, reference.w["token_embd.weight"].shape[0], n_tokens).tolist()
    positions = sorted({0, 63, 64, n_tokens // 2, n_tokens - 2, n_tokens - 1} & set(range(n_tokens)))
    [hidden] = engine.runner.hidden_states([ids], [positions])
    expected = reference.hidden_states(ids)[positions]
    cos = np.sum(hidden * expected, axis=1) / (np.linalg.norm(hidden, axis=1) * np.linalg.norm(expected, axis=1))
    assert cos.min() >= MIN_COSINE, dict(zip(positions, cos.round(6), strict=True))


# -- the kernel itself, and the builds around it -----------------------------------------------------------

KERNEL = """
import json, sys
from pathlib import Path
import llama_cpp
from tests.flash_attention_kernel import THREADS, case, refuse_amx_tiles
specs = sys.argv[1:]
if specs[0] == "refuse-tiles":
    refuse_amx_tiles()
    specs = specs[1:]
threads = THREADS
if specs[0].startswith("threads="):
    threads = int(specs.pop(0).removeprefix("threads="))
lib = Path(llama_cpp.__file__).parent / "lib"
print(json.dumps({"system_info": llama_cpp.llama_print_system_info().decode(),
                  "cases": {spec: case(lib, spec, threads) for spec in specs}}))
"""
# n_q x n_kv x n_head x n_head_kv x DK x DV x cache: Q rows and KV length off the 64-row tiles (and the AMX path's
# 128-row ones), GQA 1 to 4, head sizes 128 and 64, an odd DK with a DV off the 16 lanes, the qwen3-0.6b shape on
# whole 64-row tiles (half a 128-row one), every cache type;
# DK 96 with DV 32 (three AMX tiles deep, one 32-column block wide); and the op's options qwen3 does not use, which
# the BF16 path's softmax must still honour (soft-capped scores, ALiBi slopes on a mask of distances, attention
# sinks). AMX tiles take the shapes whose DK and DV are multiples of 32 (tiles_fill); the others keep the VDPBF16PS
# products in an AMX build.
KERNEL_CASES = ["200x333x4x2x128x128xf16", "130x130x6x2x64x64xf16", "96x160x8x2x128x128xf32",
                "77x77x2x1x65x24xf16", "100x150x3x3x72x40xbf16", "64x64x16x8x128x128xf16", "70x100x2x2x96x32xbf16",
                "150x200x4x2x128x128xf16:softcap=20", "130x260x6x2x64x64xf16:alibi=8,sinks",
                "100x150x3x3x72x40xf16:sinks"]
BF16_UNIT = 2.0 ** -8  # BF16 keeps 8 significant bits: rounding to nearest moves a value by at most 2^-8 of it
F32_PATH_ERROR = 1e-5  # F32 products over at most 333 terms, relative to max |V|


def kernel_results(package: Path, *options: str) -> dict:
    """Every kernel case on the build in ``package``; ``refuse-tiles``: with AMX tile data refused by the kernel;
    ``threads=N``: on N threads (2 otherwise)."""
    return run_child(KERNEL, package, *options, *KERNEL_CASES)  # type: ignore[return-value]


def tiles_fill(spec: str) -> bool:
    """Whether stack/patches/ggml-cpu-flash-attn-amx.patch puts a case's products on AMX tiles (where built and
    permitted): DK and DV multiples of 32."""
    dk, dv = flash_attention_kernel.parse(spec)[0][4:6]
    return dk % 32 == 0 and dv % 32 == 0


def bf16_products(system_info: str) -> bool:
    """Whether a build's tiled flash attention takes the BF16 products (compiled where AVX512-BF16 is)."""
    return "AVX512_BF16 = 1" in system_info


def test_flash_attention_kernel_matches_float64():
    """The served build's kernel on one call of GGML_OP_FLASH_ATTN_EXT per case, against float64.

    Error model of the BF16 products (builds with AVX512-BF16), errors relative to max |V|, u = 2^-8:
    - against float64 on the same BF16-rounded Q, K and V, only P's rounding is left: |sum_j dp_j v_j| <=
      u sum_j p_j |v_j| <= u (plus F32 summation, ~1e-6);
    - against float64 on the operands as given, to first order: V's rounding u, P's u, and each score s_j off
      by at most 2u S (S: the largest scale * sum_d |q_d k_d|), which moves the weights p_j by at most a factor
      of 4u S: u (2 + 4 S) in all.
    The F32 path (other builds) reads the operands as given (the cache type's rounding is in the reference) and
    errs only by F32 summation. A BF16 cache outside the tiled BF16 path goes to ggml's one-row path, which
    rounds Q to BF16 as it rounds K: its reference is the BF16-rounded one, to F32 summation."""
    import llama_cpp

    result = kernel_results(Path(llama_cpp.__file__).parent.parent)
    for spec, errors in result["cases"].items():
        if bf16_products(result["system_info"]):
            assert_bf16_products_error(spec, errors)
        elif spec.endswith("bf16"):
            assert errors["error_bf16_operands"] <= F32_PATH_ERROR, (spec, errors)
        else:
            assert errors["error"] <= F32_PATH_ERROR, (spec, errors)


def assert_bf16_products_error(spec: str, errors: dict) -> None:
    """The BF16 products' error model (VDPBF16PS or AMX tiles: the same roundings), see the test above."""
    assert errors["error_bf16_operands"] <= BF16_UNIT + F32_PATH_ERROR, (spec, errors)
    assert errors["error"] <= BF16_UNIT * (2 + 4 * errors["score_magnitude"]) + F32_PATH_ERROR, (spec, errors)


@pytest.mark.build
@pytest.mark.slow
def test_builds_without_avx512_bf16_keep_the_f32_path_bit_for_bit():
    """The AVX2 build (libggml-cpu alone, tests/q8_repack_builds.py) with and without the BF16 patch: the same
    output bits on every kernel case, within the F32 path's error."""
    reason = q8_repack_builds.why_not_here("avx2")
    if reason:
        pytest.skip(f"avx2 build: {reason}")
    patched = kernel_results(q8_repack_builds.build("avx2"))
    unpatched = kernel_results(q8_repack_builds.build("avx2", without=cpu_features.FLASH_ATTN_BF16_AND_LATER))
    assert not bf16_products(patched["system_info"])
    for spec in KERNEL_CASES:
        assert patched["cases"][spec]["digest"] == unpatched["cases"][spec]["digest"], spec
    assert all(errors["error"] <= F32_PATH_ERROR for spec, errors in patched["cases"].items()
               if not spec.endswith("bf16"))


@pytest.fixture(scope="module")
def no_tiles_build() -> Path:
    """This CPU's build without GGML_AMX_TILE/GGML_AMX_BF16 (the VDPBF16PS products; libggml-cpu alone, cached),
    where the installed one has the AMX tiles."""
    if bf16_attention_comparison.products_here(cpu_features.cpu_flags(), cpu_features.amx_permitted()) != "amx":
        pytest.skip("this host's build has no AMX-BF16 tiles (no amx_bf16, or the kernel refuses tiles); "
                    "test_amx_tile_products_under_the_emulator runs their code where the CPU has no AMX")
    return amx_emulation.variant(amx=False, tiles=False)


@pytest.mark.build
def test_amx_tiles_take_the_products_where_the_shapes_fill_them(no_tiles_build):
    """The installed AMX-BF16 build against the same sources without those flags: other output bits (TDPBF16PS
    rounds its sums differently from VDPBF16PS) exactly on the cases whose DK and DV fill tiles, the same bits
    elsewhere; the error model of the BF16 products holds for both (test_flash_attention_kernel_matches_float64)."""
    import llama_cpp

    tiles = kernel_results(Path(llama_cpp.__file__).parent.parent)
    vdpbf16ps = kernel_results(no_tiles_build)
    assert any(map(tiles_fill, KERNEL_CASES))
    assert not all(map(tiles_fill, KERNEL_CASES))
    for spec in KERNEL_CASES:
        assert (tiles["cases"][spec]["digest"] != vdpbf16ps["cases"][spec]["digest"]) == tiles_fill(spec), spec
        assert_bf16_products_error(spec, tiles["cases"][spec])


@pytest.mark.build
def test_amx_build_falls_back_where_the_kernel_refuses_tiles(no_tiles_build):
    """The installed AMX-BF16 build in a process the kernel refuses AMX tile data (a seccomp filter, as in a
    sandbox): no SIGILL, and every case the VDPBF16PS build's bits."""
    import llama_cpp

    refused = kernel_results(Path(llama_cpp.__file__).parent.parent, "refuse-tiles")
    vdpbf16ps = kernel_results(no_tiles_build)
    for spec in KERNEL_CASES:
        assert refused["cases"][spec]["digest"] == vdpbf16ps["cases"][spec]["digest"], spec


@pytest.mark.build
@pytest.mark.slow
def test_amx_tile_products_under_the_emulator(tmp_path, monkeypatch):
    """Where the CPU has no AMX: the build with the AMX-BF16 flags, its tile instructions carried out by
    tests/amx_emulator (TDPBF16PS included): the tiles run (the emulator counts them), the BF16 products' error
    model holds, and the cases the tiles do not fit keep the installed build's bits."""
    import llama_cpp

    reason = amx_emulation.why_not_here()
    if reason:
        pytest.skip(f"emulated AMX: {reason}")
    emulator = amx_emulation.build()
    tiles = amx_emulation.variant(amx=False, tiles=True)
    installed = kernel_results(Path(llama_cpp.__file__).parent.parent)
    report = tmp_path / "emulator.jsonl"
    for name, value in emulator.environment(None, report).items():
        monkeypatch.setenv(name, value)
    emulated = kernel_results(tiles)
    assert sum(process["tdpbf16ps"] for process in amx_emulation.reports(report)) > 0
    for spec in KERNEL_CASES:
        assert_bf16_products_error(spec, emulated["cases"][spec])
        if not tiles_fill(spec):
            assert emulated["cases"][spec]["digest"] == installed["cases"][spec]["digest"], spec


HIDDEN = """
import json, sys
from perf.builds.amx_comparison import loaded_llama_libraries
from perf.common import engine_config, probe
from rerank_engine.llama_runner import LlamaRunner
from pathlib import Path

options = engine_config(Path(sys.argv[1]), Path(sys.argv[2])).llama  # the CPU config's attention
runner = LlamaRunner(sys.argv[1], options)
runner.start()
ids, positions = probe(int(sys.argv[3]), runner.n_vocab)
[hidden] = runner.hidden_states([ids], [positions])
runner.close()
print(json.dumps({"hidden": hidden.tolist(), "libraries": loaded_llama_libraries(),
                  "flash_attn": options.flash_attn, "kv_cache_type": options.kv_cache_type}))
"""
# Smallest row cosine, BF16 products against the F32 path (the build without the patch), CPU config attention.
# Each layer's attention output moves by ~u = 2^-8 of its size (relative RMS ~1e-3, the kernel test's errors), and
# the residual stream carries it on: ~1e-6 off a cosine of 1 for 2 layers, and over the stand-in's 28 random
# layers 0.9993-0.9995 measured at 1k-4k tokens.
MIN_COSINE_BF16 = {"tiny": 0.9999, "standin": 0.999}


@pytest.fixture(scope="module")
def f32_path_build() -> Path:
    """This CPU's build without the BF16 patch (libggml-cpu alone, cached), where the installed one has it."""
    import llama_cpp

    if not bf16_products(llama_cpp.llama_print_system_info().decode()):
        pytest.skip("the installed build has no AVX512-BF16: it takes the F32 path, tested above")
    return amx_emulation.variant(amx=False, without=cpu_features.FLASH_ATTN_BF16_AND_LATER)


@pytest.mark.build
@pytest.mark.parametrize("model", ["tiny", "standin"])
def test_bf16_products_keep_the_hidden_states_of_the_f32_path(f32_path_build, make_model, model):
    import llama_cpp

    paths = make_model("f32") if model == "tiny" else ensure_standin()
    served = run_child(HIDDEN, Path(llama_cpp.__file__).parent.parent, *map(str, paths), "700")
    f32 = run_child(HIDDEN, f32_path_build, *map(str, paths), "700")
    assert served["flash_attn"]
    assert all(Path(lib).is_relative_to(f32_path_build.resolve()) for lib in f32["libraries"])
    cos = cosine_rows(np.array(served["hidden"]), np.array(f32["hidden"]))
    assert MIN_COSINE_BF16[model] <= cos.min() < 1.0, cos  # < 1: the two builds do compute differently


@pytest.mark.build
@pytest.mark.parametrize("preset", ["tiny", "tiny-v35"])
def test_skipping_masked_tiles_early_keeps_every_bit(make_model, preset):
    """stack/patches/ggml-cpu-flash-attn-skip-masked.patch decides on the F16 mask, before converting anything,
    which KV tiles are fully masked, and packs K and V only for the tiles in play: the installed build against
    the same sources and flags without that patch gives the same bits, on the kernel cases (causal masks) and on
    the hidden states of a causal model and of a v3.5-shaped one, whose sliding window masks whole tiles."""
    import llama_cpp

    installed = Path(llama_cpp.__file__).parent.parent
    before = amx_emulation.variant(amx=False, without=[cpu_features.FLASH_ATTN_SKIP_PATCH])
    paths = make_model("f32", preset)
    hidden = [run_child(HIDDEN, build, *map(str, paths), "700") for build in (installed, before)]
    assert np.array_equal(np.array(hidden[0]["hidden"]), np.array(hidden[1]["hidden"]))
    assert all(Path(lib).is_relative_to(before.resolve()) for lib in hidden[1]["libraries"])
    if preset == "tiny":
        skipped, kept = kernel_results(installed), kernel_results(before)
        for spec in KERNEL_CASES:
            assert skipped["cases"][spec]["digest"] == kept["cases"][spec]["digest"], spec


def test_kernel_bits_do_not_depend_on_the_thread_count():
    """stack/patches/ggml-cpu-flash-attn-skip-masked.patch has the threads classify the mask's tiles once per op,
    into a table every head reads, except for Q tiles that do not start a tile of their head (ggml cuts the rows of
    all heads into 4 chunks per thread, so with 3 or 5 threads chunks end inside heads), which classify their own.
    Both must decide alike: the installed build gives the same bits on 1, 2, 3 and 5 threads."""
    import llama_cpp

    package = Path(llama_cpp.__file__).parent.parent
    runs = [kernel_results(package, f"threads={threads}")["cases"] for threads in (1, 2, 3, 5)]
    digests = [{spec: errors["digest"] for spec, errors in cases.items()} for cases in runs]
    assert all(d == digests[0] for d in digests[1:]), digests


def test_q8_scores_with_the_served_attention_match_reference(tiny_q8):
    """Q8_0 scores within the project's Q8_0 tolerance (tests/test_engine_reference.py) with the CPU config's
    attention (flash attention on the tiled path: a prompt of several 64-token tiles)."""
    served = engine_config(*tiny_q8).llama
    engine = open_engine(tiny_q8, n_ctx=4096, flash_attn=served.flash_attn, kv_cache_type=served.kv_cache_type)
    docs = [" ".join(["Paris is the capital of France and its most populous city."] * (i + 3)) for i in range(8)]
    prompt_tokens = len(engine.plan(RerankRequest("capital of France", docs)).prompts[0].ids)
    assert prompt_tokens >= 3 * 64
    result = engine.rerank("capital of France", docs)
    expected = Reference(tiny_q8, engine).rerank("capital of France", docs).scores
    np.testing.assert_allclose(result.scores, expected, atol=0.05)


# -- the bench's comparison (perf/builds/bf16_attention_comparison.py) ---------------------------------------------


@pytest.mark.build
def test_bench_compares_the_builds_side_by_side(f32_path_build, tiny_q8):
    """perf/builds/bf16_attention_bench.py's comparison on the tiny model: both builds in children, timed and profiled
    (here the tests' libggml-cpu variant stands in for the wheel built without the patch)."""
    import llama_cpp

    options = engine_config(*tiny_q8).llama
    paths = {"bf16": Path(llama_cpp.__file__).parent.parent, "f32": f32_path_build}
    result = bf16_attention_comparison.compare(tiny_q8[0], options, [200], 1, paths, say=lambda _: None)
    assert result["bf16_attention_vs_f32"]["200"] > 0
    assert result["builds"]["bf16"]["attention_s"]["200"] > 0
    assert 0.999 <= result["cosine_min"]["200"] < 1.0
    assert "| 200 | " in tables.bf16_attention_table(result)


def test_bench_says_why_it_cannot_compare_without_avx512_bf16():
    reason = bf16_attention_comparison.why_not_here({"avx2", "avx512f"}, "Some CPU")
    assert reason is not None
    assert "Some CPU has no AVX512-BF16" in reason
    assert bf16_attention_comparison.why_not_here({"avx512f", "avx512_bf16"}, None) is None
    assert reason in tables.bf16_attention_table({"skipped": reason})
