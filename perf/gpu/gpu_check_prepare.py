"""What the GPU check (perf/gpu/gpu_check.sh) needs on a GPU machine with no package registry, in one carried folder.

    python -m perf.gpu.gpu_check_prepare            # writes .cache/gpu-check/ and prints how to carry and run it

The folder holds:
  llama-src.tar.gz  the llama-cpp-python sdist trimmed to what a CUDA build of ggml/llama.cpp and the
                    ``llama_cpp`` Python package need (the whole sdist is 77 MB, over a 64 MiB carry limit):
                    llama.cpp's CMake files, ``src/``, ``include/``, ``vendor/``, ggml's CPU and CUDA backends,
                    the Qwen2 vocabulary the stand-in model is generated with, and ``llama_cpp/``
  pydeps/           pure-Python packages the GPU image lacks (``gguf``, ``diskcache``, ``bm25s``), copied from this
                    interpreter's installed distributions: nothing is downloaded
  revision.json     the commit this was prepared from (the GPU machine gets a copy without git)

The build folder on the GPU machine is another one (.cache/gpu-build/), so a carried folder that replaces this one
there never removes a finished build.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from perf import ROOT
from perf.common import revision

CARRY_DIR = ROOT / ".cache" / "gpu-check"
SDIST = ROOT / ".cache" / "sdist" / "llama_cpp_python-0.3.36.tar.gz"
SOURCE_TAR = "llama-src.tar.gz"
SOURCE_ROOT = "llama-src"  # the sdist's top folder, renamed: the build scripts need no version in paths
# Pure-Python distributions the engine, the reference and llama_cpp import that the GPU image lacks (its
# package list: /work/.library/device/KINDS.md); a new import of the engine's may need adding here.
PYDEPS = ("gguf", "diskcache", "bm25s")
CARRY_LIMIT_BYTES = 64 * 2**20
_LLAMA = "vendor/llama.cpp/"
# Paths kept from the sdist (relative to its top folder): a prefix ending in "/" keeps a folder, else one file.
KEEP = (
    "LICENSE.md", "llama_cpp/",
    *(_LLAMA + p for p in ("CMakeLists.txt", "LICENSE", "cmake/", "include/", "src/", "vendor/", "licenses/",
                           "ggml/CMakeLists.txt", "ggml/cmake/", "ggml/include/", "ggml/src/ggml-cpu/",
                           "ggml/src/ggml-cuda/", "models/ggml-vocab-qwen2.gguf")),
)
# ggml/src/ itself: its files (not its other backends' folders).
KEEP_FILES_IN = (_LLAMA + "ggml/src/",)


def kept(relative: str) -> bool:
    """Whether a path of the sdist (relative to its top folder) is part of the trimmed source."""
    if any(relative == p or (p.endswith("/") and relative.startswith(p)) for p in KEEP):
        return True
    return any(relative.startswith(d) and "/" not in relative[len(d):] for d in KEEP_FILES_IN)


def write_trimmed_source(sdist: Path, target: Path) -> int:
    """The trimmed sdist as a tar.gz under ``SOURCE_ROOT/``; returns how many files it holds."""
    count = 0
    tmp = target.with_suffix(".tmp")
    # The same bytes from the same sdist (no time in the gzip header): the GPU build's stamp hashes them.
    with tarfile.open(sdist) as source, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w") as out:
        for member in source:
            relative = member.name.partition("/")[2]
            if not member.isfile() or not relative or not kept(relative):
                continue
            # A fresh header: the sdist's own may carry its long name in a PAX record that would win over a rename.
            info = tarfile.TarInfo(f"{SOURCE_ROOT}/{relative}")
            info.size, info.mode, info.mtime = member.size, member.mode, member.mtime
            out.addfile(info, source.extractfile(member))
            count += 1
    tmp.replace(target)
    return count


def copy_distribution(name: str, target: Path) -> list[str]:
    """An installed pure-Python distribution's files (package and metadata) under ``target``, as pip laid them
    out; raises ValueError for one that holds compiled code (it may not run on the other machine)."""
    dist = importlib.metadata.distribution(name)
    files = [f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in str(f)]
    compiled = [str(f) for f in files if f.suffix in (".so", ".pyd", ".dylib")]
    if compiled:
        raise ValueError(f"{name} is not pure Python ({', '.join(compiled[:3])})")
    for file in files:
        destination = target / file
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file.locate(), destination)
    return [str(f) for f in files]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def travelling_bytes(root: Path = ROOT) -> int:
    """Bytes of the working tree that travels without being carried: tracked files and untracked ones git does
    not ignore (what the device tool sends), as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    paths = (root / name.decode() for name in listed if name)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def prepare(out: Path = CARRY_DIR, sdist: Path = SDIST, pydeps: Iterable[str] = PYDEPS) -> dict:
    """Write the carried folder afresh; returns its sizes."""
    if not sdist.is_file():
        raise FileNotFoundError(f"{sdist}: run `make install` first (it keeps the sdist)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = write_trimmed_source(sdist, out / SOURCE_TAR)
    for name in pydeps:
        copy_distribution(name, out / "pydeps")
    (out / "revision.json").write_text(json.dumps(revision()) + "\n")
    return {"folder": str(out), "source_files": files, "source_tar_bytes": (out / SOURCE_TAR).stat().st_size,
            "folder_bytes": folder_bytes(out)}


def carry_paths(out: Path = CARRY_DIR, root: Path = ROOT) -> list[str]:
    return [str(out.relative_to(root))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=CARRY_DIR)
    parser.add_argument("--sdist", type=Path, default=SDIST)
    args = parser.parse_args(argv)
    report = prepare(args.out.resolve(), args.sdist)
    tree = travelling_bytes()
    total = report["folder_bytes"] + tree
    print(f"{report['folder']}: {report['source_files']} source files in {report['source_tar_bytes'] / 2**20:.1f} "
          f"MiB, {report['folder_bytes'] / 2**20:.1f} MiB in all; with the working tree "
          f"({tree / 2**20:.1f} MiB) {total / 2**20:.1f} MiB of the {CARRY_LIMIT_BYTES / 2**20:.0f} MiB limit")
    if args.out.resolve().is_relative_to(ROOT):
        carry = json.dumps(carry_paths(args.out.resolve()))
        print(f"on the GPU machine, from the repository root (carry {carry}):\n  perf/gpu/gpu_check.sh run")
    return 0 if total < CARRY_LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
