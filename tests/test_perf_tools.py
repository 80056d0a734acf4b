"""The benchmark tooling's pure parts: statistics, the load generator's loop, the workload files, the plot."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from perf import ROOT, tables
from perf.common import (
    CPU_CONFIG,
    GPU_CONFIG,
    LENGTHS,
    N_OUTPUTS,
    PEER_LENGTH,
    PROFILE_GROUPS,
    config_parameters,
    engine_config,
    passes_in_turns,
    probe,
    tokens_per_s,
    turns,
)
from perf.load.bench import cpu_ratios, ratios
from perf.load.loadgen import Level, Sample, Target, format_line, percentile, plot, run_level, summarize, write_csv
from perf.load.seed_approach import SeedApproach
from perf.load.workloads import (
    LOCALES,
    WORKLOADS,
    Entry,
    WorkloadSpec,
    from_input_data,
    load,
    path_of,
    text_of_tokens,
    to_input_data,
)
from perf.peers import qwen3_torch, torch_comparison
from rerank_engine import EngineConfig, Reranker, RerankRequest

pytestmark = pytest.mark.build


def test_percentile_is_nearest_rank() -> None:
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert [percentile(values, q) for q in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3], 50) == 2
    assert percentile([], 50) is None


def test_sides_take_turns_at_going_first() -> None:
    assert list(turns(("a", "b"), 3)) == [(0, ("a", "b")), (1, ("b", "a")), (2, ("a", "b"))]
    assert list(turns(["x"], 0)) == []


def test_passes_in_turns_keeps_each_sides_rounds_in_order() -> None:
    calls: list[tuple[str, int]] = []

    def run(side: str, r: int) -> tuple[dict, dict[int, np.ndarray]]:
        calls.append((side, r))
        return {"seconds": {"10": 1.0 + r + (side == "b"), "20": 2.0}, "round": r}, {10: np.full(2, r)}

    said: list[str] = []
    seconds, reports, hidden = passes_in_turns(("a", "b"), 3, (10, 20), run, lambda s: f"{s} build", said.append)
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert seconds == {"a": {10: [1.0, 2.0, 3.0], 20: [2.0] * 3}, "b": {10: [2.0, 3.0, 4.0], 20: [2.0] * 3}}
    assert [report["round"] for report in reports["b"]] == [0, 1, 2]
    np.testing.assert_array_equal(hidden["a"][10], [2, 2])  # the last round's
    assert said[2] == "b build, round 2/3: 10 tokens 3.3 tokens/s, 20 tokens 10.0 tokens/s"


def test_summary_counts_answered_requests_over_wall_time() -> None:
    samples = (Sample(1.0, 10, 100), Sample(2.0, 10, 100), Sample(3.0, 10, 100), Sample(0.5, 0, 0, "boom"))
    summary = summarize(Level("engine", "short", 2, 4.0, samples))
    assert summary["requests"] == 3
    assert summary["errors"] == 1
    assert summary["requests_per_s"] == 0.75
    assert summary["documents_per_s"] == 7.5
    assert summary["tokens_per_s"] == 75.0
    assert summary["tokens_per_request"] == 100
    assert summary["latency_ms"] == {"mean": 2000.0, "p50": 2000.0, "p90": 3000.0, "p99": 3000.0, "max": 3000.0}
    line = format_line(summary)
    assert "Concurrency: 2" in line
    assert "0.75 infer/sec" in line
    assert "1 errors" in line


def test_summary_without_answers_has_no_latency() -> None:
    summary = summarize(Level("adapter", "short", 1, 2.0, (Sample(2.0, 0, 0, "HTTP 503"),)))
    assert summary["requests_per_s"] == 0.0
    assert summary["latency_ms"]["p50"] is None
    assert "no request answered" in format_line(summary)


def test_levels_of_the_same_measurement_add_up() -> None:
    a = Level("engine", "short", 1, 2.0, (Sample(2.0, 10, 100),))
    b = Level("engine", "short", 1, 3.0, (Sample(3.0, 10, 100),))
    assert (a + b).wall_s == 5.0
    assert len((a + b).samples) == 2
    with pytest.raises(ValueError, match="same target"):
        _ = a + Level("adapter", "short", 1, 1.0, ())


def test_ratios_are_throughput_quotients() -> None:
    tps = {"seed_approach": 50.0, "engine": 100.0, "triton_grpc": 95.0, "triton_http": 90.0, "adapter": 92.0}
    assert ratios({k: {"tokens_per_s": v} for k, v in tps.items()}) == {
        "engine_vs_seed_approach": 2.0, "triton_vs_engine": 0.95, "adapter_vs_engine": 0.92,
        "triton_http_vs_engine": 0.9}


class SleepyTarget(Target):
    name = "sleepy"

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[int] = []
        self.in_flight = self.most_in_flight = 0

    async def send(self, index: int) -> tuple[int, int]:
        self.sent.append(index)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if index == 2:
            raise RuntimeError("entry 2 fails")
        return len(self.entries[index].documents), 7


def test_run_level_keeps_concurrency_and_goes_round_robin() -> None:
    async def scenario() -> tuple[SleepyTarget, Level]:
        target = SleepyTarget()
        await target.open([Entry("q", ("a",)), Entry("q", ("a", "b")), Entry("q", ("c",))])
        return target, await run_level(target, "tiny", concurrency=2, requests=5, first=1)

    target, level = asyncio.run(scenario())
    assert sorted(target.sent) == [0, 1, 1, 2, 2]
    assert target.most_in_flight == 2
    assert len(level.samples) == 5
    assert sum(s.error is not None for s in level.samples) == 2
    assert summarize(level)["documents_per_s"] > 0


def test_input_data_round_trip_and_shape_per_entry() -> None:
    entries = [Entry("query", ("one", "two", "three")), Entry("другой", ("文档",))]
    data = to_input_data(entries)
    assert data["data"][0]["DOCUMENTS"] == {"content": ["one", "two", "three"], "shape": [3]}
    assert data["data"][1]["QUERY"] == {"content": ["другой"], "shape": [1]}
    assert from_input_data(json.loads(json.dumps(data))) == entries


@pytest.mark.parametrize("bad", [
    {"data": []},
    {"data": [{"QUERY": {"content": ["q"], "shape": [1]}}]},
    {"data": [{"QUERY": {"content": ["q"], "shape": [1]}, "DOCUMENTS": {"content": ["a", "b"], "shape": [3]}}]},
    {"data": [{"QUERY": {"content": ["q"], "shape": [1]}, "DOCUMENTS": {"content": ["a"], "shape": [1]}}],
     "extra": 1},
])
def test_input_data_rejects_what_perf_analyzer_would_misread(bad: dict) -> None:
    with pytest.raises(ValueError, match=r"entry|expected"):
        from_input_data(bad)


@pytest.mark.parametrize("name", sorted(n for n, spec in WORKLOADS.items() if isinstance(spec, WorkloadSpec)))
def test_committed_workloads_have_their_shape(name: str) -> None:
    spec = WORKLOADS[name]
    assert set(json.loads(path_of(name).read_text(encoding="utf-8"))) == {"data"}
    entries = load(name)
    assert len(entries) == spec.entries
    assert all(len(e.documents) == spec.documents for e in entries)
    # Several scripts, not one language: Latin, Cyrillic and CJK text all occur.
    text = "".join(d for e in entries for d in e.documents)
    assert any("а" <= c <= "я" for c in text)
    assert any("\u4e00" <= c <= "\u9fff" for c in text)
    assert len(LOCALES) >= 3


def test_text_of_tokens_stops_at_the_closer_length() -> None:
    sentences = iter(["aaaa", "bb", "cccccc", "d"])

    def tokenize(text: str) -> list[int]:
        return [0] * len(text.replace(" ", ""))

    # 4, then 6, then 12 characters: 6 is closer to 8 than 12 is.
    assert text_of_tokens(8, lambda: next(sentences), " ", tokenize) == "aaaa bb"


@pytest.mark.parametrize("path", [CPU_CONFIG, GPU_CONFIG], ids=lambda p: p.name)
def test_config_parameters_read_as_triton_does(path) -> None:
    """The benches read the configs without protobuf (not on GPU images): the same parameters as Triton's parser."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert config_parameters(path.read_text()) == {key: {"string_value": value.string_value}
                                                   for key, value in parsed.parameters.items()}


