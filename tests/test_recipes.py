"""Which release's recipe a GGUF's metadata selects (pure; no llama.cpp)."""

from __future__ import annotations

import pytest

from rerank_engine import EngineConfig
from rerank_engine.recipes import V3, V3_5, RecipeError, select

pytestmark = pytest.mark.unit


def test_a_window_llama_cpp_runs_selects_v35_whatever_the_name():
    assert select("jina-reranker-v3.5", 1024, 1024) == V3_5
    assert select("some conversion", 1024, 1024) == V3_5
    assert select(None, 16, 16) == V3_5


def test_files_without_a_window_are_v3():
    assert select("jina-reranker-v3", 0, 0) == V3
    assert select(None, 0, 0) == V3


def test_a_declared_window_llama_cpp_does_not_run_is_refused():
    """No pattern in the file, or a llama.cpp without the patch: every layer would attend globally."""
    with pytest.raises(RecipeError, match=r"llama\.cpp runs every layer globally"):
        select("jina-reranker-v3.5", 1024, 0)
    with pytest.raises(RecipeError, match=r"llama-qwen3-sliding-window\.patch"):
        select("anything", 12, 0)


def test_a_v35_name_without_a_window_is_refused():
    with pytest.raises(RecipeError, match="sliding-window keys"):
        select("Jina-Reranker-V3.5 GGUF", 0, 0)


def test_recipes_differ_in_prompt_and_limits_only():
    assert not V3.opening_query_marker
    assert V3_5.opening_query_marker
    assert (V3.max_query_tokens, V3.max_doc_tokens) == (512, 2048)
    assert (V3_5.max_query_tokens, V3_5.max_doc_tokens) == (2048, 8192)
    assert V3.max_docs_per_block == V3_5.max_docs_per_block == 125


def test_configured_limits_win_over_the_recipe():
    config = EngineConfig.from_options("m.gguf", "p.safetensors", max_doc_tokens=1024)
    resolved = config.with_recipe(V3_5)
    assert resolved.max_doc_tokens == 1024
    assert resolved.max_query_tokens == 2048
    assert resolved.max_docs_per_block == 125
    assert config.with_recipe(V3).max_query_tokens == 512
