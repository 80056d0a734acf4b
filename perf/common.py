"""What the benches share: the engine options a Triton config serves, the head of every results file (its
envelope: command, date, commit, machine and load, from ``envelope`` alone), the engine's forward pass on a fixed
probe, timed, with the hidden states it captures, and the names a results file and its tables (perf/tables.py)
both use, and the timing stand-in: a generated Qwen3-0.6B-shaped Q8_0 model with the real Qwen2 vocabulary
(random weights, real shapes: compute does not depend on the weights' values, and token counts of real text are
the real model's; generated once under .cache/, never committed).

Nothing here loads llama.cpp, torch or Triton's client when imported: the engine is imported by the functions
that need it, once a bench has begun.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from perf import MODEL_VERSION_DIR, ROOT
from stack import cpu_features
from stack.build_cache import locked

T = TypeVar("T")

if TYPE_CHECKING:
    from rerank_engine import EngineConfig
    from rerank_engine.llama_runner import LlamaRunner

CPU_CONFIG = MODEL_VERSION_DIR.parent / "configs" / "cpu.pbtxt"
GPU_CONFIG = MODEL_VERSION_DIR.parent / "config.pbtxt"
# Forward-pass lengths and rounds of the CPU comparisons (PyTorch peer, repacked Q8_0) per `make bench` mode.
LENGTHS = {"quick": (1024,), "full": (1024, 3072, 8192)}
ROUNDS = {"quick": 2, "full": 1}
PEER_LENGTH = "1024"  # the length of make bench's headline CPU ratios (engine_vs_torch_bf16 ...): in both modes
# Where a profiled forward pass spends its time (the PyTorch peer's profiles), in the tables' column order.
PROFILE_GROUPS = ("matmul", "attention", "lm_head", "other")
# make bench's paths that its concurrency sweep raises past 1 (and its sweep table shows).
SWEPT = ("triton_grpc", "adapter")
N_OUTPUTS = 20  # ~ a LibreChat request's documents: one marker each, and the query's
WARMUP_TOKENS = 256
_PARAMETER = re.compile(r'\{\s*key:\s*"([^"]+)"\s*,\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}\s*\}')


# -- the served configuration -------------------------------------------------------------------------


def config_parameters(text: str) -> dict[str, dict[str, str]]:
    """A Triton config's ``parameters`` as Triton hands them to model.py, read without protobuf (not on GPU
    images): ``{ key: "n_ctx", value: { string_value: "16384" } }`` entries, comments ignored."""
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return {key: {"string_value": value} for key, value in _PARAMETER.findall(body)}


def engine_config(model: Path, projector: Path, config: Path = CPU_CONFIG, kind: str = "KIND_CPU") -> EngineConfig:
    """The engine options a Triton config serves on an instance of ``kind`` (device 0), with these model files."""
    from triton_contract import MODEL_ENV, PROJECTOR_ENV
    from triton_contract import engine_config as served_config

    return served_config(config_parameters(config.read_text()), kind, 0,
                         {MODEL_ENV: str(model), PROJECTOR_ENV: str(projector)})


# -- the results envelope: the machine, the commit, the command, the date, the load ---------------------

# What every results file in perf/results/ starts with, written by ``envelope`` alone; perf/report.py renders it
# under each block (tables.envelope_line), tests/test_perf_report.py checks every committed file has it.
ENVELOPE_KEYS = ("command", "started", "duration_s", "revision", "machine")
MACHINE_KEYS = ("cpu_model", "logical_cpus", "usable_cpus", "memory_bytes", "platform", "python", "llama_cpp_python",
                "llama_cpp_system_info", "load_average_before", "load_average_after")
# Recorded since 2026-12-07 beside the model name, and shown with it where present (files from before lack it).
MACHINE_OPTIONAL_KEYS = ("cpu_generation",)


def machine() -> dict:
    """The CPU, memory, platform and llama.cpp build a result was measured with (llama.cpp's None where the
    process cannot import it)."""
    info = {"cpu_model": None, "cpu_generation": None, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)), "memory_bytes": None, "platform": platform.platform(),
            "python": platform.python_version(), "llama_cpp_python": None, "llama_cpp_system_info": None}
    with contextlib.suppress(ImportError):
        import llama_cpp

        info |= {"llama_cpp_python": llama_cpp.__version__,
                 "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip()}
    with contextlib.suppress(OSError):
        info["cpu_model"] = cpu_features.cpu_model()
        info["cpu_generation"] = cpu_features.cpu_generation()
    with contextlib.suppress(OSError, StopIteration):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["memory_bytes"] = 1024 * next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return info


def load_averages(before: Sequence[float]) -> dict[str, list[float]]:
    """The load averages at the start (``before``) and now, for the results' machine facts."""
    return {"load_average_before": [round(x, 2) for x in before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def revision() -> dict:
    """The commit measured, and whether tracked files differed from it; None for both outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How a bench was run, as its results record it: ``python -m MODULE ARGS``; ``argv`` None means this
    process's own arguments. Benches pass their ``__spec__.name``, which -m sets to the module's dotted name."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def envelope(command: str, started: float, load_before: Sequence[float], *, more_machine: Mapping | None = None,
             measured_revision: Mapping | None = None) -> dict:
    """The head of every results file: the command, when it started and how long it ran, the commit
    (``measured_revision`` where another machine read it, as the GPU check's does; else git here) and the machine
    with its load averages at the start (``load_before``, os.getloadavg()) and now, plus ``more_machine`` (a GPU,
    other processes' CPU share)."""
    return {"command": command, "started": utc_iso(started), "duration_s": round(time.time() - started, 1),
            "revision": dict(measured_revision) if measured_revision is not None else revision(),
            "machine": machine() | load_averages(load_before) | dict(more_machine or {})}


def write_results(out: Path, results: Mapping) -> Path:
    """A results file (``envelope``'s head, then the model and the figures) as indented JSON, written whole or not
    at all (a rename), so a run stopped mid-write leaves the previous file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    return out


class BenchRun:
    """A bench's run from its start: the command line, the time and the load averages then, so that its results
    file gets ``envelope``'s head at the end (``write``). Created once the set-up (stand-in, builds) is done."""

    def __init__(self, module: str, argv: Sequence[str] | None) -> None:
        self.command = command_line(module, argv)
        self.started, self.load_before = time.time(), os.getloadavg()

    def write(self, out: Path, figures: Mapping) -> Path:
        """The results file: the envelope, then ``figures`` (the model and what was measured)."""
        return write_results(out, envelope(self.command, self.started, self.load_before) | dict(figures))


def comparison_arguments(description: str, results: Path, argv: Sequence[str] | None, rounds: int | None = None,
                         more: Callable[[argparse.ArgumentParser], object] | None = None
                         ) -> tuple[argparse.Namespace, Path | None]:
    """The comparison benches' command line: ``--mode`` (quick or full), ``--out`` (default: ``results`` in full mode,
    none in quick mode), given a default, ``--rounds``, and what ``more`` adds; returns the arguments and the
    results file, if any."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(LENGTHS), default="quick")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds)
    if more is not None:
        more(parser)
    parser.add_argument("--out", type=Path, help=f"results JSON (default: {shown_path(results)} in full mode, "
                                                 "none in quick mode)")
    args = parser.parse_args(argv)
    return args, args.out or (results if args.mode == "full" else None)


def shown_path(path: Path) -> str:
    """A path as results files record it: relative to the repository when inside it, so results do not name
    the checkout's location."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def utc_iso(timestamp: float) -> str:
    """A time.time() value as the results write it: ``2026-12-01T15:11:50+00:00``."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


# -- the forward pass ---------------------------------------------------------------------------------


def probe(n_tokens: int, vocab_size: int, n_outputs: int = N_OUTPUTS, seed: int = 0) -> tuple[list[int], list[int]]:
    """Token ids (ordinary vocabulary, fixed seed) and ascending output positions spread over the pass,
    the last token among them (where the query marker sits in a real prompt)."""
    rng = np.random.default_rng(seed + n_tokens)
    ids = rng.integers(0, min(vocab_size, 150_000), n_tokens).tolist()
    positions = np.linspace(n_tokens - 1, 0, min(n_outputs, n_tokens), endpoint=False)[::-1]
    return ids, sorted({int(p) for p in np.round(positions)})


def timed_engine_pass(runner: LlamaRunner, ids: Sequence[int], positions: Sequence[int]) -> tuple[np.ndarray, float]:
    """One pass of a started LlamaRunner: the hidden states at ``positions`` and the seconds it took."""
    start = time.perf_counter()
    (hidden,) = runner.hidden_states([ids], [positions])
    return hidden, time.perf_counter() - start


def timed_passes(runner: LlamaRunner, lengths: Sequence[int]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A warm-up pass (pages in the weights, primes the buffers), then one timed pass per length on its probe:
    the hidden states (as ``hidden_N``, the children's npz names) and the seconds, per length."""
    timed_engine_pass(runner, *probe(WARMUP_TOKENS, runner.n_vocab))
    seconds, hidden = {}, {}
    for n in lengths:
        hidden[f"hidden_{n}"], seconds[str(n)] = timed_engine_pass(runner, *probe(n, runner.n_vocab))
    return hidden, seconds


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [rows, width] arrays (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def turns(sides: Sequence[T], rounds: int) -> Iterator[tuple[int, Sequence[T]]]:
    """Each round with the order its sides run in: as given in the first round, reversed in the next, and so on,
    so that neither side always runs first on a machine whose speed drifts."""
    for r in range(rounds):
        yield r, (sides if r % 2 == 0 else sides[::-1])


def passes_in_turns(sides: Sequence[T], rounds: int, lengths: Sequence[int],
                    run: Callable[[T, int], tuple[dict, dict[int, np.ndarray]]], label: Callable[[T], str] = str,
                    say: Callable[[str], None] = print
                    ) -> tuple[dict[T, dict[int, list[float]]], dict[T, list[dict]], dict[T, dict[int, np.ndarray]]]:
    """Each side's passes, ``run(side, round)`` (a report holding its seconds per length, and the hidden states per
    length), taking turns over the rounds: the seconds per side and length, every round's report per side, and
    each side's last hidden states."""
    seconds: dict[T, dict[int, list[float]]] = {side: {n: [] for n in lengths} for side in sides}
    reports: dict[T, list[dict]] = {side: [] for side in sides}
    hidden: dict[T, dict[int, np.ndarray]] = {}
    for r, order in turns(sides, rounds):
        for side in order:
            report, hidden[side] = run(side, r)
            reports[side].append(report)
            for n in lengths:
                seconds[side][n].append(report["seconds"][str(n)])
            say(f"{label(side)}, round {r + 1}/{rounds}: " + ", ".join(
                f"{n} tokens {n / seconds[side][n][-1]:.1f} tokens/s" for n in lengths))
    return seconds, reports, hidden


def tokens_per_s(tokens: int, seconds: Sequence[float]) -> float:
    """Throughput over every round: tokens of all rounds over their summed time."""
    return round(tokens * len(seconds) / sum(seconds), 1)


# -- the timing stand-in ----------------------------------------------------------------------------------

PRESET, DTYPE = "qwen3-0.6b", "q8_0"
STANDIN_DIR = ROOT / ".cache" / "models" / f"{PRESET}-{DTYPE}"


def standin_paths(directory: Path = STANDIN_DIR) -> tuple[Path, Path]:
    return directory / "model.gguf", directory / "projector.safetensors"


def ensure_standin(directory: Path = STANDIN_DIR, dtype: str = DTYPE, preset: str = PRESET) -> tuple[Path, Path]:
    """The stand-in's (model, projector) paths, generating them first when absent (~20 s, ~640 MB).

    Another ``dtype`` (the PyTorch peer's BF16 knob) or ``preset`` (``qwen3-0.6b-v35``: v3.5's sliding-window
    layers) goes to its own folder beside the Q8_0 one.
    """
    if (dtype, preset) != (DTYPE, PRESET) and directory == STANDIN_DIR:
        directory = STANDIN_DIR.with_name(f"{preset}-{dtype}")
    model, projector = standin_paths(directory)
    # one process generates it, another asking meanwhile waits and finds it made (make bench beside make test)
    with locked(directory.with_name(f".{directory.name}.lock")):
        if model.is_file() and projector.is_file():
            return model, projector
        from models.generate_test_model import PRESETS, generate

        print(f"generating the {preset} {dtype} stand-in model into {directory} (once)", flush=True)
        # Written beside the target and renamed, so an interrupted run never leaves a truncated model behind.
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            generate(PRESETS[preset], dtype, Path(scratch) / "out")
            if directory.exists():
                shutil.rmtree(directory)
            (Path(scratch) / "out").rename(directory)
    return standin_paths(directory)
