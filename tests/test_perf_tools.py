"""The benchmark tooling's pure parts: statistics, the load generator's loop, the workload files, the plot."""

from __future__ import annotations

import asyncio
import csv
import json

import numpy as np
import pytest

from perf.bench import cpu_parameters, engine_config, ratios
from perf.loadgen import Level, Sample, Target, format_line, percentile, plot, run_level, summarize, write_csv
from perf.seed_approach import SeedApproach
from perf.workloads import LOCALES, WORKLOADS, Entry, from_input_data, load, path_of, text_of_tokens, to_input_data
from rerank_engine import EngineConfig, Reranker, RerankRequest


def test_percentile_is_nearest_rank() -> None:
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert [percentile(values, q) for q in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3], 50) == 2
    assert percentile([], 50) is None


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


@pytest.mark.parametrize("name", sorted(WORKLOADS))
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


def test_bench_serves_the_cpu_config_options(tmp_path) -> None:
    parameters = cpu_parameters()
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
