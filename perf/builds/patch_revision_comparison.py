"""The llama.cpp patches of the working tree against the same patches at an earlier git revision, side by side
(``tree_vs_base``): the comparison that perf/builds/patch_revision_bench.py runs; its table is perf/tables.py's
``patch_revision_table``.

A kernel change to a patch in stack/patches/ is measured against the patch it replaces, not against ggml without
it: two builds of the installed version with this CPU's CMake flags (as ``make install`` builds, without ggml's
AMX matmul unless asked), one with the patch chain as the working tree has it (the installed build's wheel when
nothing is uncommitted beyond it), the other with each patch of that chain as it was at the base revision (``git
show``; a patch the base does not have is left out, and one the chain no longer names is not applied). Both are
built by stack/build_llama_wheel.sh (build only, cached by its key, which hashes the patches' text) and unpacked
under ``.cache/llama-builds/``. Each build runs in child processes, the unpacked one first on ``PYTHONPATH``,
taking turns per round (perf/builds/amx_comparison.py's child: the engine's runner with the CPU config's options
after its AMX self-check, one timed pass per length on the PyTorch peer's token ids and outputs). The results say
which patches differ, each build's tokens/s, how many rounds the working tree's build won, and whether the hidden
states are bit for bit the same (a change meant to keep the arithmetic, as a reordered kernel loop) or how far
apart they are (the smallest row cosine).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from perf import ROOT
from perf.builds import amx_comparison
from perf.common import cosine_rows, tokens_per_s
from stack import cpu_features

BUILDS = ("base", "tree")  # the patches at the base revision, the working tree's


def resolve(revision: str, repository: Path = ROOT) -> tuple[str, str]:
    """The full commit id and subject line of ``revision``; ValueError when git does not know it."""
    result = subprocess.run(["git", "log", "-1", "--format=%H%n%s", revision, "--"], cwd=repository,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(f"git does not know the revision {revision!r}: {result.stderr.strip()}")
    commit, subject = result.stdout.splitlines()[:2]
    return commit, subject


def patch_at(commit: str, patch: Path, repository: Path = ROOT) -> bytes | None:
    """The text of ``patch`` (a file of the repository) at ``commit``, or None when the commit has no such file."""
    relative = patch.resolve().relative_to(repository.resolve()).as_posix()
    result = subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=repository, capture_output=True)
    return result.stdout if result.returncode == 0 else None


def chain_at(commit: str, chain: Sequence[Path], into: Path, repository: Path = ROOT) -> tuple[list[Path], list[str]]:
    """``chain`` as it was at ``commit``, written under ``into`` in the same order: the patch files to build with,
    and the names of the chain's patches that the commit does not have (left out)."""
    into.mkdir(parents=True, exist_ok=True)
    files, absent = [], []
    for patch in chain:
        text = patch_at(commit, patch, repository)
        if text is None:
            absent.append(patch.name)
            continue
        target = into / patch.name
        if not target.is_file() or target.read_bytes() != text:
            target.write_bytes(text)
        files.append(target)
    return files, absent


def changed(chain: Sequence[Path], base: Sequence[Path]) -> list[str]:
    """Names of the chain's patches whose text differs at the base, or that the base does not have."""
    base_text = {p.name: p.read_bytes() for p in base}
    return [p.name for p in chain if base_text.get(p.name) != p.read_bytes()]


def builds(revision: str, say: Callable[[str], None] = print) -> tuple[dict, dict[str, Path]]:
    """The base revision as the results describe it, and both builds unpacked for a child's PYTHONPATH; ValueError
    when no patch differs (the builds would be the same)."""
    commit, subject = resolve(revision)
    chain = cpu_features.patches(amx=False)
    base_chain, absent = chain_at(commit, chain, amx_comparison.BUILDS_DIR / f"patches-{commit[:12]}")
    differing = changed(chain, base_chain)
    if not differing:
        raise ValueError(f"no patch of the chain differs between {revision} ({commit[:12]}) and the working tree: "
                         "both builds would be the same")
    say(f"patches that differ from {commit[:12]} ({subject}): {', '.join(differing)}")
    args = cpu_features.cmake_args(cpu_features.cpu_flags(), amx=False)
    paths = {"base": amx_comparison.unpack(amx_comparison.build_wheel(args, base_chain, say=say)),
             "tree": amx_comparison.unpack(amx_comparison.build_wheel(args, chain, say=say))}
    return {"revision": commit, "subject": subject, "absent_at_base": absent, "changed": differing}, paths


def compare(model: Path, options: object, lengths: Sequence[int], rounds: int, paths: dict[str, Path],
            say: Callable[[str], None] = print) -> dict:
    """Tokens/s of both builds (``paths``: where each is unpacked) at each length, taking turns per round, their
    ratio, the rounds the working tree's build won, and the hidden states' agreement."""
    seconds: dict[str, dict[int, list[float]]] = {b: {n: [] for n in lengths} for b in BUILDS}
    reports: dict[str, dict] = {}
    hidden: dict[str, dict[int, np.ndarray]] = {}
    for r in range(rounds):
        for build in (BUILDS if r % 2 == 0 else BUILDS[::-1]):
            reports[build], hidden[build] = amx_comparison.run_child(model, options, lengths, paths[build])
            for n in lengths:
                seconds[build][n].append(reports[build]["seconds"][str(n)])
            say(f"{build} build, round {r + 1}/{rounds}: " + ", ".join(
                f"{n} tokens {n / seconds[build][n][-1]:.1f} tokens/s" for n in lengths))
    measured = {build: {"libraries": reports[build]["libraries"], "system_info": reports[build]["system_info"],
                        "seconds": {str(n): [round(s, 3) for s in seconds[build][n]] for n in lengths},
                        "tokens_per_s": {str(n): tokens_per_s(n, seconds[build][n]) for n in lengths}}
                for build in BUILDS}
    return {"builds": measured, "rounds": rounds,
            "tree_vs_base": {str(n): round(measured["tree"]["tokens_per_s"][str(n)]
                                           / measured["base"]["tokens_per_s"][str(n)], 3) for n in lengths},
            "rounds_won_by_tree": {str(n): rounds_won(seconds["tree"][n], seconds["base"][n]) for n in lengths},
            **agreement(hidden["tree"], hidden["base"])}


def rounds_won(tree: Sequence[float], base: Sequence[float]) -> int:
    """In how many rounds the working tree's pass took less time than the base's."""
    return sum(t < b for t, b in zip(tree, base, strict=True))


def agreement(tree: dict[int, np.ndarray], base: dict[int, np.ndarray]) -> dict[str, dict[str, float | bool]]:
    """Per length: whether the hidden states are bit for bit the same, and their smallest row cosine."""
    return {"identical": {str(n): bool(np.array_equal(tree[n], base[n])) for n in tree},
            "cosine_min": {str(n): round(float(cosine_rows(tree[n], base[n]).min()), 6) for n in tree}}
