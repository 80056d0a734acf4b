"""ggml's CPU backend variants of a runtime-dispatch build: loaded before llama.cpp starts, the chosen one logged.

The images build llama.cpp with ``GGML_BACKEND_DL`` (stack/cpu_dispatch.py): the CPU backend is not linked into
libggml but installed beside it as one loadable module per instruction-set variant (``libggml-cpu-haswell.so``,
``libggml-cpu-zen4.so``...). llama-cpp-python never loads them, and without a backend llama.cpp loads no model;
so the engine asks ggml to load the best variant from the package's lib folder (``ggml_backend_load_all_from_path``
scores each module by the features this CPU has) and reports which one it mapped. A native build (``make
install``) has no such modules and nothing happens.
"""

from __future__ import annotations

import ctypes
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

VARIANT_PATTERN = re.compile(r"libggml-cpu-([\w.-]+?)\.so")


def variant_modules(lib_dir: Path) -> list[Path]:
    """The CPU variant modules in a llama-cpp-python lib folder (none in a native build)."""
    return sorted(lib_dir.glob("libggml-cpu-*.so"))


def variant_name(text: str) -> str | None:
    """The first CPU variant named in ``text`` (a module's file name, or a process's /proc/self/maps)."""
    found = VARIANT_PATTERN.search(text)
    return found.group(1) if found else None


def load_cpu_variant() -> str | None:
    """Load the best CPU variant where the installed llama-cpp-python is a dispatch build; its name, else None."""
    import llama_cpp._ggml

    lib_dir = Path(llama_cpp._ggml.libggml_base_path)
    modules = variant_modules(lib_dir)
    if not modules:
        return None
    # The registry libllama reads is in the libggml it links by soname (libggml.so.0). A wheel stores the
    # symlinks libggml.so -> .so.0 -> .so.0.x as separate copies, so llama_cpp._ggml's libggml.so is another
    # library with a registry of its own: loading into that one leaves llama.cpp with no backend.
    linked = next((p for p in sorted(lib_dir.glob("libggml.so.*")) if p.suffixes.count(".so") == 1
                   and len(p.suffixes) == 2), lib_dir / "libggml.so")
    ctypes.CDLL(str(linked)).ggml_backend_load_all_from_path(str(lib_dir).encode())
    variant = variant_name(Path("/proc/self/maps").read_text())
    if variant is None:
        raise RuntimeError(f"no CPU backend variant of {', '.join(m.name for m in modules)} loads on this CPU")
    log.info("llama.cpp CPU backend: variant %s (runtime dispatch among %s)", variant,
             ", ".join(str(variant_name(m.name)) for m in modules))
    return variant
