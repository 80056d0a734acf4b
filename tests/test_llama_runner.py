"""How the runner has llama.cpp load a model (rerank_engine.llama_runner.load_mode), and what it has it compute."""

from __future__ import annotations

import shutil
from pathlib import Path

import llama_cpp
import pytest

from rerank_engine import llama_runner
from rerank_engine.config import RunnerOptions
from rerank_engine.llama_runner import LlamaRunner, load_mode

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("options", "mode"), [
    (RunnerOptions(), llama_cpp.LLAMA_LOAD_MODE_NONE),
    (RunnerOptions(extra_buffers=False), llama_cpp.LLAMA_LOAD_MODE_AUTO),
    (RunnerOptions(n_gpu_layers=-1), llama_cpp.LLAMA_LOAD_MODE_AUTO),
])
def test_the_file_is_read_only_where_the_weights_are_copied(options, mode) -> None:
    assert load_mode(options) == mode


@pytest.mark.parametrize(("extra_buffers", "mapped"), [(True, False), (False, True)])
def test_a_repacked_model_leaves_no_mapping_of_its_file(tiny_q8, tmp_path, extra_buffers, mapped) -> None:
    model = tmp_path / "model.gguf"  # a path of its own: no other runner in this process maps it
    shutil.copyfile(tiny_q8[0], model)
    runner = LlamaRunner(str(model), RunnerOptions(n_ctx=512, extra_buffers=extra_buffers))
    try:
        runner.start()
        assert (str(model) in Path("/proc/self/maps").read_text()) == mapped
        assert runner.hidden_states([[10, 11, 12]], [[2]])[0].shape == (1, runner.n_embd)
    finally:
        runner.close()


class _AskedNodes(LlamaRunner):
    """The runner as the engine uses it (no observer), recording the scheduler's eval callbacks: (name, ask)."""

    def __init__(self, model_path: str, options: RunnerOptions) -> None:
        self.calls: list[tuple[bytes, bool]] = []
        super().__init__(model_path, options)

    def _observe(self, tensor: int, ask: bool, user_data: int) -> bool:
        self.calls.append((llama_runner._ggml_base.ggml_get_name(tensor), ask))
        return super()._observe(tensor, ask, user_data)


def test_a_pass_stops_at_the_hidden_states_before_the_lm_head(tiny_q8) -> None:
    runner = _AskedNodes(str(tiny_q8[0]), RunnerOptions(n_ctx=512))
    try:
        runner.start()
        (hidden,) = runner.hidden_states([list(range(10, 60))], [[20, 49]])
    finally:
        runner.close()
    assert hidden.shape == (2, runner.n_embd)
    names = [name for name, _ in runner.calls]
    # the scheduler asked about every node up to result_norm, took its rows, and computed nothing after it:
    # with the graph going on it would also have asked about the LM head (result_output)
    assert runner.calls[-1] == (llama_runner.HIDDEN_STATE_TENSOR, False)
    assert b"result_output" not in names
