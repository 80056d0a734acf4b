"""llama.cpp's runtime-dispatch build for images: one wheel, several CPU variants, the best chosen at start-up.

An image is built once and runs on whatever x86 host pulls it, so its wheel cannot name the build host's
instruction sets as ``make install`` does (stack/cpu_features.py). With ``GGML_BACKEND_DL`` ggml builds its CPU
backend as loadable modules, one per variant; at start-up the engine loads the best one this CPU supports
(model_repository/jina_reranker_v3/1/rerank_engine/backends.py) and logs which.

The variants (ggml's names): haswell (AVX2), cascadelake (AVX-512 VNNI: Cascade Lake, Ice Lake), zen4
(AVX-512 VBMI, VNNI and BF16: Zen 4, and Sapphire Rapids where the kernel grants no AMX tile data) and
sapphirerapids_bf16 (zen4's plus AMX-TILE and AMX-BF16: Sapphire Rapids and later, for this project's BF16 tile
products in attention and the Q8_0 GEMMs). Not ggml's own AMX variant: its AMX-INT8 kernels ran slower than the
repacked Q8_0 path on the Xeons measured (stack/cpu_features.py, perf/results/cpu-amx.json). This project's
patches are the native build's (``cpu_features.patches``), plus the one that builds only these variants and the
one that adds the AMX-BF16 variant.

    python -m stack.cpu_dispatch cmake-args   # the flags, on one line
    python -m stack.cpu_dispatch patch        # the patches to apply to the sdist, in order, space-separated
"""

from __future__ import annotations

import sys
from pathlib import Path

from stack import cpu_features

VARIANTS = ("haswell", "cascadelake", "zen4", "sapphirerapids_bf16")
VARIANTS_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-variants-subset.patch"
AMX_BF16_VARIANT_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-variant-amx-bf16.patch"


def cmake_args() -> list[str]:
    """The wheel's CMake flags: the CPU backend as loadable variants, installed beside libggml in the package's
    lib folder (where the engine looks for them), and no multimodal library."""
    return ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
            f"-DGGML_CPU_VARIANTS={';'.join(VARIANTS)}", "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib"]


def patches() -> list[Path]:
    """This project's patches, as the native build applies them without AMX, then the variant subset and the
    AMX-BF16 variant."""
    return [*cpu_features.patches(False), VARIANTS_PATCH, AMX_BF16_VARIANT_PATCH]


def main(argv: list[str]) -> int:
    if argv == ["cmake-args"]:
        print(" ".join(cmake_args()))
    elif argv == ["patch"]:
        print(" ".join(map(str, patches())))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
