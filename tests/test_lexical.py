"""The lexical first stage: terms in every script, and BM25 order."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.lexical import bm25_scores, lexical_order, terms

pytestmark = pytest.mark.unit


def test_terms_fold_case_and_width() -> None:
    assert terms("Ｔｒｉｔｏｎ Server, TRITON!") == ["triton", "server", "triton"]


def test_unspaced_scripts_become_character_pairs() -> None:
    assert terms("東京都") == ["東京", "京都"]
    assert terms("ภาษาไทย")[:2] == ["ภา", "าษ"]
    assert terms("GPU上で動く") == ["gpu", "上で", "で動", "動く"]
    assert terms("中") == ["中"]


def test_bm25_prefers_documents_sharing_rare_query_terms() -> None:
    docs = ["bananas are yellow", "the reranker orders passages", "a reranker is a model that orders passages",
            "nothing here"]
    scores = bm25_scores("what does a reranker do", docs)
    assert scores.shape == (4,)
    assert scores.dtype == np.float32
    assert scores[1] > 0
    assert scores[2] > 0
    assert scores[0] == 0
    assert scores[3] == 0


def test_bm25_works_for_chinese_without_spaces() -> None:
    docs = ["今天天气很好", "东京是日本的首都", "北京是中国的首都"]
    assert lexical_order("中国的首都是哪里", docs)[0] == 2


def test_no_shared_term_keeps_page_order() -> None:
    assert lexical_order("zzz", ["b", "a", "c"]) == [0, 1, 2]
    assert lexical_order("!!!", ["", "a"]) == [0, 1]
