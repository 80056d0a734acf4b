"""llama.cpp's AMX build against its AVX-512 build, side by side (``amx_vs_avx512``): the comparison that
perf/builds/amx_bench.py runs on its own and make bench (perf/load/bench.py) in its run; its table is perf/tables.py's
``amx_table``.

``make install`` builds llama-cpp-python without AMX unless asked (``LLAMA_AMX=1``, stack/cpu_features.py): this
comparison is the measurement behind that default, kept in make bench so that each AMX host can check it. It
needs the build that is not installed: the same version, flags and patches with AMX added (with this project's
AMX patch) or taken away, built by stack/build_llama_wheel.sh (build only, cached by its key like the installed
one; several minutes the first time) and unpacked under ``.cache/llama-builds/``. Each build then runs in child
processes, the unpacked one first on ``PYTHONPATH``: the engine's runner with the CPU config's options, after
the engine's own AMX self-check, one forward pass per length, the builds taking turns, on the same token ids
and outputs as the PyTorch peer. Where AMX is not usable, nothing is built or timed and the results say why.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from perf import ROOT
from perf.common import cosine_rows, passes_in_turns, probe, timed_passes, tokens_per_s
from stack import cpu_features

BUILDS_DIR = ROOT / ".cache" / "llama-builds"
BUILD_SCRIPT = ROOT / "stack" / "build_llama_wheel.sh"
ROUNDS = {"quick": 1, "full": 2}  # per make bench mode
BUILDS = ("amx", "avx512")
# A child's program (python -c), run from the repository root: the unpacked build first on its PYTHONPATH is
# the llama_cpp it imports.
CHILD = "import sys; from perf.builds.amx_comparison import child_main; child_main(sys.argv[1:])"


def unavailable_reason(flags: set[str], permitted: bool, cpu_model: str | None) -> str | None:
    """Why the AMX build cannot be compared here, or None when it can."""
    cpu = cpu_model or "this CPU"
    if not flags >= cpu_features.AMX_CPU_FLAGS:
        return (f"not measured: {cpu} has no AMX (no amx_tile/amx_int8 in /proc/cpuinfo), so the AMX build "
                "cannot run here; it needs a Sapphire Rapids or newer Xeon")
    if not cpu_features.amx_usable(flags, permitted):
        return (f"not measured: {cpu} has AMX but " + ("the kernel does not grant its tile data (arch_prctl)"
                if not permitted else "lacks AVX-512 VNNI, which the AMX build also needs"))
    return None


def why_not_here() -> str | None:
    """``unavailable_reason`` for this machine."""
    text = Path("/proc/cpuinfo").read_text()
    return unavailable_reason(cpu_features.cpu_flags(text), cpu_features.amx_permitted(), cpu_features.cpu_model(text))


def build_wheel(cmake_args: Sequence[str], patches: Sequence[Path] = (), say: Callable[[str], None] = print) -> Path:
    """The llama-cpp-python wheel of the installed version with these flags and patches (built once, cached)."""
    version = importlib.metadata.version("llama_cpp_python")
    say(f"llama-cpp-python {version} with {' '.join(cmake_args)}: building once, several minutes, unless cached")
    env = {**os.environ, "PYTHON": sys.executable, "LLAMA_CPP_PYTHON_VERSION": version,
           "LLAMA_CMAKE_ARGS": " ".join(cmake_args), "LLAMA_PATCH": " ".join(map(str, patches)),
           "LLAMA_BUILD_ONLY": "1", "CACHE_DIR": str(ROOT / ".cache")}
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the comparison wheel failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def unpack(wheel: Path, into: Path = BUILDS_DIR) -> Path:
    """A folder holding the wheel's ``llama_cpp`` package, to put first on a child's PYTHONPATH.

    Named after the wheel's cache folder, which carries the build's key (version, flags, patches): every build
    of a version has the same wheel file name, and a folder named after that kept serving the first build
    unpacked after its patches had changed."""
    target = into / wheel.parent.name
    if not (target / "llama_cpp" / "__init__.py").is_file():
        into.mkdir(parents=True, exist_ok=True)
        # Unpacked beside the target and renamed, so an interrupted run never leaves half a package behind.
        with tempfile.TemporaryDirectory(dir=into) as scratch:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(Path(scratch) / "wheel")
            if target.exists():
                shutil.rmtree(target)
            (Path(scratch) / "wheel").rename(target)
    return target


def run_child(model: Path, options: object, lengths: Sequence[int], python_path: Path | None = None,
              profile: bool = False, timeout_s: float = 3600) -> tuple[dict, dict[int, np.ndarray]]:
    """One child process: the build on ``python_path`` (or the installed one), each length's pass timed once,
    and with ``profile`` one more per length with every graph node timed.

    Returns what the child reports (its llama_cpp file, system info, the options after the self-check,
    seconds per length, and profiled, the attention's seconds per length) and the hidden states per length."""
    env = child_environment(python_path)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "pass.npz"
        argv = [sys.executable, "-c", CHILD, str(model),
                json.dumps(dataclasses.asdict(options)),  # type: ignore[call-overload]
                ",".join(map(str, lengths)), str(out), "profile" if profile else "time"]
        result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"engine pass failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
        with np.load(out) as data:
            report = json.loads(str(data["report"]))
            return report, {n: data[f"hidden_{n}"] for n in lengths}


def child_environment(python_path: Path | None) -> dict[str, str]:
    """This process's environment for a child, with the build unpacked at ``python_path`` (if any) first on its
    PYTHONPATH."""
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(python_path), env.get("PYTHONPATH")]))
    return env


