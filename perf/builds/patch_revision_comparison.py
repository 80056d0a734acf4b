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

The builds also take turns on ggml's attention op alone (GGML_OP_FLASH_ATTN_EXT through its C API,
perf/builds/ggml_c_api.py, in child processes): one layer's attention in a pass of each length as the engine runs
it, the model's heads in the CPU config's ubatches, each over the cache so far under its causal mask, with the
config's cache type and threads, the best of a few computations per round. A change to the attention's kernels shows
there in full, where a whole pass dilutes it with the weight matmuls (a 1% faster op is under this VM's noise in
passes).

With ``searches`` the builds also take turns on what the change buys LibreChat: the engine alone (the CPU
config's, no Triton), in child processes, answers the ``librechat-search`` workload's searches as LibreChat sends
them (each search's five calls at once, the adapter's deadline, top_n 5), and the results count the documents
the model scored, and the tokens it decoded, in each build's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from models.gguf_metadata import read_metadata
from perf import ROOT
from perf.builds import amx_comparison, ggml_c_api
from perf.common import cosine_rows, engine_config, tokens_per_s, turns
from stack import cpu_features

BUILDS = ("base", "tree")  # the patches at the base revision, the working tree's
SEARCH_WORKLOAD = "librechat-search"
PAGES_PER_SEARCH = 5  # the workload's entries 5k to 5k+4 are search k's pages
# Children's programs (python -c) for the searches and for the attention op, run from the repository root: the
# unpacked build first on its PYTHONPATH.
SEARCH_CHILD = "import sys; from perf.builds.patch_revision_comparison import search_child; search_child(sys.argv[1:])"
ATTENTION_CHILD = ("import sys; from perf.builds.patch_revision_comparison import attention_child; "
                   "attention_child(sys.argv[1:])")
ATTENTION_REPEATS = 5  # timed calls per length, round and build (after an untimed one): the best is kept
# numpy's type for the cache types the op is timed with (ggml_c_api.GGML_TYPES)
CACHE_DTYPES = {"f32": np.float32, "f16": np.float16}


def resolve(revision: str, repository: Path = ROOT) -> tuple[str, str]:
    """The full commit id and subject line of ``revision``; ValueError when git does not know it."""
    if revision.startswith("-"):
        raise ValueError(f"{revision!r} is not a revision: it would be read as an option of git")
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
    seconds, reports, hidden = amx_comparison.children_in_turns(model, options, lengths, rounds,
                                                                {b: paths[b] for b in BUILDS}, say)
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


def compare_searches(model: Path, projector: Path, rounds: int, paths: dict[str, Path], searches: int | None = None,
                     deadline_s: float | None = None, say: Callable[[str], None] = print, timeout_s: float = 3600
                     ) -> dict:
    """Both builds (``paths``) on the workload's first ``searches`` searches (None: all), each search's calls due
    ``deadline_s`` after they arrive (None: the adapter's default), taking turns per round: the documents the model
    scored and the tokens it decoded, per build and round, their ratio, and the rounds the tree won."""
    if deadline_s is None:
        deadline_s = adapter_deadline_s()
    scored: dict[str, list[int]] = {b: [] for b in BUILDS}
    tokens: dict[str, list[int]] = {b: [] for b in BUILDS}
    for r, order in turns(BUILDS, rounds):
        for build in order:
            report = run_child(SEARCH_CHILD, [str(model), str(projector), str(searches or 0), str(deadline_s)],
                               paths[build], timeout_s)
            scored[build].append(sum(s["scored"] for s in report["searches"]))
            tokens[build].append(sum(s["tokens"] for s in report["searches"]))
            say(f"{build} build, round {r + 1}/{rounds}: {scored[build][-1]} of {report['documents']} documents "
                f"model-scored, {tokens[build][-1]} tokens")
    return {"workload": SEARCH_WORKLOAD, "searches": len(report["searches"]), "documents": report["documents"],
            "deadline_s": report["deadline_s"], "rounds": rounds, "model_scored": scored, "tokens": tokens,
            "tree_vs_base": round(sum(scored["tree"]) / max(1, sum(scored["base"])), 3),
            "rounds_won_by_tree": sum(t > b for t, b in zip(scored["tree"], scored["base"], strict=True))}


def run_child(program: str, args: Sequence[str], build: Path, timeout_s: float) -> dict:
    """``program`` (python -c) in a child with the build unpacked at ``build`` first on its PYTHONPATH, given the
    file to write its report to and then ``args``: that report."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "report.json"
        result = subprocess.run([sys.executable, "-c", program, str(out), *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=timeout_s, env=amx_comparison.child_environment(build))
        if result.returncode != 0:
            raise RuntimeError(f"child failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
        return json.loads(out.read_text())


def attention_shape(model: Path) -> dict[str, int]:
    """The model's attention as ggml's op sees it: query heads, key/value heads and the head size (its GGUF
    metadata)."""
    metadata = read_metadata(model)
    arch = metadata["general.architecture"]
    return {name: int(metadata[f"{arch}.attention.{key}"])  # type: ignore[call-overload]
            for name, key in (("n_head", "head_count"), ("n_head_kv", "head_count_kv"), ("head_dim", "key_length"))}


def compare_attention(model: Path, options: object, lengths: Sequence[int], rounds: int, paths: dict[str, Path],
                      say: Callable[[str], None] = print, timeout_s: float = 3600) -> dict:
    """ggml's attention op alone in both builds (``paths``), taking turns per round: one layer's attention in a
    pass of each length, the model's heads in the CPU config's ubatches (``options``: also its cache type and
    threads; attention_op_seconds). Milliseconds per build, length and round (the best of ATTENTION_REPEATS), the
    tree's speed over the base's (their medians over the rounds: one slow round of a noisy VM moves a mean of four),
    and the rounds the tree won."""
    cache = options.kv_cache_type  # type: ignore[attr-defined]
    if cache not in CACHE_DTYPES:
        raise ValueError(f"the attention op is timed with an {' or '.join(CACHE_DTYPES)} cache, not {cache}")
    spec = {**attention_shape(model), "cache": cache,
            "threads": options.n_threads or len(os.sched_getaffinity(0)),  # type: ignore[attr-defined]
            "n_ubatch": options.n_ubatch}  # type: ignore[attr-defined]
    ms: dict[str, dict[int, list[float]]] = {b: {n: [] for n in lengths} for b in BUILDS}
    libraries = {}
    for r, order in turns(BUILDS, rounds):
        for build in order:
            report = run_child(ATTENTION_CHILD, [",".join(map(str, lengths)), json.dumps(spec)], paths[build],
                               timeout_s)
            libraries[build] = report["library"]
            for n in lengths:
                ms[build][n].append(report["ms"][str(n)])
            say(f"{build} build, round {r + 1}/{rounds}: attention op " + ", ".join(
                f"{n} tokens {ms[build][n][-1]:.2f} ms" for n in lengths))
    return {**spec, "repeats": ATTENTION_REPEATS, "rounds": rounds, "libraries": libraries,
            "ms": {b: {str(n): ms[b][n] for n in lengths} for b in BUILDS},
            "tree_vs_base": {str(n): round(float(np.median(ms["base"][n]) / np.median(ms["tree"][n])), 3)
                             for n in lengths},
            "rounds_won_by_tree": {str(n): rounds_won(ms["tree"][n], ms["base"][n]) for n in lengths}}


def attention_child(argv: Sequence[str]) -> None:
    """In the child: ggml's attention op on whichever llama_cpp comes first on the path. ``argv``: the file to write
    the milliseconds to, the lengths (comma-separated) and compare_attention's spec as JSON."""
    import llama_cpp

    out, lengths, spec_json = argv
    spec = json.loads(spec_json)
    lib = Path(llama_cpp.__file__).parent / "lib"
    best = {n: round(1e3 * min(attention_op_seconds(lib, int(n), **spec)), 3) for n in lengths.split(",")}
    Path(out).write_text(json.dumps({"library": str(lib / "libggml-cpu.so"), "ms": best}))


def attention_op_seconds(lib: Path, n: int, n_head: int, n_head_kv: int, head_dim: int, cache: str, threads: int,
                         n_ubatch: int) -> list[float]:
    """Seconds of each of ATTENTION_REPEATS computations of attention_pass (libraries in ``lib``) on random Q,
    K and V: one layer's attention in a pass of ``n`` tokens."""
    q, k, v, masks = attention_operands(n, n_head, n_head_kv, head_dim, cache, n_ubatch)
    # each computation allocates its work buffer in the context: per thread at most K and V packed whole, and tiles
    work = threads * (8 * n * head_dim + 2**23)
    size = 2 * q.nbytes + k.nbytes + v.nbytes + sum(m.nbytes for m in masks) + (ATTENTION_REPEATS + 1) * work + 2**24
    with ggml_c_api.graph(lib, size) as graph:
        return graph.seconds(attention_pass(graph, q, k, v, masks, cache), threads, ATTENTION_REPEATS)


def attention_operands(n: int, n_head: int, n_head_kv: int, head_dim: int, cache: str, n_ubatch: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Random Q (F32), K and V (in ``cache``) for a pass of ``n`` tokens, token by token as llama.cpp lays them out
    (tokens x heads x head_dim: a token's heads side by side, as in its KV cache), and the causal mask of each ubatch
    of ``n_ubatch`` queries (F16; its queries x the keys so far)."""
    rng = np.random.default_rng(n)
    q = rng.standard_normal((n, n_head, head_dim), np.float32)
    k, v = (rng.standard_normal((n, n_head_kv, head_dim), np.float32).astype(CACHE_DTYPES[cache]) for _ in "kv")
    masks = [np.triu(np.full((min(n_ubatch, n - s), min(n, s + n_ubatch)), -np.inf, np.float16), s + 1)
             for s in range(0, n, n_ubatch)]
    return q, k, v, masks


def attention_pass(graph: ggml_c_api.Graph, q: np.ndarray, k: np.ndarray, v: np.ndarray, masks: Sequence[np.ndarray],
                   cache: str) -> list[int]:
    """One layer's attention in a pass as the engine runs it, as ggml ops in ``graph``: per ubatch (``masks``), its
    queries (a view of Q: head_dim x queries x heads, strided as llama.cpp's permuted Q) attending to the cache so
    far (views of the first keys and values, strided as its KV cache's) under its mask, scaled by 1/sqrt(head_dim).
    The ops' results, one per ubatch (head_dim x heads x its queries)."""
    (n, n_head, head_dim), n_head_kv = q.shape, k.shape[1]
    q_t, k_t, v_t = (graph.tensor(x, t, (head_dim, x.shape[1], n)) for x, t in ((q, "f32"), (k, cache), (v, cache)))
    outs, start = [], 0
    for mask in masks:
        n_q, n_kv = mask.shape
        q_view = graph.view_3d(q_t, (head_dim, n_q, n_head), (q.strides[0], q.strides[1]), q.strides[0] * start)
        k_view, v_view = (graph.view_3d(t, (head_dim, n_kv, n_head_kv), (k.strides[0], k.strides[1]), 0)
                          for t in (k_t, v_t))
        outs.append(graph.flash_attn_ext(q_view, k_view, v_view, graph.tensor(mask, "f16", (n_kv, n_q)),
                                         1 / np.sqrt(head_dim)))
        start += n_q
    return outs


def adapter_deadline_s() -> float:
    """The adapter's default request_timeout_s: the time it gives the model for each of LibreChat's calls."""
    from adapter.settings import AdapterSettings

    return AdapterSettings.model_fields["request_timeout_s"].default


def search_child(argv: Sequence[str]) -> None:
    """In the child: the engine with the CPU config's options, on whichever llama_cpp comes first on the path,
    answering each search's calls together by their deadline. ``argv``: the file to write the counts to, the model,
    the projector, how many searches (0: all) and the seconds from a search's arrival to its deadline."""
    from perf.load.loadgen import LIBRECHAT_TOP_N
    from perf.load.workloads import load
    from rerank_engine import Reranker, RerankRequest

    out, model, projector, count, seconds = argv
    deadline_s = float(seconds)
    entries = load(SEARCH_WORKLOAD)[:int(count) * PAGES_PER_SEARCH or None]
    engine = Reranker(engine_config(Path(model), Path(projector)))
    searches = []
    for first in range(0, len(entries), PAGES_PER_SEARCH):
        pages = entries[first:first + PAGES_PER_SEARCH]
        due = time.monotonic() + deadline_s
        requests = [RerankRequest(e.query, e.documents, deadline=due, min_scored=LIBRECHAT_TOP_N) for e in pages]
        scored = tokens = 0
        for _, result in engine.rerank_stream(requests):
            if isinstance(result, Exception):
                raise result
            scored += result.n_scored
            tokens += result.tokens
        searches.append({"scored": scored, "tokens": tokens})
    Path(out).write_text(json.dumps({"deadline_s": deadline_s, "documents": sum(len(e.documents) for e in entries),
                                         "searches": searches}))
