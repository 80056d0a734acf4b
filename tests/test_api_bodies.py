"""The rerank API's bodies (adapter/schemas.py) and ranking (adapter/ranking.py) as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from adapter.ranking import rank
from adapter.schemas import RerankBody, TextDocument

pytestmark = pytest.mark.unit


def test_rank_is_best_first_with_ties_by_index():
    results = rank([0.1, 0.9, 0.5, 0.9], ["a", "b", "c", "d"], None, True)
    assert [(r.index, r.relevance_score, r.document) for r in results] == [
        (1, pytest.approx(0.9), "b"), (3, pytest.approx(0.9), "d"), (2, 0.5, "c"), (0, pytest.approx(0.1), "a")]


def test_rank_cuts_at_top_n_and_can_leave_documents_out():
    doc = TextDocument(text="t", id="kept")
    results = rank([0.2, 0.3, 0.1], ["a", doc, "c"], 2, False)
    assert [r.index for r in results] == [1, 0]
    assert all(r.document is None for r in results)
    assert rank([0.2, 0.3, 0.1], ["a", doc, "c"], 50, True)[0].document is doc


@given(st.lists(st.floats(-1, 1), min_size=1, max_size=40), st.integers(1, 50))
def test_rank_is_a_sorted_prefix_of_a_permutation(scores, top_n):
    results = rank(scores, [str(i) for i in range(len(scores))], top_n, True)
    assert len(results) == min(top_n, len(scores))
    assert len({r.index for r in results}) == len(results)
    assert [r.relevance_score for r in results] == sorted((r.relevance_score for r in results), reverse=True)
    assert all(r.document == str(r.index) for r in results)


def test_body_texts_from_strings_and_objects_other_keys_kept():
    body = RerankBody.model_validate({"query": "q", "documents": ["a", {"text": "b", "id": 7}], "batch_size": 32,
                                      "model": "jina-reranker-v2-base-multilingual", "unknown": True})
    assert body.texts() == ["a", "b"]
    assert body.documents[1].model_dump() == {"text": "b", "id": 7}
    assert body.return_documents is True
    assert body.top_n is None


@pytest.mark.parametrize(("fields", "where"), [
    ({"query": " \t"}, "query"),
    ({"query": "\ud800"}, "query"),
    ({"documents": ["ok", "\udfff"]}, "documents"),
    ({"documents": [{"text": "\ud800"}]}, "documents"),
    ({"instruction": "\ud800"}, "instruction"),
    ({"documents": []}, "documents"),
    ({"documents": [1]}, "documents"),
    ({"top_n": 0}, "top_n"),
])
def test_body_rejects_with_the_field_named(fields, where):
    with pytest.raises(ValidationError) as info:
        RerankBody.model_validate({"query": "q", "documents": ["a"], **fields})
    assert {error["loc"][0] for error in info.value.errors()} == {where}