def child_main(argv: Sequence[str]) -> None:
    """The child's command line, as run_child writes it: the model, the options as JSON, the lengths
    (comma-separated), the file to write and ``profile`` or ``time``."""
    model, options_json, lengths, out, mode = argv
    child(Path(model), options_json, [int(n) for n in lengths.split(",")], Path(out), mode == "profile")


def child(model: Path, options_json: str, lengths: Sequence[int], out: Path, profile: bool) -> None:
    """In the child: the engine's runner on whichever llama_cpp comes first on the path, after the engine's AMX
    self-check; each length's pass timed once, and with ``profile`` the attention's seconds (ggml's FLASH_ATTN_EXT
    nodes) in one more pass per length with every node timed; the report and hidden states written to ``out``
    (npz)."""
    import llama_cpp

    from perf.peers.torch_comparison import engine_profile
    from rerank_engine.amx_check import checked_options
    from rerank_engine.llama_runner import LlamaRunner, RunnerOptions

    options = checked_options(RunnerOptions(**json.loads(options_json)), str(model))
    runner = LlamaRunner(str(model), options)
    runner.start()
    try:
        hidden, seconds = timed_passes(runner, lengths)
        vocab = runner.n_vocab
    finally:
        runner.close()
    report = {"llama_cpp_file": llama_cpp.__file__, "libraries": loaded_llama_libraries(),
              "system_info": llama_cpp.llama_print_system_info().decode().strip(),
              "extra_buffers": options.extra_buffers, "seconds": seconds}
    if profile:
        report["attention_s"] = {str(n): round(engine_profile(model, options, *probe(n, vocab))[0]["attention"], 6)
                                 for n in lengths}
    np.savez(out, report=np.array(json.dumps(report)), **hidden)


def loaded_llama_libraries() -> list[str]:
    """The llama.cpp shared libraries this process has mapped: proof of which build ran."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if "/libllama" in line or "/libggml" in line})


def build(amx: bool, say: Callable[[str], None] = print) -> Path:
    """The installed version built with this CPU's flags and patches, with or without AMX (built once, cached),
    unpacked for a child's PYTHONPATH."""
    return unpack(build_wheel(cpu_features.cmake_args(cpu_features.cpu_flags(), amx=amx),
                              cpu_features.patches(amx=amx), say=say))


def compare(model: Path, options: object, lengths: Sequence[int], rounds: int,
            say: Callable[[str], None] = print) -> dict:
    """The AMX build against the AVX-512 build, one of them the installed build, or why that cannot be done here."""
    from rerank_engine.amx_check import amx_in_play

    reason = why_not_here()
    if reason:
        return {"skipped": reason}
    paths = {"amx": None, "avx512": build(False, say)} if amx_in_play() else {"amx": build(True, say), "avx512": None}
    return side_by_side(model, options, lengths, rounds, paths, say)


def side_by_side(model: Path, options: object, lengths: Sequence[int], rounds: int,
                 paths: Mapping[str, Path | None], say: Callable[[str], None] = print) -> dict:
    """Both builds (``paths``: where each is unpacked; None for the installed one) at each length, taking turns."""
    seconds, reports, hidden = children_in_turns(model, options, lengths, rounds, {b: paths[b] for b in BUILDS}, say)
    measured = {build: {"llama_cpp_file": reports[build]["llama_cpp_file"], "libraries": reports[build]["libraries"],
                        "system_info": reports[build]["system_info"],
                        "extra_buffers": reports[build]["extra_buffers"],
                        "tokens_per_s": {str(n): tokens_per_s(n, seconds[build][n]) for n in lengths}}
                for build in BUILDS}
    return {"builds": measured, "rounds": rounds,
            "amx_self_check_passed": measured["amx"]["extra_buffers"],
            "cosine_amx_vs_avx512": {str(n): round(float(cosine_rows(hidden["amx"][n], hidden["avx512"][n]).min()), 5)
                                     for n in lengths},
            "amx_vs_avx512": ratios(measured)}


def children_in_turns(model: Path, options: object, lengths: Sequence[int], rounds: int,
                      paths: Mapping[str, Path | None], say: Callable[[str], None] = print
                      ) -> tuple[dict[str, dict[int, list[float]]], dict[str, dict], dict[str, dict[int, np.ndarray]]]:
    """Each build of ``paths`` (where it is unpacked; None for the installed one) in a child process per round
    (run_child), taking turns in ``paths``' order: the seconds per build and length over the rounds, and each
    build's last report and hidden states."""
    seconds, reports, hidden = passes_in_turns(
        list(paths), rounds, lengths, lambda build, _: run_child(model, options, lengths, paths[build]),
        lambda build: f"{build} build", say)
    return seconds, {build: runs[-1] for build, runs in reports.items()}, hidden


def ratios(measured: Mapping[str, Mapping]) -> dict[str, float]:
    """AMX tokens/s over AVX-512 tokens/s, per length."""
    amx, avx = measured["amx"]["tokens_per_s"], measured["avx512"]["tokens_per_s"]
    return {n: round(amx[n] / avx[n], 3) for n in amx}

