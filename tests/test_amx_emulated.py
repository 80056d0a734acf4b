"""llama.cpp's AMX build run here, on a CPU without AMX, its tile instructions carried out by tests/amx_emulator.

The machine code is the AMX build's own (see tests/amx_emulation.py), so these tests see what the compiler made
of ggml's AMX code. Released, it hands LDTILECFG a configuration without tile shapes and dies at the first tile
load: the engine's self-check catches that and the engine serves without AMX. With this project's patch it
passes the self-check and the engine scores like the AVX-512 build. What they cannot show is speed: that needs
a CPU with AMX (perf/builds/amx_bench.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import amx_emulation

ROOT = Path(__file__).resolve().parent.parent
REASON = amx_emulation.why_not_here()
pytestmark = [pytest.mark.build, pytest.mark.skipif(REASON is not None, reason=f"emulated AMX: {REASON}")]
DOCS = [f"passage {i} about rivers and lakes " * (1 + i) for i in range(12)]
# The engine in a child, run from the repository root (the engine package is on the path: make install's .pth).
# "cpu-has-amx" makes the engine treat this CPU as having AMX, which under the emulator it has: the engine then
# runs its AMX self-check (itself a child, under the same build and emulator) before serving.
ENGINE = """
import json, logging, sys
import llama_cpp
from perf.builds.amx_comparison import loaded_llama_libraries
from rerank_engine import EngineConfig, Reranker, amx_check
logging.basicConfig(level=logging.INFO)
if sys.argv[4] == "cpu-has-amx":
    amx_check.amx_in_play = lambda: True
engine = Reranker(EngineConfig.from_options(sys.argv[1], sys.argv[2]))
result = engine.rerank("rivers", json.loads(sys.argv[3]))
print(json.dumps({"scores": [float(s) for s in result.scores], "libraries": loaded_llama_libraries(),
                  "system_info": llama_cpp.llama_print_system_info().decode(),
                  "extra_buffers": engine.runner.options.extra_buffers}))
"""


@pytest.fixture(scope="module")
def builds() -> amx_emulation.EmulatedBuilds:
    return amx_emulation.build()


def emulated(builds: amx_emulation.EmulatedBuilds, argv: list[str], package: Path | None,
             report: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **builds.environment(package, report)}
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=600)


def test_the_probe_needs_the_emulator_here(builds):
    """Without the emulator this CPU refuses the tile instructions: everything below really is emulated."""
    result = subprocess.run([str(builds.probe)], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGILL


def test_emulated_tiles_multiply_like_numpy(builds, tmp_path):
    result = emulated(builds, [str(builds.probe), "dot"], None, tmp_path / "report")
    assert result.returncode == 0, result.stderr.decode()
    raw = result.stdout
    a = np.frombuffer(raw[:1280], np.int8).reshape(16, 80)[:, :64]  # loaded with a row stride of 80
    b = np.frombuffer(raw[1280:2304], np.int8).reshape(16, 64)
    c = np.frombuffer(raw[2304:3328], np.int32).reshape(16, 16)
    d = np.frombuffer(raw[3328:], np.int32).reshape(16, 16)
    # C[m, n] = sum over k, i of A[m, 4k + i] * B[k, 4n + i]: B is packed four int8 to a dword (VNNI).
    a4, b4 = a.reshape(16, 16, 4).astype(np.int64), b.reshape(16, 16, 4).astype(np.int64)
    np.testing.assert_array_equal(c, np.einsum("mki,kni->mn", a4, b4))
    unsigned_a4 = a.view(np.uint8).reshape(16, 16, 4).astype(np.int64)
    np.testing.assert_array_equal(d, 2 * np.einsum("mki,kni->mn", unsigned_a4, b4))  # TDPBUSD twice
    [report] = amx_emulation.reports(tmp_path / "report")
    assert (report["ldtilecfg"], report["tileloadd"], report["tdpb"], report["tilestored"]) == (1, 2, 3, 2)


@pytest.mark.parametrize(("mode", "dies_with", "message"), [
    ("no-permission", signal.SIGILL, "tile instruction before arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)"),
    ("unconfigured", signal.SIGILL, "TILELOADD with no tile configuration loaded in this thread (#UD)"),
    ("bad-config", signal.SIGSEGV, "LDTILECFG of a malformed tile configuration (#GP)"),
])
def test_emulator_faults_where_the_hardware_does(builds, tmp_path, mode, dies_with, message):
    result = emulated(builds, [str(builds.probe), mode], None, tmp_path / "report")
    assert result.returncode == -dies_with
    assert message in result.stderr.decode()
    assert result.stdout == b""


def test_released_amx_code_dies_at_its_first_tile_load(builds, tiny_q8, tmp_path):
    """ggml's AMX code as released, compiled as the build compiles it: GCC keeps only the palette byte of the
    stack configuration (its LDTILECFG intrinsic says it reads 8 bytes), so the first tile load faults."""
    check = [sys.executable, "-c", "import sys; from rerank_engine import amx_check; "
             "sys.exit(amx_check.main(sys.argv[1]))", str(tiny_q8[0])]
    result = emulated(builds, check, builds.unpatched, tmp_path / "report")
    assert result.returncode == -signal.SIGILL
    assert "TILELOADD names tmm" in result.stderr.decode()
    assert "which the loaded tile configuration leaves empty (#UD)" in result.stderr.decode()


@pytest.fixture(scope="module")
def installed_scores(tiny_q8) -> list[float]:
    """The engine's scores on the installed (AVX-512) build."""
    argv = [sys.executable, "-c", ENGINE, str(tiny_q8[0]), str(tiny_q8[1]), json.dumps(DOCS), "as-is"]
    run = json.loads(subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=600, check=True).stdout)
    assert "AMX_INT8 = 1" not in run["system_info"]
    assert run["extra_buffers"]
    return run["scores"]


