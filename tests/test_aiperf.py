"""AIPerf's inputs: the custom dataset files (written from the perf_analyzer files, kept from drifting) and the
tokenizer folder made from a GGUF vocabulary; the AIPerf-vs-loadgen comparison. AIPerf itself runs only in
`make bench-aiperf` (its own virtualenv), never here."""

from __future__ import annotations

import json

import pytest

from models.generate_test_model import CHAT_TOKENS, EMBED_TOKEN, PRESETS, build_vocab
from perf.aiperf import aiperf_dataset
from perf.aiperf.aiperf_bench import aiperf_command, combine_aiperf, compare, cpu_between, requests_at
from perf.aiperf.aiperf_tokenizer import CONTROL, tokenizer_json, write_tokenizer
from perf.load.loadgen import LIBRECHAT_TOP_N
from perf.load.workloads import WORKLOADS, Entry, load

pytestmark = pytest.mark.unit

ENTRIES = [Entry("what is a reranker?", ("A reranker orders passages.", "Bananas are yellow.", "ранжирование")),
           Entry("其他查询", ("文档",))]


def test_adapter_dataset_is_one_rankings_request_per_entry() -> None:
    lines = aiperf_dataset.adapter_dumps(ENTRIES).splitlines()
    assert len(lines) == len(ENTRIES)
    records = [json.loads(line) for line in lines]
    for record, entry in zip(records, ENTRIES, strict=True):
        texts = {t["name"]: t["contents"] for t in record["texts"]}
        assert texts == {"query": [entry.query], "passages": list(entry.documents)}
        # LibreChat's body: AIPerf's rankings endpoints add "extra" to {"model", "query", "documents"}.
        assert record["extra"] == {"top_n": LIBRECHAT_TOP_N, "return_documents": True}
    assert "ранжирование" in lines[0]  # UTF-8 as is, like the perf_analyzer files


def test_triton_dataset_is_one_kserve_request_per_entry() -> None:
    data = json.loads(aiperf_dataset.triton_dumps("tiny", ENTRIES))["data"]
    assert [s["session_id"] for s in data] == ["tiny-0", "tiny-1"]
    for session, entry in zip(data, ENTRIES, strict=True):
        (request,) = session["payloads"]
        query, documents = request["inputs"]
        assert (query["name"], query["shape"], query["datatype"], query["data"]) == (
            "QUERY", [1, 1], "BYTES", [entry.query])
        assert (documents["name"], documents["shape"], documents["data"]) == (
            "DOCUMENTS", [1, len(entry.documents)], list(entry.documents))
        assert request["outputs"] == [{"name": "SCORES"}, {"name": "TOKENS"}]


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_committed_aiperf_datasets_match_the_perf_analyzer_files(name: str) -> None:
    assert aiperf_dataset.differing(name, load(name)) == []
    lines = aiperf_dataset.adapter_path(name).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["texts"][0]["contents"][0] for line in lines] == [e.query for e in load(name)]


def test_drift_check_fails_until_the_files_are_written(tmp_path) -> None:
    workloads = tmp_path / "workloads"
    workloads.mkdir()
    (workloads / "short.json").write_text(json.dumps({"data": [
        {"QUERY": {"content": [e.query], "shape": [1]},
         "DOCUMENTS": {"content": list(e.documents), "shape": [len(e.documents)]}} for e in ENTRIES]}))
    out = tmp_path / "aiperf"
    both = [aiperf_dataset.adapter_path("short", out), aiperf_dataset.triton_path("short", out)]
    assert aiperf_dataset.sync(["short"], True, workloads, out) == both
    assert aiperf_dataset.sync(["short"], False, workloads, out) == []
    assert aiperf_dataset.sync(["short"], True, workloads, out) == []
    both[1].write_text(both[1].read_text().replace("其他查询", "changed"))
    assert aiperf_dataset.sync(["short"], True, workloads, out) == [both[1]]
    assert aiperf_dataset.differing("short", ENTRIES, out) == [both[1]]


