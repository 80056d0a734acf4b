"""The CPU build of llama.cpp: flags from CPU features, the AMX patch, and the AMX self-check."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from perf import tables
from perf.builds import amx_comparison
from rerank_engine import EngineConfig, amx_check
from stack import cpu_features
from tests import amx_emulation, ggml_cpu_build, q8_repack_builds
from tests.conftest import open_engine

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parent.parent
ZEN4 = ("flags : fpu sse4_2 avx f16c fma bmi2 avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi "
        "avx512_vnni avx512_bf16")
SAPPHIRE_RAPIDS = ZEN4 + " avx_vnni amx_bf16 amx_tile amx_int8"
NO_AMX_REASON = amx_comparison.why_not_here()
AVX2_ONLY = "flags : fpu sse4_2 avx f16c fma bmi2 avx2"
# The flags verified on the build machines (../shared/notes/environment.md).
VERIFIED = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
            "-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON")


def args_for(cpuinfo: str, permitted: bool, asked: bool = True) -> str:
    """The flags for a CPU (``cpuinfo``) and the kernel's answer, with AMX asked for (--amx) or not."""
    flags = cpu_features.cpu_flags(cpuinfo)
    return " ".join(cpu_features.cmake_args(flags, asked and cpu_features.amx_usable(flags, permitted), permitted))


def test_flags_follow_the_cpu():
    assert args_for(ZEN4, permitted=False) == VERIFIED
    assert args_for(AVX2_ONLY, permitted=False) == ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON "
                                                    "-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON")
    amx = args_for(SAPPHIRE_RAPIDS, permitted=True)
    assert amx.startswith(VERIFIED)
    assert amx.endswith("-DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON")


def test_the_wheels_flags_and_a_repack_paths_share_one_scratch_build():
    """The AVX2 host's wheel flags and the repacked path's AVX2 build are the same ggml options, so the scratch builds
    of both (tests/ggml_cpu_build.py) compile in one folder: llama-cpp-python's LLAVA_BUILD must not split them."""
    wheel = args_for(AVX2_ONLY, permitted=False).split()
    assert "-DLLAVA_BUILD=OFF" in wheel
    assert ggml_cpu_build.ggml_options(wheel) == q8_repack_builds.cmake_args("avx2")
    assert ggml_cpu_build.ggml_options(q8_repack_builds.cmake_args("avx2")) == q8_repack_builds.cmake_args("avx2")


def test_default_build_gets_the_attention_tiles_without_ggml_amx_matmul():
    """Without --amx an AMX CPU whose kernel grants tiles still gets GGML_AMX_TILE and GGML_AMX_BF16 (the tiled
    flash attention's products, stack/patches/ggml-cpu-flash-attn-amx.patch), never GGML_AMX_INT8 (ggml's AMX
    matmul, slower here); without the permission, or on a CPU without AMX-BF16, neither."""
    tiles = args_for(SAPPHIRE_RAPIDS, permitted=True, asked=False)
    assert tiles == VERIFIED + " -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=ON -DGGML_AMX_BF16=ON"
    assert "AMX" not in args_for(SAPPHIRE_RAPIDS, permitted=False, asked=False)
    assert args_for(ZEN4, permitted=True, asked=False) == VERIFIED
    assert args_for(ZEN4.replace("avx512_bf16", "amx_tile"), permitted=True, asked=False) == (
        VERIFIED.replace(" -DGGML_AVX512_BF16=ON", "") + " -DGGML_AMX_TILE=ON")


def test_amx_only_where_the_kernel_permits_it():
    assert "AMX" not in args_for(SAPPHIRE_RAPIDS, permitted=False)
    assert not cpu_features.amx_usable(cpu_features.cpu_flags(ZEN4), permitted=True)


