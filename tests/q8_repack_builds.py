"""llama.cpp's CPU backend built once per x86 instruction-set path of the repacked Q8_0 kernels (test support).

stack/patches/ggml-cpu-q8_0-repack-x86.patch gives ggml's repacked Q8_0 path an AVX-512 VNNI, an AVX-VNNI and an
AVX2 kernel, chosen at compile time. The installed build compiles one of them (and on an AMX machine its extra
buffer types are AMX's, not the repacking), so each path gets a build of its own: libggml-cpu from the installed
version's sdist with the project's patches and that path's instruction sets, without AMX, beside a copy of the
installed package (a child process puts the copy first on PYTHONPATH). Only the paths this CPU runs are built
(only libggml-cpu: tests/ggml_cpu_build.py), cached under .cache/q8-repack-builds/, keyed on everything that goes
into them. The path the CPU's own flags compile needs no build of its own: it is the installed package, or where
AMX is built or AMX-BF16 tiles are usable here, the AVX-512 variant without them (tests/amx_emulation.py), which
other tests build anyway.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from stack import cpu_features
from stack.build_cache import build_key, made_once
from tests import amx_emulation, ggml_cpu_build

CACHE = amx_emulation.ROOT / ".cache" / "q8-repack-builds"
# ggml options of the AVX2 build, the CPU flags they need; each path adds its own.
AVX2 = ["GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"]
# path: (ggml options, cpuinfo flags the CPU must have to run it)
PATHS: dict[str, tuple[list[str], set[str]]] = {
    "avx512-vnni": ([*AVX2, "GGML_AVX512", "GGML_AVX512_VNNI"],
                    {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}),
    "avx-vnni": ([*AVX2, "GGML_AVX_VNNI"], {"avx2", "fma", "f16c", "avx_vnni"}),
    "avx2": (AVX2, {"avx2", "fma", "f16c"}),
}
# what llama_print_system_info() says of a build that compiles each path, widest first
SYSTEM_INFO = {"avx512-vnni": "AVX512_VNNI = 1", "avx-vnni": "AVX_VNNI = 1", "avx2": "AVX2 = 1"}


def why_not_here(path: str) -> str | None:
    """Why this CPU cannot run the build of ``path``, or None."""
    missing = PATHS[path][1] - cpu_features.cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(sorted(missing))}"
    tools = [tool for tool in ("cmake", "gcc", "g++", "patch") if shutil.which(tool) is None]
    return f"missing build tools: {', '.join(tools)}" if tools else None


def cmake_args(path: str) -> list[str]:
    return ["-DGGML_NATIVE=OFF"] + [f"-D{name}=ON" for name in PATHS[path][0]]


def native_path(flags: set[str]) -> str | None:
    """The path that a build with these CPU flags compiles (the widest its flags allow), or None."""
    return next((path for path, (_, needed) in PATHS.items() if needed <= flags), None)


def compiled_path(system_info: str) -> str | None:
    """The path a llama.cpp build compiles, from its llama_print_system_info()."""
    return next((path for path, marker in SYSTEM_INFO.items() if marker in system_info), None)


def build(path: str, without: Sequence[Path] = ()) -> Path:
    """A folder holding a llama_cpp package whose CPU backend compiles ``path``'s kernels and whose extra buffer
    types are the repacking: where ``path`` is the one this CPU's flags compile, the installed package, or on an
    AMX build or where AMX-BF16 tiles are usable its AVX-512 variant without them; otherwise a copy of the
    installed package with a libggml-cpu built for ``path``. Without some of the project's ggml patches
    (``without``), always such a copy: the build as it was before them."""
    import llama_cpp

    installed_package = Path(llama_cpp.__file__).parent
    system_info = llama_cpp.llama_print_system_info().decode()
    # where AMX-BF16 tiles are usable, this CPU's own builds multiply Q8_0 on them (ggml-cpu-q8_0-amx-bf16.patch)
    tiles = {"amx_tile", "amx_bf16"} <= cpu_features.cpu_flags() and cpu_features.amx_permitted()
    if not without and path == native_path(cpu_features.cpu_flags()) and (tiles or "AMX_INT8 = 1" in system_info):
        return amx_emulation.variant(amx=False, tiles=False if tiles else None)  # this CPU's flags, neither
    if not without and not tiles and path == compiled_path(system_info):
        return installed_package.parent
    sdist = ggml_cpu_build.installed_sdist()
    patches = [patch for patch in cpu_features.ggml_patches(amx=False) if patch not in without]
    text = "\n".join([sdist.name, " ".join(cmake_args(path))])
    inputs = [*patches, *sorted((installed_package / "lib").iterdir())]
    target = CACHE / (path + "".join(f"-without-{patch.stem}" for patch in without) + f"-{build_key(text, inputs)}")
    return made_once(target, text, inputs, "llama_cpp/__init__.py",
                     lambda staged: ggml_cpu_build.package(installed_package, cmake_args(path), patches, staged))
