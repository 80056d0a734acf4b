"""The CUDA build's flag selection and wheel-cache key (no GPU needed: nvidia-smi and nvcc are faked where a GPU
host's answers are needed), and the GPU check's parts that run without a GPU."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from perf import tables
from perf.common import ENVELOPE_KEYS, GPU_CONFIG, config_parameters, write_results
from perf.gpu import gpu_check, gpu_check_prepare
from stack import cpu_features, gpu_features
from stack.gpu_features import CudaFacts

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parent.parent
NVCC = "/usr/local/cuda-12.8/bin/nvcc"
# Every CUDA build links with archive symbols kept local (the H200 build crashed at model load without it).
LINK = ("-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--exclude-libs,ALL",)


def executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize(("output", "caps"), [
    ("9.0\n", ("90",)),
    ("9.0\n9.0\n9.0\n9.0\n", ("90",)),  # eight H200s are one architecture
    ("8.6\n12.0\n8.0\n", ("80", "86", "120")),
    ("[N/A]\n", ()),
    ("", ()),
])
def test_compute_capabilities_become_cmake_architectures(output, caps):
    assert gpu_features.parse_compute_caps(output) == caps


@pytest.mark.parametrize(("facts", "override", "flags"), [
    (CudaFacts(("90",), NVCC), "", ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90",
                                    f"-DCMAKE_CUDA_COMPILER={NVCC}", *LINK]),
    (CudaFacts(("86", "90"), NVCC), "", ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86;90",
                                         f"-DCMAKE_CUDA_COMPILER={NVCC}", *LINK]),
    (CudaFacts(("90",), None), "", []),  # a GPU but no compiler: the CPU build, unchanged
    (CudaFacts((), NVCC), "", []),  # a compiler but no GPU (this machine)
    (CudaFacts((), NVCC), "80;90", ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80;90",
                                    f"-DCMAKE_CUDA_COMPILER={NVCC}", *LINK]),  # an image built on a GPU-less host
    (CudaFacts(("90",), NVCC), "89", ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=89",
                                      f"-DCMAKE_CUDA_COMPILER={NVCC}", *LINK]),
    (CudaFacts(("90",), NVCC), "none", []),
    (CudaFacts(("90",), NVCC), " NONE ", []),
    (CudaFacts((), None), "90", []),  # nothing can be built for CUDA without nvcc
])
def test_cuda_flags_follow_the_gpus_and_the_override(facts, override, flags):
    assert gpu_features.cmake_args(facts, override) == flags


def test_nvcc_is_found_on_path_then_in_the_toolkit(tmp_path):
    on_path = executable(tmp_path / "bin" / "nvcc", "exit 0")
    in_home = executable(tmp_path / "cuda-13.0" / "bin" / "nvcc", "exit 0")
    (tmp_path / "cuda").symlink_to(tmp_path / "cuda-13.0")
    nowhere = tmp_path / "no-toolkit"
    env = {"PATH": str(on_path.parent), "CUDA_HOME": str(tmp_path / "cuda")}
    assert gpu_features.find_nvcc(env, nowhere) == str(on_path)
    # Resolved through the toolkit's version-neutral link: a toolkit change changes the flags, hence the key.
    assert gpu_features.find_nvcc({"CUDA_HOME": str(tmp_path / "cuda")}, nowhere) == str(in_home)
    assert gpu_features.find_nvcc({}, tmp_path / "cuda") == str(in_home)
    assert gpu_features.find_nvcc({"PATH": str(tmp_path)}, nowhere) is None


def test_real_selection_here_builds_no_cuda():
    """This machine has no GPU (its nvcc, if any, cannot make a CUDA build useful here): no CUDA flags."""
    facts = gpu_features.detect()
    assert facts.compute_caps == ()
    assert gpu_features.cmake_args(facts) == []
    result = subprocess.run([sys.executable, "stack/gpu_features.py", "cmake-args"], cwd=ROOT, capture_output=True,
                            text=True, check=True, env={**os.environ, "LLAMA_CUDA_ARCHITECTURES": ""})
    assert result.stdout == "\n"


def make_values(env: dict[str, str], *names: str, **variables: str) -> list[str]:
    """Values of Makefile variables, as `make install` computes them with ``env``."""
    command = ["make", "-s", "--no-print-directory", "--eval", "print-%: ; @echo '$($*)'", f"PYTHON={sys.executable}",
               *(f"{k}={v}" for k, v in variables.items()), *(f"print-{name}" for name in names)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.splitlines()


@pytest.fixture
def gpu_host(tmp_path) -> dict[str, str]:
    """This machine as a GPU host: an nvidia-smi that reports one H200 and an nvcc, first on PATH."""
    fake = tmp_path / "fake-bin"
    executable(fake / "nvidia-smi", 'case "$*" in *compute_cap*) echo 9.0;; *) echo "GPU 0: NVIDIA H200";; esac')
    executable(fake / "nvcc", "exit 0")
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "LLAMA_CUDA_ARCHITECTURES": ""}


def test_make_install_adds_cuda_on_a_gpu_host_and_keys_the_wheel_on_it(gpu_host, tmp_path):
    cpu_env = {**os.environ, "LLAMA_CUDA_ARCHITECTURES": ""}
    cpu_args, cpu_key = make_values(cpu_env, "LLAMA_CMAKE_ARGS", "LLAMA_KEY")
    flags = cpu_features.cpu_flags()
    assert cpu_args == " ".join(cpu_features.cmake_args(flags, amx=False))  # no GPU: exactly the CPU build, cached
    amx = cpu_features.amx_usable(flags, cpu_features.amx_permitted())  # LLAMA_AMX=1: AMX where this host allows it
    assert make_values(cpu_env, "LLAMA_CMAKE_ARGS", LLAMA_AMX="1") == [" ".join(cpu_features.cmake_args(flags, amx))]
    gpu_args, gpu_key = make_values(gpu_host, "LLAMA_CMAKE_ARGS", "LLAMA_KEY")
    nvcc = str(tmp_path / "fake-bin" / "nvcc")
    assert gpu_args == f"{cpu_args} -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER={nvcc} {LINK[0]}"
    assert gpu_key != cpu_key
    assert make_values(gpu_host, "LLAMA_CMAKE_ARGS", LLAMA_CUDA_ARCHITECTURES="none") == [cpu_args]
    assert make_values(gpu_host, "LLAMA_CMAKE_ARGS", LLAMA_CUDA_ARCHITECTURES="80;90") == [
        f"{cpu_args} -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=80;90 -DCMAKE_CUDA_COMPILER={nvcc} {LINK[0]}"]
    assert make_values({**gpu_host, "LLAMA_CUDA_ARCHITECTURES": "89"}, "LLAMA_CMAKE_ARGS") == [
        f"{cpu_args} -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=89 -DCMAKE_CUDA_COMPILER={nvcc} {LINK[0]}"]


def test_the_wheel_cache_keys_on_the_cuda_flags(gpu_host, tmp_path):
    """The build script looks for its wheel under the key make computes: a CUDA wheel is never taken for a CPU
    one. Wheels placed under each key stand for earlier builds; the script finds them and builds nothing."""
    cache = tmp_path / "cache"
    (cache / "sdist").mkdir(parents=True)
    for sdist in (ROOT / ".cache" / "sdist").glob("*.tar.gz"):
        (cache / "sdist" / sdist.name).symlink_to(sdist)
    found = {}
    for label, env in (("cpu", {**os.environ, "LLAMA_CUDA_ARCHITECTURES": ""}), ("gpu", gpu_host)):
        version, args, key = make_values(env, "LLAMA_CPP_PYTHON_VERSION", "LLAMA_CMAKE_ARGS", "LLAMA_KEY",
                                         LLAMA_PATCH="")
        assert key == hashlib.sha256(f"{version}\n{args}\n".encode()).hexdigest()[:16]
        wheel = cache / "wheels" / f"llama-cpp-python-{version}-{key}" / f"llama_cpp_python-{version}-{label}.whl"
        wheel.parent.mkdir(parents=True)
        wheel.touch()
        result = subprocess.run(["bash", str(ROOT / "stack" / "build_llama_wheel.sh")], capture_output=True, text=True,
                                env={**os.environ, "PYTHON": sys.executable, "LLAMA_CPP_PYTHON_VERSION": version,
                                     "LLAMA_CMAKE_ARGS": args, "LLAMA_PATCH": "", "CACHE_DIR": str(cache),
                                     "LLAMA_BUILD_ONLY": "1"}, timeout=60, check=True)
        found[label] = result.stdout.strip()
    assert found["cpu"].endswith("-cpu.whl")
    assert found["gpu"].endswith("-gpu.whl")


# -- the GPU check (perf/gpu/gpu_check.sh): its parts that need no GPU -------------------------------------


def test_prepared_folder_fits_the_carry_limit_and_holds_a_buildable_source(tmp_path):
    out = tmp_path / "gpu-check"
    report = gpu_check_prepare.prepare(out, gpu_check_prepare.SDIST)
    assert report["folder_bytes"] + gpu_check_prepare.travelling_bytes() < gpu_check_prepare.CARRY_LIMIT_BYTES
    with tarfile.open(gpu_check_prepare.SDIST) as sdist:
        wanted = {m.name.partition("/")[2] for m in sdist if m.isfile() and gpu_check_prepare.kept(
            m.name.partition("/")[2])}
    with tarfile.open(out / gpu_check_prepare.SOURCE_TAR) as trimmed:
        names = {m.name for m in trimmed}
    # Every kept file under its own name (long names too: a PAX record must not restore the sdist's top folder).
    assert names == {f"{gpu_check_prepare.SOURCE_ROOT}/{name}" for name in wanted}
    llama = f"{gpu_check_prepare.SOURCE_ROOT}/vendor/llama.cpp"
    assert {f"{llama}/ggml/src/ggml-cuda/template-instances/fattn-vec-instance-f16-f16.cu",
            f"{llama}/ggml/src/ggml-cuda/ggml-cuda.cu", f"{llama}/ggml/src/ggml-cpu/ggml-cpu.c",
            f"{llama}/src/llama.cpp",
            f"{llama}/models/ggml-vocab-qwen2.gguf",
            f"{gpu_check_prepare.SOURCE_ROOT}/llama_cpp/llama_cpp.py"} <= names
    assert not [n for n in names if "/ggml-vulkan/" in n or "/tools/" in n or "/.git/" in n]
    for package in ("gguf", "diskcache", "bm25s"):
        assert (out / "pydeps" / package / "__init__.py").is_file()
    assert json.loads((out / "revision.json").read_text())["commit"] == subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    # The same bytes again: the GPU build's stamp hashes the tarball, so preparing again rebuilds nothing.
    digest = hashlib.sha256((out / gpu_check_prepare.SOURCE_TAR).read_bytes()).hexdigest()
    gpu_check_prepare.prepare(out, gpu_check_prepare.SDIST)
    assert hashlib.sha256((out / gpu_check_prepare.SOURCE_TAR).read_bytes()).hexdigest() == digest


@pytest.mark.skipif(not shutil.which("cmake") or not shutil.which("ninja"), reason="needs cmake and ninja")
def test_trimmed_source_configures(tmp_path):
    """CMake finds every file the build of ggml and llama.cpp names (CPU here; the CUDA part needs a toolkit)."""
    gpu_check_prepare.write_trimmed_source(gpu_check_prepare.SDIST, tmp_path / "src.tar.gz")
    with tarfile.open(tmp_path / "src.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    result = subprocess.run(["cmake", "-S", str(tmp_path / gpu_check_prepare.SOURCE_ROOT / "vendor" / "llama.cpp"),
                             "-B", str(tmp_path / "build"), "-G", "Ninja", "-DBUILD_SHARED_LIBS=ON",
                             "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
                             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "build" / "build.ninja").is_file()


def test_gpu_check_arguments():
    args = gpu_check.parse_args([])
    assert (args.lengths, args.rounds, args.steps) == ((1024, 3072, 8192), gpu_check.ROUNDS, gpu_check.STEPS)
    args = gpu_check.parse_args(["--lengths", "1024,8192", "--steps", "forward", "--searches", "2"])
    assert (args.lengths, args.steps, args.searches) == ((1024, 8192), ("forward",), 2)
    assert gpu_check.parse_args(["--smoke", "--lengths", "256,4096"]).lengths == (256, 512)
    for bad in (["--lengths", "0"], ["--lengths", "1k"], ["--steps", "speed"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_the_gpu_config_is_what_the_check_measures(tmp_path):
    parameters = config_parameters(GPU_CONFIG.read_text())
    assert parameters["n_gpu_layers"] == {"string_value": "-1"}
    assert parameters["share_decodes"] == {"string_value": "true"}
    config = gpu_check.gpu_engine_config(tmp_path / "m.gguf", tmp_path / "p.safetensors")
    assert (config.llama.n_gpu_layers, config.llama.flash_attn, config.llama.main_gpu) == (-1, True, 0)
    assert config.model_path == str(tmp_path / "m.gguf")
    smoke = gpu_check.gpu_engine_config(tmp_path / "m.gguf", tmp_path / "p.safetensors", smoke=True)
    assert smoke.llama.n_gpu_layers == 0


@pytest.mark.parametrize(("name", "file"), [
    ("NVIDIA H200", "gpu-h200.json"), ("NVIDIA H100 80GB HBM3", "gpu-h100-80gb-hbm3.json"),
    ("NVIDIA GeForce RTX 4090", "gpu-geforce-rtx-4090.json"), ("", "gpu-unknown.json")])
def test_results_are_named_after_the_gpu(name, file, tmp_path):
    assert gpu_check.results_path(name, tmp_path) == tmp_path / file


def test_searches_are_groups_of_five_concurrent_calls():
    entries = list(range(20))
    assert gpu_check.searches(entries) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    assert gpu_check.searches(entries, limit=1) == [[0, 1, 2, 3, 4]]
    assert gpu_check.searches([0, 1, 2, 3]) == [[0, 1, 2, 3]]  # a workload of fewer entries: one batch of all


def test_smoke_run_writes_the_results(tmp_path):
    """The script's measuring steps end to end on the CPU (tiny model, few documents): what the GPU run writes."""
    out = tmp_path / "gpu-smoke.json"
    status = gpu_check.main(["--smoke", "--steps", "forward,librechat", "--lengths", "128", "--rounds", "1",
                             "--search-rounds", "1", "--searches", "1", "--out", str(out)])
    assert status == 0
    results = json.loads(out.read_text())
    assert results["complete"] is True
    assert set(ENVELOPE_KEYS) <= set(results)
    assert {"gpu", "device", "load_average_after", "cpu_model"} <= set(results["machine"])
    assert "fidelity" not in results
    assert results["forward"]["lengths"]["128"]["engine"]["tokens_per_s"] > 0
    search = results["librechat"]
    assert search["workload"] in gpu_check.LIBRECHAT_WORKLOADS
    for key in ("share_decodes_on", "share_decodes_off"):
        batch = search[key]["search_batch"]
        assert search[key]["searches_measured"] == 1
        assert batch["requests"] == search["requests_per_search"]
        assert batch["errors"] == 0
        assert 0 < batch["latency_ms"]["p50"] <= batch["latency_ms"]["p99"] <= batch["latency_ms"]["max"]
        assert results["meets_targets"][f"librechat_every_call_under_2s_{key}"] == (
            batch["latency_ms"]["max"] < 2000)
    assert "| share decodes on, " in tables.gpu_table(results)
    assert results["engine_options"]["n_gpu_layers"] == 0