@pytest.mark.parametrize("options", [[], ["--amx"]])
def test_amx_is_built_only_when_asked(options):
    """make install's flags and patches: without AMX by default (the repacked Q8_0 path was faster where measured),
    with it for LLAMA_AMX=1 where this machine allows it."""
    def run(command: str) -> str:
        return subprocess.run([sys.executable, "stack/cpu_features.py", command, *options], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    flags = cpu_features.cpu_flags()
    amx = bool(options) and cpu_features.amx_usable(flags, cpu_features.amx_permitted())
    args = run("cmake-args")
    assert args.split() == cpu_features.cmake_args(flags, amx)
    assert ("AMX_INT8" in args) == amx
    assert run("patch").split() == [str(path) for path in cpu_features.patches(amx)]


def test_install_is_idempotent_for_this_cpu():
    """After `make install`, nothing is rebuilt: the wheel installed was built with this CPU's flags (the
    stamp's name is the hash of version, flags and patch), and every requirement is in place."""
    result = subprocess.run(["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "Nothing to be done" in result.stdout, result.stdout


def test_the_amx_patch_applies_exactly(tmp_path):
    mmq_source = ggml_cpu_build.unpack_llama_cpp(tmp_path)
    ggml_cpu_build.apply_patches(mmq_source, [cpu_features.AMX_PATCH])
    patched = (mmq_source / "vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp").read_text()
    assert "alignas(64) static const tile_config_t ggml_tile_config" in patched
    assert "_tile_loadconfig(&ggml_tile_config);" in patched
    assert "syscall(SYS_arch_prctl, 0x1023, 18);" in patched
    # It compiles with the AMX options the build would add (running it needs an AMX CPU).
    ggml = mmq_source / "vendor/llama.cpp/ggml"
    isa = ["-mavx2", "-mfma", "-mf16c", "-mbmi2", "-mavx512f", "-mavx512cd", "-mavx512vl", "-mavx512dq", "-mavx512bw",
           "-mavx512vbmi", "-mavx512vnni", "-mavx512bf16", "-mamx-tile", "-mamx-int8", "-mamx-bf16"]
    defines = ["-DGGML_AMX_TILE", "-DGGML_AMX_INT8", "-DGGML_AMX_BF16", "-D__AMX_TILE__", "-D__AMX_INT8__",
               "-D__AMX_BF16__"]
    subprocess.run(["g++", "-std=c++17", "-fsyntax-only", *isa, *defines, f"-I{ggml / 'include'}", f"-I{ggml / 'src'}",
                    f"-I{ggml / 'src' / 'ggml-cpu'}", str(ggml / "src/ggml-cpu/amx/mmq.cpp")], check=True,
                   capture_output=True)


# an attention patch out of order: (the patch, the one it builds on, left out of the chain)
OUT_OF_ORDER = {"bf16-attention-out-of-order": (cpu_features.FLASH_ATTN_BF16_PATCH, cpu_features.FLASH_ATTN_PATCH),
                "amx-attention-out-of-order": (cpu_features.FLASH_ATTN_AMX_PATCH, cpu_features.FLASH_ATTN_BF16_PATCH)}


@pytest.mark.parametrize("case", ["bogus", *OUT_OF_ORDER])
def test_the_build_stops_when_the_patch_does_not_apply(tmp_path, case):
    """A patch that matches nothing, and each attention patch without the one it builds on (the agreed order is
    package, Q8_0 repack, flash attention tiled, BF16, AMX, then the masked tiles' skipping): each stops the
    build, naming the patch."""
    if case == "bogus":
        bogus = tmp_path / "bogus.patch"
        bogus.write_text("--- a/vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp\n"
                         "+++ b/vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp\n"
                         "@@ -1,1 +1,1 @@\n-no such line\n+replacement\n")
        patches = [bogus]
    else:
        bogus, base = OUT_OF_ORDER[case]
        chain = cpu_features.patches(amx=False)
        patches = [p for p in chain[:chain.index(bogus) + 1] if p != base]
        assert patches[-1] == bogus
    env = {**os.environ, "PYTHON": sys.executable, "LLAMA_CPP_PYTHON_VERSION": "0.3.36", "LLAMA_CMAKE_ARGS": VERIFIED,
           "LLAMA_PATCH": " ".join(map(str, patches)), "CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "cache" / "sdist").mkdir(parents=True)
    for sdist in (ROOT / ".cache" / "sdist").glob("*.tar.gz"):
        (tmp_path / "cache" / "sdist" / sdist.name).symlink_to(sdist)
    result = subprocess.run(["bash", str(ROOT / "stack" / "build_llama_wheel.sh")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert f"{bogus} does not apply to llama-cpp-python 0.3.36" in result.stderr
    assert not list((tmp_path / "cache" / "wheels").glob("*/*.whl"))


def test_self_check_compares_the_two_paths_for_real(tiny_q8):
    assert amx_check.failure_reason(str(tiny_q8[0])) is None  # extra buffer types agree with the plain path


@pytest.mark.parametrize(("command", "reason"), [
    ("import os, signal; os.kill(os.getpid(), signal.SIGILL)", "the check died with SIGILL"),
    ("print('AMX and plain hidden states disagree (cosine 0.2 < 0.999)'); raise SystemExit(1)",
     "AMX and plain hidden states disagree (cosine 0.2 < 0.999)"),
    ("import time; time.sleep(30)", "the check did not finish within 2 s"),
])
def test_self_check_reports_each_way_of_failing(command, reason):
    assert amx_check.failure_reason("unused.gguf", 2.0, (sys.executable, "-c", command)) == reason


def test_failed_self_check_falls_back_and_still_scores(tiny_q8, monkeypatch, caplog):
    monkeypatch.setattr(amx_check, "amx_in_play", lambda: True)
    monkeypatch.setattr(amx_check, "failure_reason", lambda model: "the check died with SIGILL")
    with caplog.at_level(logging.WARNING, logger="rerank_engine.amx_check"):
        engine = open_engine(tiny_q8)
    assert "AMX self-check failed (the check died with SIGILL)" in caplog.text
    assert engine.runner.options.extra_buffers is False
    monkeypatch.undo()
    normal = open_engine(tiny_q8)
    assert normal.runner.options.extra_buffers is True
    docs = ["The Nile is long.", "Bread.", "The Amazon river.", ""]
    np.testing.assert_allclose(engine.rerank("rivers", docs).scores, normal.rerank("rivers", docs).scores, atol=0.05)


def test_extra_buffer_types_and_plain_path_agree_on_q8(tiny_q8):
    """On an AMX machine the extra buffer types are AMX; elsewhere the AVX-512 repacking. Either way they
    must agree with the plain path within Q8_0 tolerance."""
    plain = open_engine(tiny_q8, extra_buffers=False)
    extra = open_engine(tiny_q8)
    docs = [f"passage {i} about rivers and lakes " * (1 + i) for i in range(12)]
    a, b = extra.rerank("rivers", docs).scores, plain.rerank("rivers", docs).scores
    np.testing.assert_allclose(a, b, atol=0.05)
    assert dataclasses.replace(plain.runner.options, extra_buffers=True) == extra.runner.options


@pytest.mark.parametrize(("flags", "permitted", "reason"), [
    ({"avx512f", "avx512_vnni"}, True, "EPYC has no AMX"),
    ({"avx512f", "avx512_vnni", "amx_tile", "amx_int8"}, False, "kernel does not grant"),
    ({"avx512f", "amx_tile", "amx_int8"}, True, "lacks AVX-512 VNNI"),
    ({"avx512f", "avx512_vnni", "amx_tile", "amx_int8"}, True, None),
])
def test_amx_comparison_runs_only_where_amx_does(flags, permitted, reason):
    found = amx_comparison.unavailable_reason(flags, permitted, "AMD EPYC")
    assert found is None if reason is None else reason in found


def test_second_build_runs_from_its_unpacked_wheel(tiny_q8, tmp_path):
    """The benchmark's second build, as it runs it: a cached wheel unpacked and put first on a child's
    PYTHONPATH. Here the installed build's own wheel (found in the cache, nothing built): the child must
    load llama.cpp from the unpacked copy and compute what the installed build computes."""
    flags = cpu_features.cpu_flags()
    amx = amx_check.amx_in_play()
    wheel = amx_comparison.build_wheel(cpu_features.cmake_args(flags, amx), cpu_features.patches(amx),
                                       say=lambda _: None)
    unpacked = amx_comparison.unpack(wheel, tmp_path)
    options = EngineConfig.from_options(*map(str, tiny_q8), n_ctx=512).llama
    result = amx_comparison.side_by_side(tiny_q8[0], options, [300], 2, {"amx": None, "avx512": unpacked},
                                         say=lambda _: None)
    installed, copy = result["builds"]["amx"], result["builds"]["avx512"]
    assert Path(copy["llama_cpp_file"]).is_relative_to(unpacked)
    assert copy["libraries"]
    assert all(Path(lib).is_relative_to(unpacked) for lib in copy["libraries"])
    assert installed["libraries"]
    assert not any(Path(lib).is_relative_to(unpacked) for lib in installed["libraries"])
    assert copy["system_info"] == installed["system_info"]
    assert result["cosine_amx_vs_avx512"]["300"] >= 0.99999
    assert result["amx_vs_avx512"]["300"] == round(installed["tokens_per_s"]["300"] / copy["tokens_per_s"]["300"], 3)
    assert "| 300 | " in tables.amx_table(result)


def test_each_cached_build_unpacks_to_its_own_folder(tmp_path):
    """Every build of a version has the same wheel file name; only its cache folder carries the key. Two builds
    (the same name, different patches) must unpack side by side, each to its own contents."""
    wheels = []
    for key in ("0.3.36-aaaa", "0.3.36-bbbb"):
        wheel = tmp_path / "wheels" / f"llama-cpp-python-{key}" / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
        wheel.parent.mkdir(parents=True)
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("llama_cpp/__init__.py", f"BUILD = {key!r}\n")
        wheels.append(wheel)
    unpacked = [amx_comparison.unpack(wheel, tmp_path / "builds") for wheel in wheels]
    assert unpacked[0] != unpacked[1]
    for folder, key in zip(unpacked, ("0.3.36-aaaa", "0.3.36-bbbb"), strict=True):
        assert (folder / "llama_cpp" / "__init__.py").read_text() == f"BUILD = {key!r}\n"
    assert amx_comparison.unpack(wheels[0], tmp_path / "builds") == unpacked[0]


def amx_builds() -> dict[str, Path | None]:
    """Where each build is for a child's PYTHONPATH: None for the installed one (without AMX unless make install
    was given LLAMA_AMX=1), the other's CPU backend built beside it."""
    if amx_check.amx_in_play():
        return {"amx": None, "avx512": amx_emulation.variant(amx=False)}
    return {"amx": amx_emulation.variant(amx=True), "avx512": None}


@pytest.mark.skipif(NO_AMX_REASON is not None, reason=f"needs AMX: {NO_AMX_REASON}")
def test_amx_and_avx512_builds_agree(tiny_q8):
    """On an AMX machine: the AMX build (after its self-check) and the AVX-512 build (one installed, the other's
    CPU backend built beside it, cached) give the same hidden states within Q8_0 tolerance."""
    options = EngineConfig.from_options(*map(str, tiny_q8), n_ctx=1024).llama
    paths = amx_builds()
    result = amx_comparison.side_by_side(tiny_q8[0], options, [512], 1, paths, say=lambda _: None)
    assert result["amx_self_check_passed"]
    assert "AMX_INT8 = 1" in result["builds"]["amx"]["system_info"]
    assert "AMX_INT8 = 1" not in result["builds"]["avx512"]["system_info"]
    assert result["cosine_amx_vs_avx512"]["512"] >= 0.999


# A child: the AMX build's engine, then another AMX user on the same thread (TILERELEASE, as oneDNN's kernels in
# PyTorch end with), then the engine again. ggml loaded the tile configuration once per thread before the AMX
# patch reloaded it at every matmul: the second pass died with SIGILL (seen with torch in the process).
TILE_RELEASED = """
import ctypes, mmap, sys
import llama_cpp
print(llama_cpp.llama_print_system_info().decode())
from rerank_engine import EngineConfig
from rerank_engine.llama_runner import LlamaRunner
options = EngineConfig.from_options(sys.argv[1], sys.argv[2], n_ctx=1024).llama
runner = LlamaRunner(sys.argv[1], options)
runner.start()
ids = list(range(10, 200))
runner.hidden_states([ids], [[len(ids) - 1]])
code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
code.write(bytes([0xC4, 0xE2, 0x78, 0x49, 0xC0, 0xC3]))  # tilerelease; ret
address = ctypes.addressof(ctypes.c_char.from_buffer(code))
ctypes.CFUNCTYPE(None)(address)()
runner.hidden_states([ids], [[len(ids) - 1]])
print("second pass done")
"""


@pytest.mark.skipif(NO_AMX_REASON is not None, reason=f"needs AMX: {NO_AMX_REASON}")
def test_amx_build_survives_another_tile_user_on_its_threads(tiny_q8):
    result = subprocess.run([sys.executable, "-c", TILE_RELEASED, *map(str, tiny_q8)], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env=amx_comparison.child_environment(amx_builds()["amx"]))
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "AMX_INT8 = 1" in result.stdout
    assert "second pass done" in result.stdout


def test_cpuinfo_fields_are_read_by_name():
    cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx amx_tile\n"
    assert cpu_features.cpu_model(cpuinfo) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_features.cpu_flags(cpuinfo) == {"fpu", "avx", "amx_tile"}
    assert cpu_features.cpu_model("flags : avx") is None
    zen4 = "cpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    assert cpu_features.cpu_generation(zen4) == "family 25, model 17"
    assert cpu_features.cpu_generation(cpuinfo) is None