def test_bench_serves_the_cpu_config_options(tmp_path) -> None:
    parameters = config_parameters(CPU_CONFIG.read_text())
    config = engine_config(tmp_path / "m.gguf", tmp_path / "p.safetensors")
    assert config.llama.n_ctx == int(parameters["n_ctx"]["string_value"])
    assert config.llama.n_gpu_layers == 0
    assert config.model_path == str(tmp_path / "m.gguf")


def test_csv_and_plot_are_written(tmp_path) -> None:
    levels = [summarize(Level(t, "short", c, 10.0, (Sample(4.0, 10, 900), Sample(5.0, 10, 900))))
              for t in ("triton_grpc", "adapter") for c in (1, 2)]
    write_csv(levels, tmp_path / "levels.csv")
    with (tmp_path / "levels.csv").open() as rows:
        assert [r["latency_p50_ms"] for r in csv.DictReader(rows)] == ["4000.0"] * 4
    plot(levels, tmp_path / "levels.png", "test")
    assert (tmp_path / "levels.png").read_bytes()[:4] == b"\x89PNG"


def test_seed_approach_scores_like_the_engine(tiny_f32) -> None:
    """Baseline (a) computes what the engine computes, several passes included, on the same token ids."""
    model, projector = tiny_f32
    engine = Reranker(EngineConfig.from_options(str(model), str(projector), n_ctx=1024, max_query_tokens=32,
                                                max_doc_tokens=96, kv_cache_type="f32"))
    try:
        docs = [f"passage {i} " + "the relevance of a search result " * (3 + i % 5) for i in range(24)]
        plan = engine.plan(RerankRequest("which passage is relevant?", docs))
        assert len(plan.prompts) > 1
        result = engine.rerank("which passage is relevant?", docs)
        scores, tokens = SeedApproach(str(model), engine.projector, engine.runner.options).rerank(plan.prompts)
    finally:
        engine.close()
    assert tokens == result.tokens
    np.testing.assert_allclose(scores, result.scores, atol=1e-4)


