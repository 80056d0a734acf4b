"""The runner's public hooks for the benchmarks (perf/): the per-node observer and the model handle."""

from __future__ import annotations

import time

import llama_cpp
import numpy as np
import pytest

from rerank_engine import EngineConfig
from rerank_engine.llama_runner import LlamaRunner

pytestmark = pytest.mark.integration


@pytest.fixture
def options(tiny_q8):
    return EngineConfig.from_options(str(tiny_q8[0]), str(tiny_q8[1]), n_ctx=512).llama


def test_every_node_is_reported_and_the_hidden_states_do_not_change(tiny_q8, options) -> None:
    nodes: list[tuple[str, str, float]] = []
    plain = LlamaRunner(str(tiny_q8[0]), options)
    observed = LlamaRunner(str(tiny_q8[0]), options, on_node=lambda *node: nodes.append(node))
    ids = [i % (plain.n_vocab - 8) for i in range(1000, 1200)]  # clear of the template tokens at the end
    positions = [0, 57, 120, 199]
    try:
        plain.start()
        observed.start()
        (expected,) = plain.hidden_states([ids], [positions])
        started = time.perf_counter()
        (hidden,) = observed.hidden_states([ids], [positions])
        wall = time.perf_counter() - started
        first_pass = len(nodes)
        observed.hidden_states([ids], [positions])
    finally:
        plain.close()
        observed.close()
    np.testing.assert_array_equal(hidden, expected)
    assert len(nodes) == 2 * first_pass  # each pass reports its own nodes
    ops = {op for op, _, _ in nodes[:first_pass]}
    names = [name for _, name, _ in nodes[:first_pass]]
    assert {"MUL_MAT", "RMS_NORM", "GET_ROWS"} <= ops
    assert names.count("result_norm") == 1
    assert names[-1] == "result_norm"  # the graph stops there: the LM head (result_output) is never computed
    assert any(name.startswith("ffn_up-") for name in names)
    seconds = [s for _, _, s in nodes[:first_pass]]
    assert min(seconds) >= 0
    assert sum(seconds) <= wall


def test_the_model_handle_is_the_runners_until_it_closes(tiny_q8, options) -> None:
    runner = LlamaRunner(str(tiny_q8[0]), options)
    try:
        assert llama_cpp.llama_model_n_embd(runner.model) == runner.n_embd
        with pytest.raises(AttributeError):
            runner.model = None  # read-only: the runner frees it
    finally:
        runner.close()
    assert runner.model is None
