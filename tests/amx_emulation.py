"""llama.cpp's AMX build, made runnable on a CPU without AMX by tests/amx_emulator (test support).

The installed llama-cpp-python is copied twice with its CPU backend (libggml-cpu) rebuilt from the same sdist
with the same flags plus ggml's AMX options: once with this project's patch of ggml's AMX code and once without.
A child process that puts one copy first on PYTHONPATH and preloads the emulator runs that build's own AMX
machine code; only the tile instructions are carried out in software. Only libggml-cpu is compiled
(tests/ggml_cpu_build.py: under a minute, less where an earlier build shares its options), and the result is
cached under .cache/amx-emulation/, keyed on everything that goes into it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from stack import cpu_features
from stack.build_cache import build_key, made_once
from tests import ggml_cpu_build

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "tests" / "amx_emulator"
CACHE = ROOT / ".cache" / "amx-emulation"
AMX_OPTIONS = [f"-D{name}=ON" for name, _ in cpu_features.AMX]


@dataclasses.dataclass(frozen=True)
class EmulatedBuilds:
    emulator: Path  # the LD_PRELOAD library
    probe: Path  # tests/amx_emulator/probe.c, compiled with the AMX intrinsics
    patched: Path  # a folder holding a llama_cpp package whose CPU backend is the patched AMX build
    unpatched: Path  # the same, ggml's AMX code as released

    def environment(self, package: Path | None = None, report: Path | None = None) -> dict[str, str]:
        """The variables a child needs to run ``package``'s llama.cpp (if given) with the emulator in place."""
        env = {"LD_PRELOAD": str(self.emulator)}
        if package is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package), os.environ.get("PYTHONPATH")]))
        if report is not None:
            env["AMX_EMULATOR_REPORT"] = str(report)
        return env


def reports(path: Path) -> list[dict]:
    """The emulator's report (AMX_EMULATOR_REPORT): a dict of counts per process that used the tiles."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def why_not_here() -> str | None:
    """Why the emulated AMX build cannot run on this machine, or None."""
    flags = cpu_features.cpu_flags()
    if flags >= cpu_features.AMX_CPU_FLAGS:
        return "this CPU has AMX: the real tiles run (test_amx_and_avx512_builds_agree), not the emulator"
    if not flags >= cpu_features.AMX_COMPANION_FLAGS:
        return "ggml's AMX kernels need AVX-512 VNNI, which this CPU lacks"
    missing = [tool for tool in ("cmake", "gcc", "g++", "patch") if shutil.which(tool) is None]
    return f"missing build tools: {', '.join(missing)}" if missing else None


def build() -> EmulatedBuilds:
    """The emulator, the probe and both AMX builds of the installed llama-cpp-python's CPU backend."""
    import llama_cpp

    installed_package = Path(llama_cpp.__file__).parent
    sdist = ggml_cpu_build.installed_sdist()
    cmake_args = cpu_features.cmake_args(cpu_features.cpu_flags(), amx=False) + AMX_OPTIONS
    text = "\n".join([sdist.name, " ".join(cmake_args)])
    inputs = [cpu_features.AMX_PATCH, *sorted(SOURCES.glob("*.c")), *sorted((installed_package / "lib").iterdir())]
    target = CACHE / build_key(text, inputs)
    builds = EmulatedBuilds(target / "libamx_emulator.so", target / "probe", target / "patched", target / "unpatched")

    def make(staged: Path) -> None:
        subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o",
                        staged / "libamx_emulator.so", SOURCES / "emulator.c"], check=True)
        subprocess.run(["gcc", "-O2", "-mamx-tile", "-mamx-int8", "-o", staged / "probe", SOURCES / "probe.c"],
                       check=True)
        ggml_cpu_build.package(installed_package, cmake_args, [cpu_features.AMX_PATCH], staged / "patched")
        ggml_cpu_build.package(installed_package, cmake_args, [], staged / "unpatched")
        (staged / "complete").write_text(" ".join(cmake_args) + "\n")

    made_once(target, text, inputs, "complete", make)
    return builds


def variant(amx: bool, without: Sequence[Path] = (), tiles: bool | None = None) -> Path:
    """A folder holding a copy of the installed llama_cpp package whose CPU backend is built from this CPU's flags
    and this project's ggml patches (except those ``without``), with AMX (and its patch) or without. ``tiles``:
    the AMX-BF16 flags of the flash attention's tiles as this host's build has them (None), left out (False), or
    added whatever the CPU (True: for the emulator).

    On an AMX machine these are the two builds to compare, whichever of them is installed, for the price of
    libggml-cpu alone (tests/ggml_cpu_build.py) instead of a second wheel; without a patch, the build as it was before
    that patch. Cached like the emulated builds.
    """
    import llama_cpp

    installed_package = Path(llama_cpp.__file__).parent
    sdist = ggml_cpu_build.installed_sdist()
    cmake_args = cpu_features.cmake_args(cpu_features.cpu_flags(), amx, None if tiles is None else False)
    if tiles:
        cmake_args += [f"-D{name}=ON" for name, _ in cpu_features.AMX_BF16]
    patches = [patch for patch in cpu_features.ggml_patches(amx=amx) if patch not in without]
    name = ("amx" if amx else "avx512") + {None: "", False: "-no-tiles", True: "-tiles"}[tiles] + "".join(
        f"-without-{patch.stem}" for patch in without)
    text = "\n".join([name, sdist.name, " ".join(cmake_args)])
    inputs = [*patches, *sorted((installed_package / "lib").iterdir())]
    target = CACHE / f"{name}-{build_key(text, inputs)}"

    def make(staged: Path) -> None:
        ggml_cpu_build.package(installed_package, cmake_args, patches, staged)
        (staged / "complete").write_text(" ".join(cmake_args) + "\n")

    return made_once(target, text, inputs, "complete", make)
