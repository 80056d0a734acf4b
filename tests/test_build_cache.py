"""`make clean-cache` (stack/build_cache.py) on a cache folder of its own: it removes the builds whose key no longer
matches their inputs and keeps everything else, including a build in progress."""

from __future__ import annotations

import fcntl
import re
import subprocess
from pathlib import Path

import pytest

from stack import build_cache
from stack.build_cache import build_key, record_inputs

pytestmark = pytest.mark.build

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.3.36"


def wheel(cache: Path, version: str, cmake_args: str, patches: list[Path]) -> Path:
    """A wheel folder as stack/build_llama_wheel.sh leaves it: keyed, the wheel, BUILD_FLAGS, its lock file."""
    key = build_key(f"{version}\n{cmake_args}\n", patches)
    folder = cache / "wheels" / f"llama-cpp-python-{version}-{key}"
    folder.mkdir(parents=True)
    (folder / f"llama_cpp_python-{version}-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
    (folder / "BUILD_FLAGS").write_text(f"{cmake_args}\n{' '.join(map(str, patches))}\n")
    (cache / "wheels" / f"{folder.name}.lock").touch()
    return folder


def recorded(directory: Path, name: str, text: str, inputs: list[Path]) -> Path:
    """A test build as tests/q8_repack_builds.py and tests/amx_emulation.py leave one: keyed, its inputs recorded."""
    folder = directory / ((f"{name}-" if name else "") + build_key(text, inputs))
    folder.mkdir(parents=True)
    record_inputs(folder, text, inputs)
    return folder


def test_the_wheel_key_is_the_build_scripts(tmp_path):
    """build_key computes the key stack/build_llama_wheel.sh names a wheel folder after (its own line, run here)."""
    script = (ROOT / "stack" / "build_llama_wheel.sh").read_text()
    line = re.search(r"^key=\$\(.*?cut -c1-16\)$", script, re.M | re.S)[0]
    patches = [tmp_path / "a.patch", tmp_path / "b.patch"]
    patches[0].write_text("--- a\n+++ b\n")
    patches[1].write_text("second\n")
    args = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"
    shell = f'VERSION={VERSION}; CMAKE_ARGS="{args}"; PATCH_FILES=({" ".join(map(str, patches))})\n{line}\necho "$key"'
    key = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True).stdout.strip()
    assert key == build_key(f"{VERSION}\n{args}\n", patches)
    assert len(key) == 16


