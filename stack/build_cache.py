"""The keyed build folders under .cache/, and pruning those whose key is no longer current (standard library only).

Every llama.cpp build this project caches is named after a key: a hash of what went into it (the version, the
flags, the patches' text, the installed libraries it was derived from), so a change of any of them builds anew
beside the old build, which then only takes space (a wheel ~15 MB, an unpacked build ~40 MB, a CPU-backend
build ~40 MB). ``prune`` removes a build whose key no longer matches its own inputs as they are now:

    wheels/llama-cpp-python-VERSION-KEY    (stack/build_llama_wheel.sh) its BUILD_FLAGS: the CMake arguments and
                                           the patch files; VERSION other than the pinned one is stale too
    llama-builds/NAME                      (perf/builds/amx_comparison.py) unpacked from wheels/NAME: stale with it
    amx-emulation/[NAME-]KEY               (tests/amx_emulation.py) and
    q8-repack-builds/NAME-KEY              (tests/q8_repack_builds.py): their KEY_INPUTS.json (``record_inputs``)
    ggml-cpu-build/llama_cpp_python-VERSION  (tests/ggml_cpu_build.py) the trees those two build in: kept for the
                                           same versions as the sdists
    sdist/llama_cpp_python-VERSION.tar.gz  kept for the pinned version and every kept wheel's

A build is judged by the inputs it recorded, as absolute paths, not by this checkout's: one .cache shared by
several checkouts (a symlink) keeps each checkout's current builds, and loses those of a checkout whose patches
or virtualenv changed since, or that is gone (a build two checkouts share, their inputs being equal, is judged
by the inputs of the one that used it last). A build of another flag set whose inputs are unchanged (the AMX
build beside the default one, the comparisons' builds) is current and kept. Never touched: a wheel key whose
build holds its lock (a build in progress), scratch folders of a build in progress (``tmp*``), and everything
else under .cache/ (the stand-in models, the AIPerf and checkov virtualenvs, LibreChat's client, Triton's
backend folder, the GPU check's folders, which keep one build each, logs).

    python -m stack.build_cache prune --version 0.3.36 [--cache .cache] [--dry-run]   # what `make clean-cache` runs
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY_INPUTS = "KEY_INPUTS.json"
WHEEL_PREFIX = "llama-cpp-python-"
# The families whose folders record their inputs in KEY_INPUTS.json; their key is the name's last dash-part.
RECORDED = ("amx-emulation", "q8-repack-builds")


def build_key(text: str, files: Sequence[Path]) -> str:
    """The key of a build made from ``text`` (version, flags, names) and these files' bytes: 16 hex digits of
    their SHA-256, as stack/build_llama_wheel.sh computes a wheel's (``text`` there: version and flags, a line each)."""
    digest = hashlib.sha256(text.encode())
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def record_inputs(folder: Path, text: str, files: Sequence[Path]) -> None:
    """Write what ``folder``'s key was computed from (KEY_INPUTS.json), for ``prune``; a build found in the cache
    records it too, so one made before this record existed gets it the next time it is used."""
    record = json.dumps({"text": text, "files": [str(Path(path).resolve()) for path in files]}, indent=1) + "\n"
    path = folder / KEY_INPUTS
    if not path.is_file() or path.read_text() != record:
        path.write_text(record)


def made_once(target: Path, text: str, inputs: Sequence[Path], marker: str, make: Callable[[Path], None]) -> Path:
    """``target``, a keyed build folder: as found where its ``marker`` file shows it complete, else made by
    ``make`` into a scratch folder beside it, then renamed into place (an interrupted build leaves no half of one).
    One process at a time, under the lock of the folder that holds it; records its inputs either way."""
    with locked(target.parent / ".lock"):
        if (target / marker).is_file():
            record_inputs(target, text, inputs)
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            staged = Path(scratch) / "out"
            staged.mkdir()
            make(staged)
            record_inputs(staged, text, inputs)
            if target.exists():
                shutil.rmtree(target)
            staged.rename(target)
    return target


def _key_of(name: str) -> str:
    return name.rsplit("-", 1)[-1]