# -- the PyTorch CPU peer's pure parts (torch itself is never imported by the tests) ----------------------

HF_LAYER_NAMES = {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                  "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_norm.weight",
                  "self_attn.k_norm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                  "mlp.up_proj.weight", "mlp.down_proj.weight"}


def test_peer_modules_do_not_import_torch() -> None:
    """CI does not install torch: the bench and the peer's pure parts must import without it."""
    code = ("import sys, perf.load.bench, perf.peers.torch_peer, perf.peers.torch_comparison, perf.peers.qwen3_torch, "
            "perf.gpu.gpu_check, perf.tables; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_gguf_tensors_map_onto_every_qwen3model_parameter(tiny_q8) -> None:
    import gguf

    reader = gguf.GGUFReader(str(tiny_q8[0]))
    metadata = qwen3_torch.gguf_metadata(reader)
    names = {t.name: qwen3_torch.hf_name(t.name) for t in reader.tensors}
    shapes = {names[t.name]: [int(d) for d in reversed(t.shape)] for t in reader.tensors if names[t.name]}
    config = qwen3_torch.qwen3_config(metadata, shapes["embed_tokens.weight"][0])
    n_layer = config["num_hidden_layers"]
    expected = {"embed_tokens.weight", "norm.weight"} | {f"layers.{i}.{name}" for i in range(n_layer)
                                                         for name in HF_LAYER_NAMES}
    assert set(shapes) == expected
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    assert shapes["layers.0.self_attn.q_proj.weight"] == [config["num_attention_heads"] * head_dim, hidden]
    assert shapes["layers.0.self_attn.k_proj.weight"] == [config["num_key_value_heads"] * head_dim, hidden]
    assert shapes["layers.0.mlp.down_proj.weight"] == [hidden, config["intermediate_size"]]
    assert shapes["layers.0.self_attn.q_norm.weight"] == [head_dim]
    assert config["rope_parameters"]["rope_theta"] == pytest.approx(float(metadata["qwen3.rope.freq_base"]))
    assert config["rms_norm_eps"] == pytest.approx(float(metadata["qwen3.attention.layer_norm_rms_epsilon"]))


def test_gguf_names_outside_qwen3model() -> None:
    assert qwen3_torch.hf_name("output.weight") is None  # an untied LM head: the peer computes none
    assert qwen3_torch.hf_name("blk.12.ffn_down.weight") == "layers.12.mlp.down_proj.weight"
    with pytest.raises(KeyError, match="attn_qkv"):
        qwen3_torch.hf_name("blk.0.attn_qkv.weight")
    with pytest.raises(ValueError, match="llama"):
        qwen3_torch.qwen3_config({"general.architecture": "llama"}, 10)


def test_probe_is_fixed_and_ends_on_the_last_token() -> None:
    ids, positions = probe(1024, 151_936)
    assert (ids, positions) == probe(1024, 151_936)
    assert len(ids) == 1024
    assert max(ids) < 150_000
    assert len(positions) == N_OUTPUTS
    assert positions == sorted(positions)
    assert positions[-1] == 1023
    assert positions[0] > 0
    short = probe(5, 100)[1]
    assert short[-1] == 4
    assert short == sorted(set(short))


@pytest.mark.parametrize(("op", "name", "group"), [
    ("MUL_MAT", "kq-3", "attention"), ("MUL_MAT", "kqv-3", "attention"), ("SOFT_MAX", "kq_soft_max-3", "attention"),
    ("FLASH_ATTN_EXT", "__fattn__-3", "attention"), ("MUL_MAT", "ffn_up-3", "matmul"), ("MUL_MAT", "node_71", "matmul"),
    ("MUL_MAT", "Qcur-0", "matmul"), ("MUL_MAT", "result_output", "lm_head"), ("CONT", "kqv_out-3", "other"),
    ("RMS_NORM", "norm-3", "other"), ("SET_ROWS", "cache_v_l3", "other"),
])
def test_ggml_nodes_are_grouped(op: str, name: str, group: str) -> None:
    assert torch_comparison.ggml_group(op, name) == group


def test_torch_ops_are_grouped() -> None:
    assert torch_comparison.torch_group("aten::mm") == "matmul"
    assert torch_comparison.torch_group("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert torch_comparison.torch_group("aten::_softmax") == "attention"
    assert torch_comparison.torch_group("aten::mul") == "other"


def test_profile_summary_and_ratios() -> None:
    by_group = torch_comparison.group_times([("matmul", 3.0), ("attention", 1.0), ("matmul", 1.0)])
    assert by_group == {"matmul": 4.0, "attention": 1.0, "lm_head": 0.0, "other": 0.0}
    summary = torch_comparison.profile_summary(by_group, {"a": 1.0, "b": 4.0}, 5.2, top=1)
    assert summary["shares"] == {"matmul": 0.8, "attention": 0.2, "lm_head": 0.0, "other": 0.0}
    assert summary["top_ops"] == [["b", 4.0]]
    assert tokens_per_s(1000, [4.0, 6.0]) == 200.0
    lengths = {"1024": {"engine": {"tokens_per_s": 150.0}, "torch_bf16": {"tokens_per_s": 300.0},
                        "torch_fp32": {"tokens_per_s": 120.0}}}
    assert torch_comparison.length_ratios(lengths) == {"engine_vs_torch_bf16": {"1024": 0.5},
                                                       "engine_vs_torch_fp32": {"1024": 1.25}}
    amx = {"amx_vs_avx512": {"1024": 1.9}}
    assert cpu_ratios({"ratios": torch_comparison.length_ratios(lengths)}, amx) == {
        "engine_vs_torch_bf16": 0.5, "amx_vs_avx512": 1.9}
    assert cpu_ratios({"skipped": "no torch"}, {"skipped": "no AMX"}) == {"engine_vs_torch_bf16": None,
                                                                          "amx_vs_avx512": None}
    assert int(PEER_LENGTH) in LENGTHS["quick"]


def test_peer_tables_render(tmp_path) -> None:
    side = {"wall_s": 2.0, "seconds": {"matmul": 1.5, "attention": 0.5, "lm_head": 0.0, "other": 0.0},
            "shares": {"matmul": 0.75, "attention": 0.25, "lm_head": 0.0, "other": 0.0}, "top_ops": []}
    cos = {"min": 0.999, "mean": 0.9995}
    peer = {"lengths": {"1024": {"engine": {"tokens_per_s": 150.0}, "torch_bf16": {"tokens_per_s": 300.0},
                                 "torch_fp32": {"tokens_per_s": 120.0},
                                 "cosine_vs_engine": {"torch_bf16": cos, "torch_fp32": cos},
                                 "profile": {"engine": side, "torch_bf16": side}}},
            "knobs": {"configured": {"tokens_per_s": {"1024": 150.0}, "vs_configured": {"1024": 1.0},
                                     "cosine_vs_torch_fp32": {"1024": 0.9996}},
                      "BF16 GGUF": {"tokens_per_s": {"1024": 180.0}, "vs_configured": {"1024": 1.2},
                                    "cosine_vs_torch_fp32": {}}}}
    peer["ratios"] = torch_comparison.length_ratios(peer["lengths"])
    text = tables.peer_table(peer)
    assert "| 1024 | 150.0 | 300.0 | 120.0 | 0.50 | 1.25 | 0.9990 / 0.9990 |" in text
    assert "| 1024 | engine | 2.00 s | 1.50 s (75%) | 0.50 s (25%) | - | - |" in text
    assert "| BF16 GGUF | 180.0 | 1.20 | - (other random weights) |" in text
    assert "tokens/s at 1k" in text
    assert tables.peer_table({"skipped": "no torch"}) == "PyTorch peer not measured: no torch"
    results = json.loads((ROOT / "perf" / "results" / "cpu-latest.json").read_text())
    if "cpu_peer" in results:  # the committed results render, peer table included
        assert "engine / torch bf16" in tables.bench_table(results)


def test_engine_profile_times_every_node_and_groups_them(tiny_q8) -> None:
    """The llama.cpp side of the peer's profile: every graph node timed (the runner's on_node) and grouped."""
    options = EngineConfig.from_options(str(tiny_q8[0]), str(tiny_q8[1]), n_ctx=512).llama
    ids, positions = probe(200, 256)  # the byte tokens: clear of the template tokens at the end
    by_group, by_op, wall = torch_comparison.engine_profile(tiny_q8[0], options, ids, positions)
    assert set(by_group) == set(PROFILE_GROUPS)
    assert by_group["matmul"] > 0
    assert by_group["attention"] > 0
    assert sum(by_group.values()) == pytest.approx(sum(by_op.values()))
    assert sum(by_group.values()) <= wall
    assert any(op.startswith("MUL_MAT kq") for op in by_op)


def test_node_times_drop_layer_numbers() -> None:
    nodes = [("MUL_MAT", "ffn_up-0", 1.0), ("MUL_MAT", "ffn_up-1", 2.0), ("SOFT_MAX", "kq_soft_max-0", 0.5),
             ("MUL_MAT", "result_output", 0.25)]
    by_group, by_op = torch_comparison.node_times(nodes)
    assert by_group == {"matmul": 3.0, "attention": 0.5, "lm_head": 0.25, "other": 0.0}
    assert by_op == {"MUL_MAT ffn_up": 3.0, "SOFT_MAX kq_soft_max": 0.5, "MUL_MAT result_output": 0.25}

