"""llama.cpp's AMX build, made runnable on a CPU without AMX by tests/amx_emulator (test support).

The installed llama-cpp-python is copied twice with its CPU backend (libggml-cpu) rebuilt from the same sdist
with the same flags plus ggml's AMX options: once with this project's patch of ggml's AMX code and once without.
A child process that puts one copy first on PYTHONPATH and preloads the emulator runs that build's own AMX
machine code; only the tile instructions are carried out in software. Building takes about a minute (only
libggml-cpu is compiled) and is cached under .cache/amx-emulation/, keyed on everything that goes into it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stack import cpu_features
from stack.build_cache import build_key, record_inputs

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
    sdist = installed_sdist()
    cmake_args = cpu_features.cmake_args(cpu_features.cpu_flags(), amx=False) + AMX_OPTIONS
    text = "\n".join([sdist.name, " ".join(cmake_args)])
    inputs = [cpu_features.AMX_PATCH, *sorted(SOURCES.glob("*.c")), *sorted((installed_package / "lib").iterdir())]
    target = CACHE / build_key(text, inputs)
    builds = EmulatedBuilds(target / "libamx_emulator.so", target / "probe", target / "patched", target / "unpatched")
    if (target / "complete").is_file():
        record_inputs(target, text, inputs)
        return builds
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        work = Path(scratch)
        staged = work / "out"
        staged.mkdir()
        subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o",
                        staged / "libamx_emulator.so", SOURCES / "emulator.c"], check=True)
        subprocess.run(["gcc", "-O2", "-mamx-tile", "-mamx-int8", "-o", staged / "probe", SOURCES / "probe.c"],
                       check=True)
        source = unpack_llama_cpp(work / "src")
        apply_patch(source)
        _configure(source, work / "build", cmake_args)
        _package(installed_package, _build_cpu_backend(work / "build"), staged / "patched")
        apply_patch(source, reverse=True)
        _package(installed_package, _build_cpu_backend(work / "build"), staged / "unpatched")
        (staged / "complete").write_text(" ".join(cmake_args) + "\n")
        record_inputs(staged, text, inputs)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return builds


def installed_sdist() -> Path:
    """The sdist the installed llama-cpp-python was built from (stack/build_llama_wheel.sh keeps it)."""
    version = importlib.metadata.version("llama_cpp_python")
    return ROOT / ".cache" / "sdist" / f"llama_cpp_python-{version}.tar.gz"


def unpack_llama_cpp(into: Path) -> Path:
    """The installed version's sdist root, holding only its vendored llama.cpp (the patch's paths start there)."""
    with tarfile.open(installed_sdist()) as archive:
        members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name]
        archive.extractall(into, members=members, filter="data")
    return into / members[0].name.split("/", 1)[0]


def apply_patch(source: Path, reverse: bool = False, patch: Path = cpu_features.AMX_PATCH) -> None:
    """One of this project's patches (the AMX one by default) applied to (or taken back from) an unpacked sdist;
    it must apply exactly."""
    subprocess.run(["patch", "-d", str(source), "-p1", "--forward", "--fuzz=0", "--batch",
                    *(["--reverse"] if reverse else [])],
                   input=patch.read_bytes(), check=True, capture_output=True)


def variant(amx: bool, without: Sequence[Path] = (), tiles: bool | None = None) -> Path:
    """A folder holding a copy of the installed llama_cpp package whose CPU backend is built from this CPU's flags
    and this project's ggml patches (except those ``without``), with AMX (and its patch) or without. ``tiles``:
    the AMX-BF16 flags of the flash attention's tiles as this host's build has them (None), left out (False), or
    added whatever the CPU (True: for the emulator).

    On an AMX machine these are the two builds to compare, whichever of them is installed, for the price of
    libggml-cpu alone (a minute or two) instead of a second wheel; without a patch, the build as it was before
    that patch. Cached like the emulated builds.
    """
    import llama_cpp

    installed_package = Path(llama_cpp.__file__).parent
    sdist = installed_sdist()
    cmake_args = cpu_features.cmake_args(cpu_features.cpu_flags(), amx, None if tiles is None else False)
    if tiles:
        cmake_args += [f"-D{name}=ON" for name, _ in cpu_features.AMX_BF16]
    patches = [patch for patch in cpu_features.ggml_patches(amx=amx) if patch not in without]
    name = ("amx" if amx else "avx512") + {None: "", False: "-no-tiles", True: "-tiles"}[tiles] + "".join(
        f"-without-{patch.stem}" for patch in without)
    text = "\n".join([name, sdist.name, " ".join(cmake_args)])
    inputs = [*patches, *sorted((installed_package / "lib").iterdir())]
    target = CACHE / f"{name}-{build_key(text, inputs)}"
    if (target / "complete").is_file():
        record_inputs(target, text, inputs)
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        work = Path(scratch)
        source = unpack_llama_cpp(work / "src")
        for patch in patches:
            apply_patch(source, patch=patch)
        _configure(source, work / "build", cmake_args)
        _package(installed_package, _build_cpu_backend(work / "build"), work / "out")
        (work / "out" / "complete").write_text(" ".join(cmake_args) + "\n")
        record_inputs(work / "out", text, inputs)
        if target.exists():
            shutil.rmtree(target)
        (work / "out").rename(target)
    return target


def _configure(source: Path, build: Path, cmake_args: list[str]) -> None:
    subprocess.run(["cmake", "-S", source / "vendor" / "llama.cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                    "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF", *cmake_args],
                   check=True, capture_output=True)


def _build_cpu_backend(build: Path) -> Path:
    """libggml-cpu built in ``build`` as its sources now stand (a second build recompiles only what changed)."""
    subprocess.run(["cmake", "--build", build, "--target", "ggml-cpu", "-j", str(os.cpu_count() or 1)], check=True,
                   capture_output=True)
    [library] = [p for p in build.rglob("libggml-cpu.so.*") if not p.is_symlink()]
    return library


def _package(installed_package: Path, cpu_backend: Path, into: Path) -> None:
    """A copy of the installed llama_cpp package with ``cpu_backend`` in place of its own libggml-cpu."""
    package = into / "llama_cpp"
    shutil.copytree(installed_package, package, ignore=shutil.ignore_patterns("__pycache__"))
    replaced = list((package / "lib").glob("libggml-cpu.so*"))
    if not replaced:
        raise RuntimeError(f"no libggml-cpu in {installed_package / 'lib'}")
    for library in replaced:
        library.unlink()
        shutil.copyfile(cpu_backend, library)