def _current(text: str, files: Sequence[str], key: str) -> bool:
    """Whether these inputs, as they are now, still give ``key`` (a file gone: no)."""
    try:
        return build_key(text, [Path(f) if Path(f).is_absolute() else ROOT / f for f in files]) == key
    except OSError:
        return False


def _wheel_current(folder: Path, version: str) -> bool:
    """A wheel folder is current when it is of ``version``, complete, and its BUILD_FLAGS (CMake arguments, then
    the space-separated patch files) still hash to its key."""
    built = folder.name[len(WHEEL_PREFIX):].rsplit("-", 1)[0]
    flags = folder / "BUILD_FLAGS"
    if built != version or not flags.is_file() or not any(folder.glob("*.whl")):
        return False
    lines = flags.read_text().split("\n")
    cmake_args, patches = lines[0], (lines[1].split() if len(lines) > 1 else [])
    return _current(f"{version}\n{cmake_args}\n", patches, _key_of(folder.name))


def _recorded_current(folder: Path) -> bool:
    try:
        record = json.loads((folder / KEY_INPUTS).read_text())
    except (OSError, ValueError):
        return False
    return _current(record["text"], record["files"], _key_of(folder.name))


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Holds ``lock`` (a file, made if missing) exclusively: one process at a time makes a cached build, and a
    second one waiting for it finds it made (make test beside make bench, or two
    checkouts sharing .cache)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _unlocked(lock: Path) -> Iterator[bool]:
    """Holds the wheel key's lock (stack/build_llama_wheel.sh's flock) while pruning it; False when a build holds it."""
    if not lock.exists():
        yield True
        return
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def stale(cache: Path, version: str) -> list[Path]:
    """The folders and files of ``cache`` that ``prune`` removes (module docstring), sorted."""
    found: list[Path] = []
    kept_wheels: set[str] = set()
    wheels = cache / "wheels"
    for folder in sorted(wheels.glob(f"{WHEEL_PREFIX}*")) if wheels.is_dir() else []:
        if not folder.is_dir():
            continue
        name = folder.name.removesuffix(".tmp")
        with _unlocked(wheels / f"{name}.lock") as free:
            if not free or (folder.name == name and _wheel_current(folder, version)):
                kept_wheels.add(name)
            else:  # stale, or the .tmp folder a stopped build left
                found.append(folder)
    found += [lock for lock in sorted(wheels.glob("*.lock")) if lock.name.removesuffix(".lock") not in kept_wheels]
    found += [folder for folder in _builds(cache / "llama-builds") if folder.name not in kept_wheels]
    for family in RECORDED:
        found += [folder for folder in _builds(cache / family) if not _recorded_current(folder)]
    versions = {version} | {name[len(WHEEL_PREFIX):].rsplit("-", 1)[0] for name in kept_wheels}
    found += [path for path in sorted((cache / "sdist").glob("llama_cpp_python-*.tar.gz"))
              if path.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz") not in versions]
    found += [tree for tree in _builds(cache / "ggml-cpu-build")
              if tree.name.removeprefix("llama_cpp_python-") not in versions]
    return sorted(found)


def _builds(directory: Path) -> list[Path]:
    """The build folders in ``directory`` (none if it is missing), less the scratch folders of builds in progress."""
    if not directory.is_dir():
        return []
    return [folder for folder in sorted(directory.iterdir()) if folder.is_dir() and not folder.name.startswith("tmp")]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def prune(cache: Path, version: str, dry_run: bool = False) -> list[Path]:
    """Remove ``stale(cache, version)`` (only list it with ``dry_run``); returns what was (or would be) removed."""
    removed = stale(cache, version)
    for path in removed:
        print(f"{'would remove' if dry_run else 'removing'} {path} ({_size(path) / 2**20:.0f} MiB)")
        if dry_run:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pruning = commands.add_parser("prune", help="remove the builds whose key is no longer current")
    pruning.add_argument("--cache", type=Path, default=ROOT / ".cache")
    pruning.add_argument("--version", required=True, help="the pinned llama-cpp-python version (Makefile)")
    pruning.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = parser.parse_args(argv)
    removed = prune(args.cache, args.version, args.dry_run)
    print(f"{len(removed)} stale builds {'found' if args.dry_run else 'removed'} under {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
