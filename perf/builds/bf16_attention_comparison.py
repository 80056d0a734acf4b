"""The tiled flash attention on AVX512-BF16 dot products against its F32 products, side by side
(``bf16_attention_vs_f32``), or on AMX-BF16 tiles against those dot products (``amx_attention_vs_bf16``): the
comparison that perf/builds/bf16_attention_bench.py runs; its table is perf/tables.py's ``bf16_attention_table``.

stack/patches/ggml-cpu-flash-attn-bf16.patch computes Q·K^T and P·V of ggml's tiled CPU flash attention with
VDPBF16PS where the build targets AVX512-BF16. The two builds compared are the same version, CMake flags (this
CPU's) and patches, except that one: both built by stack/build_llama_wheel.sh (build only, cached by its key; the
one with every patch is the installed build's wheel) and unpacked under ``.cache/llama-builds/``. Each build runs
in child processes (perf/builds/amx_comparison.py's), the unpacked one first on ``PYTHONPATH``, taking turns per
round: the engine's runner with the CPU config's options after the engine's AMX self-check, one timed forward pass
per length on the PyTorch peer's token ids and outputs, and in the first round one more pass per length with every
graph node timed, for the attention's share (ggml's FLASH_ATTN_EXT nodes). Where the CPU has no AVX512-BF16
nothing is built or timed: the patch compiles to nothing there, and the results say so.

stack/patches/ggml-cpu-flash-attn-amx.patch moves the same products onto AMX tiles where the build has
GGML_AMX_TILE and GGML_AMX_BF16 and the kernel grants tiles. Its two builds have the same version and patches and
differ only in those two flags (the build without them takes the VDPBF16PS products).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from perf.builds import amx_comparison
from perf.common import cosine_rows, passes_in_turns, shown_path, tokens_per_s
from stack import cpu_features

# the comparisons: (the build with the products compared, the build without them)
PAIRS = {"bf16": ("bf16", "f32"), "amx": ("amx", "bf16")}


def products_here(flags: set[str], tiles_permitted: bool) -> str:
    """The comparison that says something on this CPU: AMX tiles against VDPBF16PS where the build gets tiles
    (stack/cpu_features.py), else VDPBF16PS against F32."""
    return "amx" if "-DGGML_AMX_BF16=ON" in cpu_features.cmake_args(flags, False, tiles_permitted) else "bf16"


def why_not_here(flags: set[str], cpu_model: str | None) -> str | None:
    """Why the comparison means nothing on a CPU with these flags, or None when it can be made."""
    if "avx512_bf16" not in flags or "avx512f" not in flags:
        return (f"not measured: {cpu_model or 'this CPU'} has no AVX512-BF16 (no avx512_bf16 in /proc/cpuinfo), so "
                "both builds compile the F32 products")
    return None


def builds(products: str = "bf16", say: Callable[[str], None] = print) -> dict[str, Path]:
    """Both builds of a comparison (PAIRS), unpacked for a child's PYTHONPATH, from this CPU's flags and patches
    (without ggml's AMX matmul, as ``make install`` builds by default). "bf16": without AMX-BF16 flags, with and
    without the BF16 patch (and those that apply on top of it, FLASH_ATTN_BF16_AND_LATER); "amx": every patch, with
    and without the AMX-BF16 flags (the first is the installed build's wheel)."""
    flags, patches = cpu_features.cpu_flags(), cpu_features.patches(amx=False)
    no_tiles = cpu_features.cmake_args(flags, amx=False, tiles_permitted=False)
    if products == "amx":
        wheels = {"amx": (cpu_features.cmake_args(flags, amx=False), patches), "bf16": (no_tiles, patches)}
    else:
        wheels = {"bf16": (no_tiles, patches),
                  "f32": (no_tiles, [p for p in patches if p not in cpu_features.FLASH_ATTN_BF16_AND_LATER])}
    return {build: amx_comparison.unpack(amx_comparison.build_wheel(args, build_patches, say=say))
            for build, (args, build_patches) in wheels.items()}


def compare(model: Path, options: object, lengths: Sequence[int], rounds: int, paths: dict[str, Path],
            say: Callable[[str], None] = print, products: str = "bf16") -> dict:
    """Tokens/s of both builds of a comparison (PAIRS; ``paths``: where each is unpacked) at each length, their
    ratio, the attention's seconds in a profiled pass, and the hidden states' agreement (the smallest row
    cosine)."""
    new, old = pair = PAIRS[products]
    seconds, reports, hidden = passes_in_turns(
        pair, rounds, lengths,
        lambda build, r: amx_comparison.run_child(model, options, lengths, paths[build], profile=r == 0),
        lambda build: f"{build} build", say)
    attention = {build: reports[build][0]["attention_s"] for build in pair}  # the first round's, profiled
    measured = {build: {"build": shown_path(paths[build]), "system_info": reports[build][-1]["system_info"],
                        "tokens_per_s": {str(n): tokens_per_s(n, seconds[build][n]) for n in lengths},
                        "attention_s": attention[build]} for build in pair}
    return {"builds": measured, "rounds": rounds, "flash_attn": options.flash_attn,  # type: ignore[attr-defined]
            "kv_cache_type": options.kv_cache_type,  # type: ignore[attr-defined]
            "products": products,
            "cosine_min": {str(n): round(float(cosine_rows(hidden[new][n], hidden[old][n]).min()), 5)
                           for n in lengths},
            f"{new}_attention_vs_{old}": {str(n): round(measured[new]["tokens_per_s"][str(n)]
                                                        / measured[old]["tokens_per_s"][str(n)], 3) for n in lengths},
            "attention_speedup": {str(n): round(attention[old][str(n)] / attention[new][str(n)], 3)
                                  for n in lengths}}

