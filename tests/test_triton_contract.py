"""The tensor contract's pure functions, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import triton_contract as contract

from rerank_engine import InvalidInputError, RerankRequest, RerankResult

pytestmark = pytest.mark.unit


def text(*rows: list[bytes]) -> np.ndarray:
    return np.array(rows, dtype=np.object_)


def test_rows_one_request_per_batch_row():
    rows = contract.rows(text([b"q1"], [b"q2"]), text([b"a", b"b"], [b"c", b"d"]), text([b"be brief"], [b""]), True)
    assert rows == [RerankRequest("q1", ["a", "b"], "be brief", True), RerankRequest("q2", ["c", "d"], None, True)]


@pytest.mark.parametrize(("query", "docs", "instruction", "message"), [
    (text([b"q"]), np.empty((1, 0), dtype=np.object_), None, "DOCUMENTS is empty"),
    (text([b"q"]), text([b"ok", b"\xff"]), None, r"DOCUMENTS\[1\] is not valid UTF-8"),
    (text([b"\xc3"]), text([b"ok"]), None, r"QUERY\[0\] is not valid UTF-8"),
    (text([b"q", b"r"]), text([b"ok"]), None, r"QUERY must have shape \[batch, 1\]"),
    (text([b"q"]), text([b"a"], [b"b"]), None, "DOCUMENTS must have shape"),
    (text([b"q"]), text([b"a"]), text([b"x"], [b"y"]), "INSTRUCTION must have shape"),
    (text([b"q"]), np.array([[1, 2]], dtype=np.object_), None, r"DOCUMENTS\[0\] is not text"),
])
def test_rows_reject_malformed_tensors(query, docs, instruction, message):
    with pytest.raises(InvalidInputError, match=message):
        contract.rows(query, docs, instruction, False)


def result(scores: list[float], tokens: int) -> RerankResult:
    values = np.array(scores, dtype=np.float32)
    return RerankResult(values, tokens, np.ones((len(scores), 4), dtype=np.float32))


def test_outputs_shapes_and_types():
    tensors = contract.outputs([result([0.1, 0.2], 7), result([0.3, 0.4], 9)], return_embeddings=True)
    assert tensors["SCORES"].shape == (2, 2)
    assert tensors["SCORES"].dtype == np.float32
    np.testing.assert_array_equal(tensors["TOKENS"], [[7], [9]])
    assert tensors["TOKENS"].dtype == np.int64
    assert tensors["DOC_EMBEDDINGS"].shape == (2, 2, 4)
    assert "DOC_EMBEDDINGS" not in contract.outputs([result([0.1], 1)], return_embeddings=False)


def test_batch_completes_each_request_when_its_rows_are_back():
    batch = contract.Batch()
    batch.add(0, [RerankRequest("a", ["x"]), RerankRequest("b", ["y"])], False)
    batch.add(2, [RerankRequest("c", ["z"])], True)
    assert len(batch.rows) == 3
    assert batch.complete(2, result([0.5], 3))[0] == 2  # request 2 first: responses go out as ready
    assert batch.complete(1, result([0.2], 2)) is None
    index, tensors = batch.complete(0, result([0.1], 1))
    assert index == 0
    np.testing.assert_array_equal(tensors["SCORES"], np.array([[0.1], [0.2]], dtype=np.float32))  # input order
    assert batch.pending() == []


def test_batch_error_in_one_row_fails_only_its_request():
    batch = contract.Batch()
    batch.add(0, [RerankRequest("a", ["x"]), RerankRequest("", ["y"])], False)
    batch.add(1, [RerankRequest("c", ["z"])], False)
    index, error = batch.complete(1, InvalidInputError("query is empty"))
    assert index == 0
    assert isinstance(error, InvalidInputError)
    assert batch.complete(0, result([0.1], 1)) is None  # already answered
    assert batch.pending() == [1]
    assert batch.complete(2, result([0.3], 1))[0] == 1


def params(**values: str) -> dict[str, dict[str, str]]:
    return {k: {"string_value": v} for k, v in values.items()}


def test_engine_config_from_parameters():
    config = contract.engine_config(params(model_path="/m.gguf", projector_path="/p.st", n_ctx="4096",
                                           flash_attn="true", share_decodes="off", kv_cache_type="f32",
                                           max_doc_tokens="1024", n_gpu_layers="-1"), "KIND_GPU", 3, {})
    assert (config.model_path, config.projector_path) == ("/m.gguf", "/p.st")
    assert config.llama.n_ctx == 4096
    assert config.llama.flash_attn is True
    assert config.llama.share_decodes is False
    assert config.llama.kv_cache_type == "f32"
    assert config.max_doc_tokens == 1024
    assert config.llama.main_gpu == 3
    assert config.llama.n_gpu_layers == -1


def test_engine_config_cpu_instance_and_environment_override():
    config = contract.engine_config(params(model_path="/m.gguf", projector_path="/p.st", n_gpu_layers="-1"),
                                    "KIND_CPU", 0, {"RERANKER_MODEL": "/env.gguf", "RERANKER_PROJECTOR": "/env.st"})
    assert (config.model_path, config.projector_path) == ("/env.gguf", "/env.st")
    assert config.llama.n_gpu_layers == 0


@pytest.mark.parametrize(("values", "error"), [
    ({"n_ctxx": "1"}, "unknown model parameters: n_ctxx"),
    ({"flash_attn": "maybe"}, "not a boolean"),
    ({"n_ctx": "big"}, "invalid literal"),
])
def test_engine_config_rejects_bad_parameters(values, error):
    with pytest.raises(ValueError, match=error):
        contract.engine_config(params(**values), "KIND_CPU", 0, {})


def test_outputs_say_which_documents_the_model_scored():
    partial = RerankResult(np.array([0.5, -0.9], dtype=np.float32), 5, scored=np.array([True, False]))
    tensors = contract.outputs([partial, result([0.1, 0.2], 3)], return_embeddings=False)
    np.testing.assert_array_equal(tensors["SCORED"], [[True, False], [True, True]])
    assert tensors["SCORED"].dtype == np.bool_


NOW, NOW_UNIX = 1000.0, 1_700_000_000.0


@pytest.mark.parametrize(("parameters", "timeout_us", "expected"), [
    ("", 0, contract.Budget(None, 1)),  # no deadline at all: score everything
    ("{}", 2_000_000, contract.Budget(NOW + 2.0, 1)),  # the request's timeout counts from now
    ('{"deadline_unix_ms": 1700000003000, "top_n": 5}', 0, contract.Budget(NOW + 3.0, 5)),
    ('{"deadline_unix_ms": 1700000003000}', 1_000_000, contract.Budget(NOW + 1.0, 1)),  # the earlier one
    ('{"rerank_mode": "exact", "deadline_unix_ms": 1700000003000}', 1_000_000, contract.Budget(None, 1)),
    ('{"rerank_mode": "budgeted", "top_n": 3}', 0, contract.Budget(None, 3)),
    ('{"max_tokens_per_doc": 64}', 0, contract.Budget(None, 1, 64)),
    ('{"rerank_mode": "exact", "max_tokens_per_doc": 8}', 0, contract.Budget(None, 1, 8)),
])
def test_budget_from_parameters_and_timeout(parameters, timeout_us, expected):
    budget = contract.budget(parameters, timeout_us, NOW, NOW_UNIX)
    assert budget.min_scored == expected.min_scored
    assert budget.max_doc_tokens == expected.max_doc_tokens
    assert budget.deadline == (None if expected.deadline is None else pytest.approx(expected.deadline))


@pytest.mark.parametrize(("parameters", "message"), [
    ('{"rerank_mode": "fast"}', "rerank_mode must be one of budgeted, exact"),
    ('{"top_n": 0}', "top_n must be a positive integer"),
    ('{"top_n": "5"}', "top_n must be a positive integer"),
    ('{"top_n": true}', "top_n must be a positive integer"),
    ('{"deadline_unix_ms": "soon"}', "deadline_unix_ms must be a number"),
    ('{"max_tokens_per_doc": 0}', "max_tokens_per_doc must be a positive integer"),
    ('{"max_tokens_per_doc": 1.5}', "max_tokens_per_doc must be a positive integer"),
    ("{not json", "not valid JSON"),
])
def test_budget_rejects_bad_parameters(parameters, message):
    with pytest.raises(InvalidInputError, match=message):
        contract.budget(parameters, 0, NOW, NOW_UNIX)


def test_rows_carry_the_budget():
    [row] = contract.rows(text([b"q"]), text([b"a"]), None, False, contract.Budget(12.5, 4, 32))
    assert (row.deadline, row.min_scored, row.max_doc_tokens) == (12.5, 4, 32)
