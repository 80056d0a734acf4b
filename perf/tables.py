"""The Markdown tables and summaries of the benches' results, in one place: pure functions of a results dict.

A bench prints them when it has measured; perf/report.py renders perf/README.md's generated blocks with them
from perf/results/*.json. Both get the same text, and rendering needs neither a bench nor what it measures
with: nothing here imports llama.cpp, torch or Triton's client, and no bench module.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from perf.common import PEER_LENGTH, PROFILE_GROUPS, SWEPT

# -- every results file's envelope (perf.common.envelope) ---------------------------------------------------


def envelope_line(results: Mapping) -> str:
    """Where a block's figures come from, as its results file's envelope says: the command, the date and length
    of the run, the commit, the machine (CPU model, logical CPUs, GPU) and the 1-minute load average before and
    after; what a file from before the envelope did not record is said to be so."""
    m, rev = results["machine"], results["revision"]
    duration = f", {results['duration_s']:.0f} s" if results.get("duration_s") is not None else ""
    commit = (f"commit {rev['commit'][:7]}" + (" with uncommitted changes" if rev.get("dirty") else "")
              if rev.get("commit") else "commit not recorded")
    generation = f" ({m['cpu_generation']})" if m.get("cpu_generation") else ""
    cpus = f", {m['logical_cpus']} logical CPUs" if m.get("logical_cpus") else ""
    gpu = f", GPU {m['gpu']['name']}" if (m.get("gpu") or {}).get("name") else ""
    before, after = m.get("load_average_before"), m.get("load_average_after")
    load = ("load average not recorded" if after is None else f"load average (1 min) {after[0]:.2f} at the end"
            if before is None else f"load average (1 min) {before[0]:.2f} -> {after[0]:.2f}")
    return (f"Measured by `{results['command']}` on {results['started'][:10]}{duration}, {commit}; "
            f"{m.get('cpu_model') or 'CPU model not recorded'}{generation}{cpus}{gpu}; {load}.")


# make bench's paths as its tables name them: the baselines a to d.
LABELS = {"seed_approach": "a. first plan (model per request, embeddings mode)", "engine": "b. engine in-process",
          "triton_grpc": "c. Triton, gRPC", "triton_http": "c. Triton, HTTP", "adapter": "d. adapter (HTTP -> gRPC)"}


# -- make bench (perf/load/bench.py): perf/results/cpu-latest.json ------------------------------------------


def bench_table(results: dict) -> str:
    """The README's tables: concurrency-1 figures per workload and path, the ratios, then the sweep."""
    lines = ["| workload | path | tokens/request | latency p50 | tokens/s | vs engine |",
             "|---|---|---:|---:|---:|---:|"]
    for name, measured in results["workloads"].items():
        engine_tps = measured["baselines"]["engine"]["tokens_per_s"]
        for key, s in measured["baselines"].items():
            lines.append(f"| {name} | {LABELS[key]} | {s['tokens_per_request']:.0f} | "
                         f"{s['latency_ms']['p50'] / 1000:.2f} s | {s['tokens_per_s']:.1f} | "
                         f"{s['tokens_per_s'] / engine_tps:.2f} |")
    lines += ["", f"Ratios ({results['ratios_workload']}, tokens/s at concurrency 1): "
              + ", ".join(f"`{key}` = {results['ratios'][key]:.2f} (target >= {target})"
                          for key, target in results["ratio_targets"].items())
              + "; median of the rounds' ratios: "
              + ", ".join(f"{results['ratios_median_of_rounds'][key]:.2f}" for key in results["ratio_targets"]) + "."]
    rss = results["triton_peak_rss"]
    lines.append(f"Triton peak RSS (VmHWM): tritonserver {rss['tritonserver_vmhwm_bytes'] / 2**20:.0f} MiB + "
                 f"{rss['stub_processes']} Python backend stubs (one per model instance) "
                 f"{rss['stub_vmhwm_bytes'] / 2**20:.0f} MiB = {rss['total_bytes'] / 2**20:.0f} "
                 f"MiB (n_ctx {results['engine_options']['n_ctx']}). Other processes used "
                 f"{results['machine']['other_cpu_share']:.0%} of the CPU during the run.")
    for key in ("engine_vs_torch_bf16", "amx_vs_avx512", "q8_repack_vs_plain"):
        if key not in results["ratio_notes"]:
            continue
        value = results["ratios"].get(key)
        lines.append(f"`{key}` = {value:.2f} ({PEER_LENGTH} tokens)." if value is not None
                     else f"`{key}`: {results['ratio_notes'][key]}.")
    lines += ["", "| workload | path | concurrency | requests/s | tokens/s | latency p50 | p90 | p99 |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in results["levels"]:
        if s["target"] in SWEPT:
            lat = s["latency_ms"]
            lines.append(f"| {s['workload']} | {LABELS[s['target']]} | {s['concurrency']} | "
                         f"{s['requests_per_s']:.3f} | {s['tokens_per_s']:.1f} | {lat['p50'] / 1000:.2f} s | "
                         f"{lat['p90'] / 1000:.2f} s | {lat['p99'] / 1000:.2f} s |")
    if "cpu_peer" in results:
        lines += ["", peer_table(results["cpu_peer"])]
    if "amx" in results:
        lines += ["", amx_table(results["amx"])]
    if "q8_repack" in results:
        lines += ["", q8_repack_table(results["q8_repack"])]
    return "\n".join(lines)


# -- the PyTorch CPU peer (perf/peers/torch_comparison.py): cpu_peer in both CPU results files ---------------------


def _k(n: str) -> str:
    """A token count as a column heading: 1024 -> 1k."""
    return f"{int(n) / 1024:g}k" if int(n) % 1024 == 0 else n


def peer_table(peer: Mapping) -> str:
    """Markdown: tokens/s and ratios per length, the per-op profiles, and the knobs when measured."""
    if "lengths" not in peer:
        return f"PyTorch peer not measured: {peer.get('skipped', 'no figures')}"
    lines = [f"| tokens | engine (llama.cpp, {peer.get('weights_type', 'Q8_0')}) | torch bf16 | torch fp32 | "
             "engine / torch bf16 | engine / torch fp32 | cosine vs engine, bf16 / fp32 (min) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, m in peer["lengths"].items():
        cos = m["cosine_vs_engine"]
        lines.append(f"| {n} | {m['engine']['tokens_per_s']:.1f} | {m['torch_bf16']['tokens_per_s']:.1f} | "
                     f"{m['torch_fp32']['tokens_per_s']:.1f} | {peer['ratios']['engine_vs_torch_bf16'][n]:.2f} | "
                     f"{peer['ratios']['engine_vs_torch_fp32'][n]:.2f} | {cos['torch_bf16']['min']:.4f} / "
                     f"{cos['torch_fp32']['min']:.4f} |")
    profiled = {n: m["profile"] for n, m in peer["lengths"].items() if "profile" in m}
    if profiled:
        lines += ["", "| tokens | side | pass (profiled) | weight matmuls | attention | LM head (20 rows) | rest |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for n, sides in profiled.items():
            for side, p in sides.items():
                s, sh = p["seconds"], p["shares"]
                lines.append(f"| {n} | {side} | {p['wall_s']:.2f} s | " + " | ".join(
                    f"{s[g]:.2f} s ({sh[g]:.0%})" if s[g] else "-" for g in PROFILE_GROUPS) + " |")
    if peer.get("knobs"):
        knob_lengths = list(next(iter(peer["knobs"].values()))["tokens_per_s"])
        lines += ["", "| engine options (else as configs/cpu.pbtxt) | "
                  + " | ".join(f"tokens/s at {_k(n)}" for n in knob_lengths)
                  + " | vs configured | cosine vs torch fp32 (min) |",
                  "|---|" + "---:|" * (len(knob_lengths) + 2)]
        for label, k in peer["knobs"].items():
            vs = ", ".join(f"{k['vs_configured'][n]:.2f}" for n in knob_lengths) if "vs_configured" in k else ""
            cos = k.get("cosine_vs_torch_fp32")
            cos_text = f"{min(cos.values()):.4f}" if cos else "- (other random weights)"
            lines.append(f"| {label} | " + " | ".join(f"{k['tokens_per_s'][n]:.1f}" for n in knob_lengths)
                         + f" | {vs} | {cos_text} |")
    return "\n".join(lines)


# -- the AMX build against the AVX-512 build (perf/builds/amx_comparison.py): amx in cpu-latest.json ----------------


def amx_table(result: Mapping) -> str:
    """Tokens/s of both builds per length, their ratio and cosine; or why AMX was not measured here."""
    if "skipped" in result:
        return f"AMX vs AVX-512: {result['skipped']}"
    builds = result["builds"]
    lines = ["| tokens | AVX-512 build | AMX build | AMX / AVX-512 | cosine (min) |", "|---:|---:|---:|---:|---:|"]
    for n, ratio in result["amx_vs_avx512"].items():
        lines.append(f"| {n} | {builds['avx512']['tokens_per_s'][n]:.1f} | {builds['amx']['tokens_per_s'][n]:.1f} | "
                     f"{ratio:.2f} | {result['cosine_amx_vs_avx512'][n]:.5f} |")
    if not result["amx_self_check_passed"]:
        lines.append("\nThe AMX self-check failed: the AMX build ran without its extra buffer types (no AMX).")
    return "\n".join(lines)


# -- extra buffer types on vs off (perf/builds/q8_repack_comparison.py): q8_repack in cpu-latest.json ---------------


def q8_repack_table(result: Mapping) -> str:
    """Tokens/s with the extra buffer types off and on per length, their ratio and cosine, and which they were."""
    build = result.get("build", "installed")
    lines = [f"Extra buffer types ({result['extra_buffer_types']}) on vs off, same build"
             + ("" if build == "installed" else f" ({build}, beside the installed AMX build)") + ":", "",
             "| tokens | plain | repacked | repacked / plain | cosine (min) |", "|---:|---:|---:|---:|---:|"]
    for n, ratio in result["q8_repack_vs_plain"].items():
        lines.append(f"| {n} | {result['tokens_per_s']['plain'][n]:.1f} | {result['tokens_per_s']['repacked'][n]:.1f}"
                     f" | {ratio:.2f} | {result['cosine_min'][n]:.5f} |")
    return "\n".join(lines)


# -- the working tree's llama.cpp patches vs the same patches at a revision (perf/builds/patch_revision_comparison.py):
# cpu-patch-revision.json -------------------------------------------------------------------------------------


def patch_revision_table(result: Mapping) -> str:
    """Tokens/s of the base revision's patches and the working tree's per length, their ratio, the rounds the
    tree won, and whether the hidden states are the same bits (else their smallest row cosine)."""
    base = result["base"]
    absent = f"; not at the base: {', '.join(base['absent_at_base'])}" if base["absent_at_base"] else ""
    lines = [f"The working tree's patches against those of {base['revision'][:12]} (changed: "
             f"{', '.join(base['changed'])}{absent}). Same version and flags, builds taking turns, "
             f"{result['rounds']} rounds:", "",
             "| tokens | base (tokens/s) | tree (tokens/s) | tree / base | rounds won by the tree | hidden states |",
             "|---:|---:|---:|---:|---:|---|"]
    builds = result["builds"]
    for n, ratio in result["tree_vs_base"].items():
        same = "identical" if result["identical"][n] else f"cosine (min) {result['cosine_min'][n]:.6f}"
        lines.append(f"| {n} | {builds['base']['tokens_per_s'][n]:.1f} | {builds['tree']['tokens_per_s'][n]:.1f} | "
                     f"{ratio:.2f} | {result['rounds_won_by_tree'][n]} of {result['rounds']} | {same} |")
    if "attention_op" in result:
        lines += ["", attention_op_table(result["attention_op"])]
    if "searches" in result:
        lines += ["", searches_table(result["searches"])]
    return "\n".join(lines)


def attention_op_table(op: Mapping) -> str:
    """ggml's attention op alone in both builds per length: each build's median over the rounds of its best call,
    the tree's speed over the base's, and the rounds the tree won."""
    rounds = op["rounds"]
    ubatches = (f"one layer of a pass: ubatches of {op['n_ubatch']} queries, each over the cache so far"
                if "n_ubatch" in op else "the tokens attending to themselves")
    lines = [f"ggml's attention op alone (GGML_OP_FLASH_ATTN_EXT: {op['n_head']} query and {op['n_head_kv']} key/value "
             f"heads of {op['head_dim']}, {op['cache'].upper()} cache, causal mask, {op['threads']} threads; "
             f"{ubatches}), the best of {op['repeats']} computations per round, builds taking turns (medians over "
             "the rounds):", "",
             "| tokens | base (ms) | tree (ms) | tree / base (speed) | rounds won by the tree |",
             "|---:|---:|---:|---:|---:|"]
    for n, ratio in op["tree_vs_base"].items():
        base, tree = (statistics.median(op["ms"][b][n]) for b in ("base", "tree"))
        lines.append(f"| {n} | {base:.2f} | {tree:.2f} | {ratio:.3f} | {op['rounds_won_by_tree'][n]} of {rounds} |")
    return "\n".join(lines)


def searches_table(searches: Mapping) -> str:
    """Documents model-scored and tokens decoded per round by each build on LibreChat's searches (engine alone)."""
    lines = [f"LibreChat's searches through the engine alone ({searches['workload']}: {searches['searches']} searches, "
             f"{searches['documents']} documents per round, each search's calls due {searches['deadline_s']:g} s after "
             f"they arrive), builds taking turns:", "",
             "| build | model-scored documents per round | tokens per round |", "|---|---|---|"]
    for build in ("base", "tree"):
        lines.append(f"| {build} | {', '.join(map(str, searches['model_scored'][build]))} | "
                     f"{', '.join(map(str, searches['tokens'][build]))} |")
    lines += ["", f"Model-scored documents, tree / base: {searches['tree_vs_base']:.2f}, the tree ahead in "
                  f"{searches['rounds_won_by_tree']} of {searches['rounds']} rounds."]
    return "\n".join(lines)


# -- the tiled flash attention's BF16 products vs its F32 products (perf/builds/bf16_attention_comparison.py):
# cpu-bf16-attention.json --------------------------------------------------------------------------------


def bf16_attention_table(result: Mapping) -> str:
    """Whole-pass tokens/s and the attention's seconds of both builds per length, their ratios and cosine; or why
    the comparison was not made here. Either comparison: BF16 dot products vs F32, or AMX tiles vs BF16 dot
    products (results without ``products`` are the first)."""
    products = result.get("products", "bf16")
    if "skipped" in result:
        return f"{PRODUCTS_TITLE[products]}: {result['skipped']}"
    new, old = ("amx", "bf16") if products == "amx" else ("bf16", "f32")
    label = {"amx": "AMX", "bf16": "BF16", "f32": "F32"}
    builds = result["builds"]
    lines = [f"{PRODUCTS_BUILDS[products]} ({result['kv_cache_type'].upper()} cache; tokens/s over "
             f"{result['rounds']} rounds, attention from one profiled pass):", "",
             f"| tokens | {label[old]} products (tokens/s) | {label[new]} products (tokens/s) | "
             f"{label[new]} / {label[old]} | attention {label[old]} (s) | attention {label[new]} (s) "
             "| attention speed-up | cosine (min) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, ratio in result[f"{new}_attention_vs_{old}"].items():
        lines.append(f"| {n} | {builds[old]['tokens_per_s'][n]:.1f} | {builds[new]['tokens_per_s'][n]:.1f} | "
                     f"{ratio:.2f} | {builds[old]['attention_s'][n]:.2f} | {builds[new]['attention_s'][n]:.2f} | "
                     f"{result['attention_speedup'][n]:.2f} | {result['cosine_min'][n]:.5f} |")
    return "\n".join(lines)


PRODUCTS_TITLE = {"bf16": "BF16 vs F32 attention products", "amx": "AMX vs BF16 attention products"}
PRODUCTS_BUILDS = {
    "bf16": "Same sources and flags, with and without stack/patches/ggml-cpu-flash-attn-bf16.patch and the attention "
            "patches that apply on top of it",
    "amx": "Same sources and patches, flags with and without GGML_AMX_TILE/GGML_AMX_BF16 "
           "(stack/patches/ggml-cpu-flash-attn-amx.patch's tiles, or VDPBF16PS)",
}


# -- v3.5's sliding-window layers against v3's global ones (perf/builds/swa_bench.py): cpu-swa.json --------------


def swa_table(result: Mapping) -> str:
    """Seconds per forward pass of the v3 and v3.5 stand-ins per length, and the speed-up."""
    lines = [f"One forward pass, v3 stand-in (every layer global) vs v3.5 stand-in ({result['sliding_layers']} of "
             f"{result['layers']} layers in a {result['window']}-token window); median of {result['rounds']}:", "",
             "| tokens | v3 (s) | v3.5 (s) | v3 / v3.5 |", "|---:|---:|---:|---:|"]
    for n, row in result["lengths"].items():
        lines.append(f"| {n} | {row['v3_s']:.2f} | {row['v35_s']:.2f} | {row['speedup']:.2f} |")
    return "\n".join(lines)


# -- the CPU image beside make serve's native build (tests/test_docker_live.py): docker-cpu.json ----------------


def docker_cpu_table(results: Mapping) -> str:
    """Tokens/s of the CPU image and of make serve's native build, best of the rounds taken in turn; image sizes."""
    d = results["docker_cpu"]
    load = results["machine"]["load_average_before"]
    lines = [f"{results['model']['stand_in']} {results['model']['dtype'].upper()} stand-in, "
             f"{results['model']['tokens_per_request']} tokens a request through Triton HTTP, best of {d['rounds']} "
             f"rounds taken in turn, on {results['machine']['cpu_model']} (load average {load[0]:.2f} at the start):",
             "", "| build | CPU kernels | best tokens/s | all rounds |", "|---|---|---:|---|"]
    kernels = {"image": f"dispatch: {d['image_cpu_variant']}", "native": "make install (this CPU's flags)"}
    for name in ("image", "native"):
        lines.append(f"| {name} | {kernels[name]} | {d['best_tokens_per_s'][name]:.1f} | "
                     f"{', '.join(f'{x:.1f}' for x in d['tokens_per_s'][name])} |")
    lines += ["", f"Image / native: **{d['image_vs_native']:.2f}x** (target {d['target']:.2f}).", "",
              "| image | size | build time (s) |", "|---|---:|---:|"]
    for built in d["images"].values():
        lines.append(f"| {built['image']} | {built['size_bytes'] / 1e6:.0f} MB | {built['build_s']:.0f} |")
    return "\n".join(lines)


# -- AIPerf beside perf/load/loadgen.py (perf/aiperf/aiperf_bench.py): aiperf-latest.json ------------------------------


def aiperf_table(levels: Sequence[dict]) -> str:
    """Per target, workload and concurrency: both clients' requests/s, p50 and p99, their ratios, the load."""
    def ms(x: float | None) -> str:
        return f"{x / 1000:.2f} s" if x is not None else "-"

    def num(x: float | None) -> str:
        return f"{x:.2f}" if x is not None else "-"

    lines = ["| target | workload | concurrency | requests | requests/s AIPerf / loadgen | p50 AIPerf / loadgen "
             "| p99 AIPerf / loadgen | ratio requests/s, p50, p99 | load average |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in levels:
        a, g, r = v["aiperf"], v["loadgen"], v["ratios"]
        lines.append(f"| {v['target']} | {v['workload']} | {v['concurrency']} | {v['requests']} | "
                     f"{a['requests_per_s']:.3f} / {g['requests_per_s']:.3f} | "
                     f"{ms(a['latency_ms']['p50'])} / {ms(g['latency_ms']['p50'])} | "
                     f"{ms(a['latency_ms']['p99'])} / {ms(g['latency_ms']['p99'])} | "
                     f"{num(r['requests_per_s'])}, {num(r['latency_p50'])}, {num(r['latency_p99'])} | "
                     f"{v['load_average_1m'][0]:.1f} -> {v['load_average_1m'][1]:.1f} |")
    return "\n".join(lines)


# -- LibreChat's own client (perf/load/librechat_bench.py): librechat-search-cpu*.json ---------------------------


def librechat_summary(summary: dict) -> str:
    """One paragraph: fallbacks and their causes, answers within the deadline, latency, model-scored documents."""
    lat = summary["latency_ms"]
    share, unknown = summary["model_scored_share"], summary["answered_without_scored_header"]
    causes = ", ".join(f"{n} {cause}" for cause, n in summary["fallback_causes"].items())
    return (f"{summary['searches']} searches, {summary['calls']} calls: {summary['fallbacks']} fell back"
            f"{f' ({causes})' if causes else ''}, {summary['answered_within_deadline']} answered within "
            f"{summary['deadline_s']} s; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
            f"documents scored by the model: {summary['documents_model_scored']}/{summary['documents_of_known_calls']}"
            + (f" ({share:.1%})" if share is not None else "")
            + (f"; {unknown} answers without an X-Rerank-Scored header (not counted)" if unknown else ""))


def librechat_comparison(summaries: Mapping[str, dict]) -> str:
    """The same searches sent to each model in turn (librechat_bench --v35): a row per model."""
    lines = ["| model | calls | fell back | answered within deadline | latency p50 (ms) | p99 (ms) | "
             "documents scored by the model | share | tokens per answered call |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, s in summaries.items():
        share = "" if s["model_scored_share"] is None else f"{s['model_scored_share']:.1%}"
        lines.append(f"| {label} | {s['calls']} | {s['fallbacks']} | {s['answered_within_deadline']} | "
                     f"{s['latency_ms']['p50']} | {s['latency_ms']['p99']} | "
                     f"{s['documents_model_scored']}/{s['documents_of_known_calls']} | {share} | "
                     f"{s['tokens_per_answered_call']} |")
    return "\n".join(lines)


# -- the GPU check (perf/gpu/gpu_check.py): perf/results/gpu-<gpu>.json ------------------------------------------


def gpu_table(results: Mapping) -> str:
    """Markdown for the README: the build, the reference checks on the GPU, forward passes side by side, then
    LibreChat's latency per call; a run stopped early says which steps it has."""
    lines = []
    build = results.get("build") or {}
    if "seconds" in build:
        lines += [f"CUDA libraries built in {build['seconds']} s on {build['jobs']} cores ({build.get('nvcc')}).", ""]
    checks = results.get("fidelity", {}).get("checks", {})
    if checks:
        criteria = results["fidelity"].get("criteria", {})
        lines += ["| reference check | documents | hidden cosine (min) | scores max abs error | criterion | verdict |",
                  "|---|---:|---:|---:|---|---|"]
        for name, check in checks.items():
            verdict = {True: "pass", False: "FAIL"}.get(check.get("passed"), "reported")
            lines.append(f"| {name} | {check['documents']} | {check['hidden_cosine_min']:.8f} | "
                         f"{check['score_max_abs_error']:.2e} | {criteria.get(name, '')} | {verdict} |")
    forward_results = results.get("forward", {}).get("lengths", {})
    if forward_results:
        lines += ["", "| tokens | engine (llama.cpp, Q8_0) tokens/s | PyTorch bf16 (SDPA) tokens/s | engine / torch | "
                  "cosine (min) |", "|---:|---:|---:|---:|---:|"]
        for n, m in forward_results.items():
            torch_side = m.get("torch_bf16", {}).get("tokens_per_s")
            lines.append(f"| {n} | {m['engine']['tokens_per_s']:.0f} | "
                         + (f"{torch_side:.0f} | {m['engine_vs_torch_bf16']:.2f} | "
                            f"{m['cosine_engine_vs_torch_bf16']['min']:.4f} |" if torch_side else "- | - | - |"))
    search = results.get("librechat", {})
    rows = [k for k in ("share_decodes_on", "share_decodes_off") if k in search]
    if rows:
        lines += ["", f"| {search['workload']}: latency per call | p50 | p99 | max | tokens/call |",
                  "|---|---:|---:|---:|---:|"]
        for key in rows:
            for mode, label in (("search_batch", f"{search['requests_per_search']} calls batched"), ("alone", "alone")):
                s = search[key][mode]
                lat = s["latency_ms"]
                lines.append(f"| {key.replace('_', ' ')}, {label} | {lat['p50'] / 1000:.3f} s | "
                             f"{lat['p99'] / 1000:.3f} s | {lat['max'] / 1000:.3f} s | {s['tokens_per_request']:.0f} |")
    if results.get("complete") is False:
        measured = [step for step in ("fidelity", "forward", "librechat") if step in results]
        lines += ["", f"Incomplete run, stopped by its time limit (last step done {results.get('duration_s')} s in): "
                  f"measured {', '.join(measured) or 'nothing'}."]
    return "\n".join(lines).strip("\n")
