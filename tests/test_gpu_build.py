"""The CUDA build's flag selection and wheel-cache key (no GPU needed: nvidia-smi and nvcc are faked where a GPU
host's answers are needed), and the GPU check's parts that run without a GPU."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stack import cpu_features, gpu_features
from stack.gpu_features import CudaFacts

ROOT = Path(__file__).resolve().parent.parent
NVCC = "/usr/local/cuda-12.8/bin/nvcc"


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
                                    f"-DCMAKE_CUDA_COMPILER={NVCC}"]),
    (CudaFacts(("86", "90"), NVCC), "", ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86;90",
                                         f"-DCMAKE_CUDA_COMPILER={NVCC}"]),
    (CudaFacts(("90",), None), "", []),  # a GPU but no compiler: the CPU build, unchanged
    (CudaFacts((), NVCC), "", []),  # a compiler but no GPU (this machine)
    (CudaFacts((), NVCC), "80;90", ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80;90",
                                    f"-DCMAKE_CUDA_COMPILER={NVCC}"]),  # an image built on a GPU-less host
    (CudaFacts(("90",), NVCC), "89", ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=89",
                                      f"-DCMAKE_CUDA_COMPILER={NVCC}"]),
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
    assert cpu_args == " ".join(cpu_features.cmake_args(flags, cpu_features.amx_usable(
        flags, cpu_features.amx_permitted())))  # no GPU here: exactly the CPU build, so its cached wheel stays
    gpu_args, gpu_key = make_values(gpu_host, "LLAMA_CMAKE_ARGS", "LLAMA_KEY")
    nvcc = str(tmp_path / "fake-bin" / "nvcc")
    assert gpu_args == f"{cpu_args} -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER={nvcc}"
    assert gpu_key != cpu_key
    assert make_values(gpu_host, "LLAMA_CMAKE_ARGS", LLAMA_CUDA_ARCHITECTURES="none") == [cpu_args]
    assert make_values(gpu_host, "LLAMA_CMAKE_ARGS", LLAMA_CUDA_ARCHITECTURES="80;90") == [
        f"{cpu_args} -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=80;90 -DCMAKE_CUDA_COMPILER={nvcc}"]
    assert make_values({**gpu_host, "LLAMA_CUDA_ARCHITECTURES": "89"}, "LLAMA_CMAKE_ARGS") == [
        f"{cpu_args} -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=89 -DCMAKE_CUDA_COMPILER={nvcc}"]


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