def test_prune_removes_what_is_stale_and_keeps_the_rest(tmp_path):
    cache, inputs = tmp_path / "cache", tmp_path / "checkout"
    inputs.mkdir()
    patch, edited, gone, library = (inputs / name for name in ("a.patch", "b.patch", "c.patch", "libggml-cpu.so"))
    for path in (patch, edited, gone, library):
        path.write_text(path.name)
    current = wheel(cache, VERSION, "-DGGML_AVX2=ON", [patch])
    other_flags = wheel(cache, VERSION, "-DGGML_AMX_INT8=ON", [patch])  # unchanged inputs: kept
    no_patches = wheel(cache, VERSION, "-DGGML_AVX=ON", [])
    stale_wheel = wheel(cache, VERSION, "-DGGML_AVX2=ON", [edited])
    other_version = wheel(cache, "0.3.1", "-DGGML_AVX2=ON", [patch])
    lost_patch = wheel(cache, VERSION, "-DGGML_AVX2=ON", [gone])
    leftover = cache / "wheels" / f"llama-cpp-python-{VERSION}-0123456789abcdef.tmp"  # a stopped build's
    leftover.mkdir()
    building = cache / "wheels" / f"llama-cpp-python-{VERSION}-fedcba9876543210.tmp"  # a build holding its lock
    building.mkdir()
    unpacked = cache / "llama-builds"
    for folder in (current, stale_wheel):
        (unpacked / folder.name / "llama_cpp").mkdir(parents=True)
    (unpacked / "tmp1234").mkdir()
    q8 = cache / "q8-repack-builds"
    q8_current = recorded(q8, "avx2", f"llama_cpp_python-{VERSION}.tar.gz\n-DGGML_AVX2=ON", [patch, library])
    q8_stale = recorded(q8, "avx-vnni", "args", [edited, library])
    q8_unrecorded = q8 / "avx512-vnni-0123456789abcdef"
    q8_unrecorded.mkdir(parents=True)
    emulation = recorded(cache / "amx-emulation", "", "args", [patch, library])
    emulation_variant = recorded(cache / "amx-emulation", "avx512", "avx512\nargs", [patch, edited])
    for sdist in (f"llama_cpp_python-{VERSION}.tar.gz", "llama_cpp_python-0.3.1.tar.gz"):
        (cache / "sdist").mkdir(exist_ok=True)
        (cache / "sdist" / sdist).write_bytes(b"sdist")
    trees = [cache / "ggml-cpu-build" / f"llama_cpp_python-{v}" for v in (VERSION, "0.3.1")]
    for tree in trees:
        (tree / "src").mkdir(parents=True)
    untouched = [cache / "models" / "qwen3-0.6b-q8_0" / "model.gguf", cache / "triton" / "server.log"]
    for path in untouched:
        path.parent.mkdir(parents=True)
        path.write_text("kept")
    edited.write_text("edited since")
    gone.unlink()

    lock = cache / "wheels" / f"{building.name.removesuffix('.tmp')}.lock"
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        expected = sorted([
            stale_wheel, other_version, lost_patch, leftover,
            *(cache / "wheels" / f"{folder.name}.lock" for folder in (stale_wheel, other_version, lost_patch)),
            unpacked / stale_wheel.name, q8_stale, q8_unrecorded, emulation_variant,
            cache / "sdist" / "llama_cpp_python-0.3.1.tar.gz", trees[1]])
        assert sorted(build_cache.stale(cache, VERSION)) == expected
        assert build_cache.main(["prune", "--cache", str(cache), "--version", VERSION, "--dry-run"]) == 0
        assert all(path.exists() for path in expected)
        assert sorted(build_cache.prune(cache, VERSION)) == expected
    assert not any(path.exists() for path in expected)
    kept = [current, other_flags, no_patches, building, lock, unpacked / current.name, unpacked / "tmp1234",
            q8_current, emulation, cache / "sdist" / f"llama_cpp_python-{VERSION}.tar.gz", trees[0], *untouched]
    assert all(path.exists() for path in kept)
    assert build_cache.stale(cache, VERSION) == [lock, building]  # the build stopped: its leftovers are stale now


def test_a_build_found_in_the_cache_records_its_inputs(tmp_path):
    """A build made before KEY_INPUTS.json existed gets it when next used, and is then judged current."""
    source = tmp_path / "input"
    source.write_text("x")
    folder = tmp_path / "cache" / "q8-repack-builds" / f"avx2-{build_key('text', [source])}"
    folder.mkdir(parents=True)
    assert build_cache.stale(tmp_path / "cache", VERSION) == [folder]
    record_inputs(folder, "text", [source])
    assert build_cache.stale(tmp_path / "cache", VERSION) == []


def test_made_once_makes_a_build_once_and_records_its_inputs(tmp_path):
    """made_once makes a missing build in a scratch folder renamed into place, and finds a complete one after."""
    source = tmp_path / "input"
    source.write_text("x")
    target = tmp_path / "cache" / "q8-repack-builds" / f"avx2-{build_key('text', [source])}"
    made: list[Path] = []

    def make(staged: Path) -> None:
        made.append(staged)
        (staged / "complete").write_text("done")

    for _ in range(2):
        assert build_cache.made_once(target, "text", [source], "complete", make) == target
    assert len(made) == 1
    assert made[0] != target
    assert (target / "complete").read_text() == "done"
    assert build_cache.stale(tmp_path / "cache", VERSION) == []  # its inputs recorded: current
    assert sorted(p.name for p in target.parent.iterdir()) == [".lock", target.name]  # no scratch left
