"""llama.cpp's CUDA build flags, chosen from the NVIDIA GPUs and CUDA compiler this host has (standard library only).

Where an NVIDIA GPU is visible (``nvidia-smi``) and a CUDA compiler (``nvcc``) is found, the build adds
``GGML_CUDA`` for exactly the GPUs' compute capabilities (``nvidia-smi --query-gpu=compute_cap``: 9.0 -> 90),
and names the compiler by its resolved path (so a toolkit change changes the flags, hence the wheel's cache
key). Where either is missing, there are no CUDA flags and the CPU build is unchanged.

``LLAMA_CUDA_ARCHITECTURES`` (a make or environment variable, or ``--architectures``) overrides the detection:
a CMake list such as ``90`` or ``80;90`` builds for those with no GPU needed (an image built on a GPU-less
host), and ``none`` builds no CUDA even where a GPU is present.

    python stack/gpu_features.py cmake-args   # the CUDA flags, on one line (nothing without CUDA)
    python stack/gpu_features.py describe     # what was detected
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

NO_CUDA = "none"
# Where a toolkit usually lives when nvcc is not on PATH (CUDA's installers do not add it).
TOOLKIT_ROOTS = ("CUDA_HOME", "CUDA_PATH")
DEFAULT_TOOLKIT = Path("/usr/local/cuda")
QUERY = ("nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader")
# Keep the symbols of static archives local to each shared library. On the H200 image (CUDA 13.0), a static archive
# linked into libggml-cuda.so re-exported libstdc++'s own symbols (std::ostream::_M_insert<long>, codecvt...);
# libllama.so bound to that copy and every model load died with SIGSEGV in llama_model::print_info. With this flag
# libggml-cuda.so exports none of them and the model loads (perf/results/gpu-h200.json, 2026-12-04).
CUDA_LINK_FLAGS = ("-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--exclude-libs,ALL",)


@dataclasses.dataclass(frozen=True)
class CudaFacts:
    """What the host offers: the GPUs' compute capabilities as nvidia-smi prints them, and the nvcc found."""

    compute_caps: tuple[str, ...]
    nvcc: str | None


def parse_compute_caps(output: str) -> tuple[str, ...]:
    """CMake architectures from ``nvidia-smi --query-gpu=compute_cap`` output, one GPU a line: "9.0" -> "90".

    Several GPUs of one kind give one architecture; lines that are not a capability are ignored.
    """
    caps = []
    for line in output.splitlines():
        major, dot, minor = line.strip().partition(".")
        if dot and major.isdigit() and minor.isdigit():
            caps.append(f"{int(major)}{int(minor)}")
    return tuple(sorted(set(caps), key=int))


def find_nvcc(environ: Mapping[str, str] | None = None, default_toolkit: Path = DEFAULT_TOOLKIT) -> str | None:
    """The CUDA compiler's resolved path: on PATH, else under $CUDA_HOME, $CUDA_PATH or /usr/local/cuda."""
    env = os.environ if environ is None else environ
    candidates = [shutil.which("nvcc", path=env.get("PATH", ""))]
    candidates += [str(Path(env[name]) / "bin" / "nvcc") for name in TOOLKIT_ROOTS if env.get(name)]
    candidates.append(str(default_toolkit / "bin" / "nvcc"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return os.path.realpath(candidate)
    return None


def detect(timeout_s: float = 20.0) -> CudaFacts:
    """This host's facts; no GPU (no nvidia-smi, or it fails: no driver) gives no capabilities."""
    caps: tuple[str, ...] = ()
    if shutil.which(QUERY[0]):
        try:
            result = subprocess.run(QUERY, capture_output=True, text=True, timeout=timeout_s)
            caps = parse_compute_caps(result.stdout) if result.returncode == 0 else ()
        except (OSError, subprocess.TimeoutExpired):
            caps = ()
    return CudaFacts(caps, find_nvcc())


def architectures(facts: CudaFacts, override: str = "") -> str | None:
    """The CMake CUDA architectures to build for, or None for no CUDA build.

    ``override`` (LLAMA_CUDA_ARCHITECTURES) replaces the GPUs' list; ``none`` turns CUDA off. Without nvcc
    nothing can be built for CUDA, whatever the override says.
    """
    override = override.strip()
    if facts.nvcc is None or override.lower() == NO_CUDA:
        return None
    if override:
        return override
    return ";".join(facts.compute_caps) or None


def cmake_args(facts: CudaFacts, override: str = "") -> list[str]:
    """The flags added to the CPU build's for CUDA: none where no CUDA build is chosen."""
    archs = architectures(facts, override)
    if archs is None:
        return []
    return ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={archs}", f"-DCMAKE_CUDA_COMPILER={facts.nvcc}",
            *CUDA_LINK_FLAGS]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("cmake-args", "describe"), default="describe")
    parser.add_argument("--architectures", default=os.environ.get("LLAMA_CUDA_ARCHITECTURES", ""),
                        help="CMake CUDA architectures instead of the GPUs' ('none': no CUDA build)")
    args = parser.parse_args(argv)
    facts = detect()
    flags = cmake_args(facts, args.architectures)
    if args.command == "cmake-args":
        print(" ".join(flags))
    else:
        print(f"GPU compute capabilities: {', '.join(facts.compute_caps) or 'none visible'}\n"
              f"nvcc: {facts.nvcc or 'not found'}\nCUDA flags: {' '.join(flags) or 'none (CPU build)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