def test_tokenizer_keeps_the_gguf_ids_merges_and_control_tokens(tmp_path) -> None:
    spec = PRESETS["tiny"]
    tokens, types, merges = build_vocab(spec)
    content = tokenizer_json(tokens, types, merges)
    model = content["model"]
    assert model["type"] == "BPE"
    assert model["vocab"] == {t: i for i, t in enumerate(tokens)}
    assert model["merges"] == merges
    added = {a["content"]: a for a in content["added_tokens"]}
    for name in CHAT_TOKENS:
        assert added[name]["id"] == tokens.index(name)
        assert added[name]["special"] is (types[tokens.index(name)] == CONTROL)
    assert EMBED_TOKEN in added
    folder = write_tokenizer(tokens, types, merges, spec.context_length, tmp_path / "tok")
    assert json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")) == content
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_max_length"] == spec.context_length
    with pytest.raises(ValueError, match="repeated"):
        tokenizer_json([*tokens, tokens[0]], [*types, 1], merges)


def test_aiperf_commands_name_the_right_endpoint_and_dataset(tmp_path) -> None:
    adapter = aiperf_command("adapter", "http://127.0.0.1:8080", tmp_path / "short.jsonl", 5, 10, tmp_path / "a",
                             tmp_path / "tok", api_key="k")
    triton = aiperf_command("triton", "http://127.0.0.1:8000", tmp_path / "short-triton.json", 1, 4, tmp_path / "t",
                            tmp_path / "tok")

    def option(command: list[str], name: str) -> str:
        return command[command.index(name) + 1]

    assert [option(adapter, o) for o in ("--endpoint-type", "--endpoint", "--custom-dataset-type", "--api-key")] == [
        "cohere-rankings", "/v1/rerank", "single_turn", "k"]
    assert [option(triton, o) for o in ("--endpoint-type", "--endpoint", "--custom-dataset-type")] == [
        "raw", "/v2/models/jina_reranker_v3/infer", "inputs_json"]
    assert (option(adapter, "--concurrency"), option(adapter, "--request-count")) == ("5", "10")
    assert option(triton, "--tokenizer") == str(tmp_path / "tok")
    assert "--api-key" not in triton


def test_aiperf_runs_combine_like_loadgen_levels() -> None:
    runs = [{"requests": 2, "errors": 0, "wall_s": 10.0, "latencies_ms": [4000.0, 6000.0], "client_cpu_s": 3.0,
             "own": {"requests_per_s": 0.2, "latency_p50_ms": 5000.0, "latency_p99_ms": 5980.0}},
            {"requests": 2, "errors": 1, "wall_s": 15.0, "latencies_ms": [5000.0, 9000.0], "client_cpu_s": 2.5,
             "own": {"requests_per_s": 0.133, "latency_p50_ms": 7000.0, "latency_p99_ms": 8960.0}}]
    combined = combine_aiperf(runs)
    assert (combined["requests"], combined["errors"], combined["wall_s"]) == (4, 1, 25.0)
    assert combined["requests_per_s"] == 0.16
    assert combined["latency_ms"] == {"p50": 5000.0, "p99": 9000.0}  # nearest rank over all four
    assert combined["client_cpu_s"] == 5.5
    assert [r["latency_p50_ms"] for r in combined["runs"]] == [5000.0, 7000.0]


def test_cpu_inside_a_window_is_interpolated_from_samples() -> None:
    samples = [(100.0, 5.0), (101.0, 5.5), (102.0, 7.5)]
    assert cpu_between(samples, 100.5, 101.5) == pytest.approx(6.5 - 5.25)
    assert cpu_between(samples, 100.0, 102.0) == pytest.approx(2.5)
    assert cpu_between(samples, 99.0, 101.0) is None  # before the first sample: unknown, not zero


def test_comparison_ratios_and_the_agreement_bar() -> None:
    aiperf = {"requests_per_s": 0.19, "latency_ms": {"p50": 5200.0, "p99": 6000.0}}
    loadgen = {"requests_per_s": 0.2, "latency_ms": {"p50": 5000.0, "p99": 5000.0}}
    result = compare(aiperf, loadgen)
    assert result["ratios"] == {"requests_per_s": 0.95, "latency_p50": 1.04, "latency_p99": 1.2}
    assert result["throughput_agrees"]
    assert not compare(aiperf | {"requests_per_s": 0.17}, loadgen)["throughput_agrees"]
    assert not compare(aiperf, loadgen | {"requests_per_s": 0.0})["throughput_agrees"]
    assert [requests_at(c) for c in (1, 2, 5)] == [4, 4, 10]
