"""llama.cpp's CPU build flags, chosen from what this CPU and kernel allow (standard library only).

``-march=native`` is not used: on some virtual machines it compiles ggml's AMX kernels, which then die with
SIGILL at the first Q8_0 matrix multiply. Each instruction set is named explicitly instead, from
/proc/cpuinfo. Every build gets this project's x86 kernels for ggml's repacked Q8_0 path (AVX-512 VNNI,
AVX-VNNI, AVX2), rms_norm's sum of squares vectorized, its fix of the tiled flash attention's conversions, that
attention's products on AVX512-BF16 dot products where the CPU has them and on AMX-BF16 tiles where the CPU lists
them and the kernel permits tiles (GGML_AMX_TILE and GGML_AMX_BF16 alone, which leave ggml's AMX matmul out), and
qwen3's sliding-window layers (stack/patches/). Where the tiles are permitted the Q8_0 weights also run on
AMX-BF16 tiles, expanded to BF16 at load (1.88x their memory).

AMX is opt-in (``--amx``, ``make install LLAMA_AMX=1``): measured side by side on a Sapphire Rapids-class Xeon,
ggml's AMX kernels ran the stand-in's whole forward pass at 0.82 / 0.88 / 0.94 of the AVX-512 build's repacked
Q8_0 path at 1k / 3k / 8k tokens (perf/results/cpu-amx.json, ``python -m perf.builds.amx_bench --mode full``). Even
asked for, AMX is built only when the CPU lists it AND the kernel grants the XTILEDATA permission, and then only
together with this project's patch of ggml's AMX code.

    python stack/cpu_features.py cmake-args [--amx]   # the flags, on one line
    python stack/cpu_features.py patch [--amx]        # the patches to apply to the sdist, in order, space-separated
    python stack/cpu_features.py describe [--amx]     # what was detected and chosen
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

AMX_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-amx-tile-config.patch"
Q8_0_REPACK_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-q8_0-repack-x86.patch"
# Those weights expanded to BF16 and multiplied on AMX-BF16 tiles where GGML_AMX_BF16 is on (AMX_BF16, below) and
# the kernel grants the tiles; compiles to nothing elsewhere.
Q8_0_AMX_BF16_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-q8_0-amx-bf16.patch"
FLASH_ATTN_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-flash-attn-tiled.patch"
# Q·K^T and P·V of that path on VDPBF16PS where GGML_AVX512_BF16 is on (below); compiles to nothing elsewhere.
FLASH_ATTN_BF16_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-flash-attn-bf16.patch"
# The same products on AMX-BF16 tiles where GGML_AMX_BF16 is on (AMX_BF16, below) and the kernel grants the tiles.
FLASH_ATTN_AMX_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-flash-attn-amx.patch"
# That path's softmax (either product) in registers and in base 2, with its own exp2.
FLASH_ATTN_SOFTMAX_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-flash-attn-softmax-base2.patch"
# That path's fully masked KV tiles skipped before their mask is converted or their K and V packed (bit-identical).
FLASH_ATTN_SKIP_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-flash-attn-skip-masked.patch"
# That path's K packed for the BF16 products 16 rows at a time, transposed in registers (bit-identical).
FLASH_ATTN_PACK_K16_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-flash-attn-pack-k16.patch"
# rms_norm's sum of squares in partial sums the compiler vectorizes (was one latency-bound chain of additions).
RMS_NORM_PATCH = Path(__file__).resolve().parent / "patches" / "ggml-cpu-rms-norm-sum-sq.patch"
# The BF16 patch and those that apply only on top of it: what a build "without the BF16 products" leaves out.
FLASH_ATTN_BF16_AND_LATER = (FLASH_ATTN_BF16_PATCH, FLASH_ATTN_AMX_PATCH, FLASH_ATTN_SOFTMAX_PATCH,
                             FLASH_ATTN_SKIP_PATCH, FLASH_ATTN_PACK_K16_PATCH)
# qwen3 with sliding-window layers (jina-reranker-v3.5): the GGUF's window and per-layer pattern, the iSWA graph.
QWEN3_SWA_PATCH = Path(__file__).resolve().parent / "patches" / "llama-qwen3-sliding-window.patch"
# llama-cpp-python's own CMakeLists: llama.cpp's common library only with the mtmd tools (half the build's time).
PACKAGE_PATCH = Path(__file__).resolve().parent / "patches" / "llama-cpp-python-common-only-for-mtmd.patch"
# (ggml option, cpuinfo flags that must all be present), in the order the flags are written.
BASE = [
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512f", "avx512vbmi")),
    ("GGML_AVX512_VNNI", ("avx512f", "avx512_vnni")),
    ("GGML_AVX512_BF16", ("avx512f", "avx512_bf16")),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
]
AMX = [
    ("GGML_AMX_TILE", ("amx_tile",)),
    ("GGML_AMX_INT8", ("amx_tile", "amx_int8")),
    ("GGML_AMX_BF16", ("amx_tile", "amx_bf16")),
]
# The tiles for the flash attention's products, in every build where usable: without GGML_AMX_INT8 ggml's AMX
# matmul is not compiled.
AMX_BF16 = [("GGML_AMX_TILE", ("amx_tile",)), ("GGML_AMX_BF16", ("amx_tile", "amx_bf16"))]
# The CPU's AMX, and what ggml's AMX kernels are compiled beside (ggml-cpu/amx/amx.cpp needs AVX-512 VNNI).
AMX_CPU_FLAGS = frozenset({"amx_tile", "amx_int8"})
AMX_COMPANION_FLAGS = frozenset({"avx512f", "avx512_vnni"})
ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, SYS_ARCH_PRCTL = 0x1023, 18, 158


def _cpuinfo_field(name: str, cpuinfo: str | None) -> str | None:
    """The first core's value of a /proc/cpuinfo field (``cpuinfo``: that file's text, read when None)."""
    text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_model(cpuinfo: str | None = None) -> str | None:
    return _cpuinfo_field("model name", cpuinfo)


def cpu_generation(cpuinfo: str | None = None) -> str | None:
    """"family F, model M" of the first core: what tells CPUs with one model name apart (a VM's "AMD EPYC" is a
    Zen 3 at family 25 model 1 and a Zen 4 at family 25 model 17); None where /proc/cpuinfo has no such fields."""
    family, model = _cpuinfo_field("cpu family", cpuinfo), _cpuinfo_field("model", cpuinfo)
    return f"family {family}, model {model}" if family and model else None


def amx_permitted() -> bool:
    """Whether the kernel lets this process use AMX tile data (Linux x86-64 arch_prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def amx_usable(flags: set[str], permitted: bool) -> bool:
    return flags >= AMX_CPU_FLAGS | AMX_COMPANION_FLAGS and permitted


def cmake_args(flags: set[str], amx: bool, tiles_permitted: bool | None = None) -> list[str]:
    """The wheel's CMake flags: this CPU's instruction sets, and no multimodal library (mtmd), which a reranker
    never loads (llama-cpp-python imports it only for its vision chat handlers) and which took ~10% of the build.
    AMX_BF16 where ``tiles_permitted`` (the kernel's answer, asked when None) and the flags list it."""
    permitted = amx_permitted() if tiles_permitted is None else tiles_permitted
    options = BASE + (AMX if amx else AMX_BF16 if permitted else [])
    return ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=OFF"] + [f"-D{name}=ON" for name, needed in options
                                                         if set(needed) <= flags]