def test_a_stopped_run_keeps_the_steps_it_finished(tmp_path):
    """Each step's results are written as it ends: a run cut short by the machine's time limit keeps them."""
    out = tmp_path / "partial.json"
    seen = []

    def checkpoint(partial: dict) -> None:
        write_results(out, partial)
        seen.append(json.loads(out.read_text()))

    args = gpu_check.parse_args(["--smoke", "--steps", "forward", "--lengths", "64", "--rounds", "1"])
    results = gpu_check.run(args, lambda _: None, checkpoint)
    assert [sorted(k for k in s if k in gpu_check.STEPS) for s in seen] == [["forward"]]
    assert seen[-1]["forward"] == json.loads(json.dumps(results["forward"]))
    assert not out.with_suffix(".tmp").exists()


def test_the_check_builds_nothing_without_a_gpu():
    script = ROOT / "perf" / "gpu" / "gpu_check.sh"
    result = subprocess.run(["bash", str(script), "build"], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable, "LLAMA_CUDA_ARCHITECTURES": ""}, timeout=60)
    assert result.returncode == 1
    assert "no CUDA build here (an NVIDIA GPU and nvcc are both needed)" in result.stderr
    assert "GPU compute capabilities: none visible" in result.stderr


def test_the_readme_table_shows_a_stopped_runs_reference_checks():
    """The H200's first run was stopped after the reference checks: the table shows their verdicts and says so."""
    checks = {"f32_exact": {"documents": 6, "hidden_cosine_min": 0.9999995, "score_max_abs_error": 1.8e-4,
                            "passed": False},
              "q8_gpu_config": {"documents": 16, "hidden_cosine_min": 0.99995, "score_max_abs_error": 5.4e-3,
                                "passed": True}}
    text = tables.gpu_table({"complete": False, "duration_s": 49.0, "build": {"seconds": 285, "jobs": 16},
                             "fidelity": {"checks": checks, "criteria": {"f32_exact": "cosine"}}})
    assert "| f32_exact | 6 | 0.99999950 | 1.80e-04 | cosine | FAIL |" in text
    assert "| q8_gpu_config | 16 | 0.99995000 | 5.40e-03 |  | pass |" in text
    assert "built in 285 s on 16 cores" in text
    assert text.endswith("measured fidelity.")