def engine_run(builds: amx_emulation.EmulatedBuilds, package: Path, tiny_q8, report: Path) -> tuple[dict, str]:
    argv = [sys.executable, "-c", ENGINE, str(tiny_q8[0]), str(tiny_q8[1]), json.dumps(DOCS), "cpu-has-amx"]
    result = emulated(builds, argv, package, report)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    run = json.loads(result.stdout)
    assert all(Path(lib).is_relative_to(package) for lib in run["libraries"])
    assert "AMX_INT8 = 1" in run["system_info"]
    return run, result.stderr.decode()


def test_engine_on_the_patched_amx_build_checks_it_and_scores_on_tiles(builds, tiny_q8, installed_scores, tmp_path):
    """Deliverable: AMX and non-AMX builds give the same scores within Q8_0 tolerance, here through the whole
    engine (prompt, llama.cpp with AMX after its self-check, projector, scores)."""
    run, log = engine_run(builds, builds.patched, tiny_q8, tmp_path / "report")
    assert "AMX self-check passed: llama.cpp uses AMX" in log
    assert run["extra_buffers"]
    # Both paths quantise activations to Q8_0 and sum the same int8 products; seen here: 5e-4 apart, while the
    # random model's scores spread over 0.02. A wrong tile layout moves them by far more.
    np.testing.assert_allclose(run["scores"], installed_scores, atol=0.005)
    assert np.argmax(run["scores"]) == np.argmax(installed_scores)
    check, engine = amx_emulation.reports(tmp_path / "report")  # the self-check's child, then the engine's process
    for report in (check, engine):
        assert report["xtiledata_grants"] >= 1
        assert report["tdpb"] > 0
        # Every thread that ran tiles loaded the configuration itself: at each matmul, since another AMX user
        # on the thread may have released it (tests/test_cpu_build.py, on a real AMX CPU).
        assert report["ldtilecfg"] >= report["threads"] >= 1


def test_engine_on_the_released_amx_build_falls_back_and_scores(builds, tiny_q8, installed_scores, tmp_path):
    """The self-check's fallback for real: its child dies at the first tile load, the engine logs why and
    serves without the extra buffer types (so without AMX), with the same scores, and never crashes."""
    run, log = engine_run(builds, builds.unpatched, tiny_q8, tmp_path / "report")
    assert "AMX self-check failed (the check died with SIGILL)" in log
    assert not run["extra_buffers"]
    np.testing.assert_allclose(run["scores"], installed_scores, atol=0.005)
    [serving] = amx_emulation.reports(tmp_path / "report")  # the self-check's child died before it could report
    assert serving["threads"] == 0, "no tile instruction ran in the serving process"