def ggml_patches(amx: bool) -> list[Path]:
    """The patches to ggml, in order: the Q8_0 repack kernels and their AMX-BF16 GEMM (compiled only with
    GGML_AMX_BF16), the flash-attention fix and its BF16 and AMX-BF16 products always (compiled only with
    GGML_AVX512_BF16, and GGML_AMX_BF16), their softmax, the skipping of masked tiles and the packing of K 16 rows
    at a time, rms_norm's vectorized sum of squares, the AMX fix with AMX (what a build of libggml-cpu alone
    applies)."""
    attention = [FLASH_ATTN_PATCH, *FLASH_ATTN_BF16_AND_LATER]
    return [Q8_0_REPACK_PATCH, Q8_0_AMX_BF16_PATCH, *attention, RMS_NORM_PATCH] + ([AMX_PATCH] if amx else [])


def patches(amx: bool) -> list[Path]:
    """The patches applied to the sdist for a wheel, in order: the package's build, ggml's, then llama.cpp's
    model code (not in ggml_patches: libggml-cpu-only builds do not compile it)."""
    return [PACKAGE_PATCH, *ggml_patches(amx), QWEN3_SWA_PATCH]


def main(argv: list[str]) -> int:
    flags, permitted = cpu_flags(), amx_permitted()
    usable = amx_usable(flags, permitted)
    command, options = (argv[0], argv[1:]) if argv else ("describe", [])
    if set(options) - {"--amx"}:
        print(__doc__, file=sys.stderr)
        return 2
    amx = usable and "--amx" in options
    if command == "cmake-args":
        print(" ".join(cmake_args(flags, amx, permitted)))
    elif command == "patch":
        print(" ".join(map(str, patches(amx))))
    elif command == "describe":
        print(f"AMX usable: {usable}, built: {amx}\nCMake flags: {' '.join(cmake_args(flags, amx, permitted))}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
