"""libggml-cpu alone, built from the installed llama-cpp-python's sdist with chosen patches and CMake options, in a
copy of the installed package (test support: tests/amx_emulation.py and tests/q8_repack_builds.py key and cache
what it builds).

The tests need a dozen such builds on an AMX host, each once all of libggml-cpu took a minute. So they share what
they can: one source tree per llama-cpp-python version and one CMake build folder per set of options, kept under
.cache/ggml-cpu-build/llama_cpp_python-VERSION/. A build rewrites only the sources its patches make different from
the last build there, and make recompiles those alone: a build "without" a patch costs the files that patch
touches, not the whole library. ggml-base is never compiled: libggml-cpu links against the installed package's
own libggml-base, the one it runs beside. A lock keeps two processes out of the tree at once.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stack.build_cache import build_key, locked

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "ggml-cpu-build"
PATCHES = ROOT / "stack" / "patches"
VENDOR = "vendor/llama.cpp/"
# llama-cpp-python's own options (its CMakeLists.txt), which llama.cpp's ignores: left out, so that the wheel's flags
# (stack/cpu_features.cmake_args) and the same ggml options without them share one build folder. Apart, a fresh
# clone's make test compiled all of libggml-cpu twice on an AVX2 host (~80 s of a Zen 3 core each).
WHEEL_ONLY_OPTIONS = ("-DLLAVA_BUILD=",)


def installed_sdist() -> Path:
    """The sdist the installed llama-cpp-python was built from (stack/build_llama_wheel.sh keeps it)."""
    version = importlib.metadata.version("llama_cpp_python")
    return ROOT / ".cache" / "sdist" / f"llama_cpp_python-{version}.tar.gz"


def unpack_llama_cpp(into: Path, only: Sequence[str] | None = None) -> Path:
    """The installed version's sdist root, holding only its vendored llama.cpp (the patches' paths start there), or
    only the files ``only`` names (paths under that root)."""
    with tarfile.open(installed_sdist()) as archive:
        members = [m for m in archive.getmembers() if f"/{VENDOR}" in m.name
                   and (only is None or m.name.split("/", 1)[1] in only)]
        archive.extractall(into, members=members, filter="data")
    return into / members[0].name.split("/", 1)[0]


def apply_patches(source: Path, patches: Sequence[Path]) -> None:
    """``patches`` applied in order to an unpacked sdist, each exactly, as stack/build_llama_wheel.sh applies them."""
    for patch in patches:
        subprocess.run(["patch", "-d", str(source), "-p1", "--forward", "--fuzz=0", "--batch"],
                       input=patch.read_bytes(), check=True, capture_output=True)


def package(installed_package: Path, cmake_args: Sequence[str], patches: Sequence[Path], into: Path) -> None:
    """A copy of ``installed_package`` (the llama_cpp folder) in ``into``/llama_cpp whose libggml-cpu is built with
    ``cmake_args`` from the sdist with ``patches`` applied in order."""
    tree = CACHE / installed_sdist().name.removesuffix(".tar.gz")
    with locked(tree / ".lock"):  # made with its folder
        source = _sources(tree, patches)
        ggml_args = ggml_options(cmake_args)
        build = tree / f"build-{build_key(' '.join(ggml_args), [])}"
        _configure(source, build, ggml_args)
        _copy_package(installed_package, _build_cpu_backend(build, installed_package / "lib"), into)


def ggml_options(cmake_args: Sequence[str]) -> list[str]:
    """``cmake_args`` less llama-cpp-python's own options: what llama.cpp's build (and a build folder's key) sees."""
    return [arg for arg in cmake_args if not arg.startswith(WHEEL_ONLY_OPTIONS)]


def _touched(patch: Path) -> set[str]:
    """The files under the vendored llama.cpp that ``patch`` changes, relative to the sdist root."""
    return {line.split()[1].split("/", 1)[1] for line in patch.read_text().splitlines()
            if line.startswith("+++ ") and line.split()[1].startswith(f"b/{VENDOR}")}


def _sources(tree: Path, patches: Sequence[Path]) -> Path:
    """The tree's sources as ``patches`` make them: every file any of the project's patches (or these) touches is
    rebuilt from the sdist in a scratch folder with these patches applied, and written into the tree only where its
    bytes differ, so an unchanged file keeps the time stamp make compares."""
    marker = tree / "unpacked"
    if not marker.is_file():
        shutil.rmtree(tree / "src", ignore_errors=True)
        marker.write_text(unpack_llama_cpp(tree / "src").name)
    root = tree / "src" / marker.read_text()
    touched = set().union(*map(_touched, [*PATCHES.glob("*.patch"), *patches]))
    with tempfile.TemporaryDirectory(dir=tree) as scratch:
        wanted = unpack_llama_cpp(Path(scratch), sorted(touched))
        apply_patches(wanted, patches)
        for relative in sorted(touched):
            _write_if_changed(wanted / relative, root / relative)
    return root


def _write_if_changed(new: Path, old: Path) -> None:
    if not new.exists():
        old.unlink(missing_ok=True)
    elif not old.is_file() or old.read_bytes() != new.read_bytes():
        old.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(new, old)


def _configure(source: Path, build: Path, cmake_args: Sequence[str]) -> None:
    if (build / "configured").is_file():
        return
    shutil.rmtree(build, ignore_errors=True)
    # Makefiles for the target's /fast variant (below), which builds it without the targets it depends on
    subprocess.run(["cmake", "-G", "Unix Makefiles", "-S", source / "vendor" / "llama.cpp", "-B", build,
                    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", *cmake_args], check=True, capture_output=True)
    (build / "configured").write_text(" ".join(cmake_args) + "\n")


def _build_cpu_backend(build: Path, installed_libraries: Path) -> Path:
    """libggml-cpu built in ``build`` as its sources now stand, linked against the installed libggml-base."""
    output = build / "bin"
    output.mkdir(exist_ok=True)
    for library in installed_libraries.glob("libggml-base.so*"):
        _write_if_changed(library, output / library.name)
    subprocess.run(["cmake", "--build", build, "--target", "ggml-cpu/fast", "-j", str(os.cpu_count() or 1)],
                   check=True, capture_output=True)
    [library] = [p for p in output.glob("libggml-cpu.so.*") if not p.is_symlink()]
    return library


def _copy_package(installed_package: Path, cpu_backend: Path, into: Path) -> None:
    """A copy of the installed llama_cpp package with ``cpu_backend`` in place of its own libggml-cpu."""
    package = into / "llama_cpp"
    shutil.copytree(installed_package, package, ignore=shutil.ignore_patterns("__pycache__"))
    replaced = list((package / "lib").glob("libggml-cpu.so*"))
    if not replaced:
        raise RuntimeError(f"no libggml-cpu in {installed_package / 'lib'}")
    for library in replaced:
        library.unlink()
        shutil.copyfile(cpu_backend, library)
