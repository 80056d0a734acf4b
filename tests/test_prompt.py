"""Pure functions: prompt assembly, block planning and the merge rule (no llama.cpp)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import numpy_reference as ref
from rerank_engine.prompt import EMBED_TOKEN, IM_END, IM_START, RERANK_TOKEN, build_block, plan_blocks, template_tokens
from rerank_engine.scoring import cosine, merged_query

pytestmark = pytest.mark.unit

IDS = {IM_START: 1000, IM_END: 1001, EMBED_TOKEN: 1002, RERANK_TOKEN: 1003}


def char_tokenize(text: str) -> list[int]:
    """One token per byte: makes every boundary visible."""
    return list(text.encode())


def detokenize(ids: list[int]) -> str:
    specials = {v: k for k, v in IDS.items()}
    return "".join(specials[i] if i in specials else chr(i) for i in ids)


def test_block_text_is_the_reference_prompt_up_to_the_query_marker():
    block = build_block("q?", ["doc A", "doc B"], None, char_tokenize, IDS)
    expected = "".join(p if isinstance(p, str) else p.name for p in ref.prompt_pieces("q?", ["doc A", "doc B"], None))
    assert detokenize(block.ids) == expected
    assert expected.endswith("<query>\nq?<|rerank_token|>")
    assert "I will provide you with 2 passages" in expected
    assert '<passage id="1">\ndoc B<|embed_token|>' in expected


def test_positions_point_at_the_markers():
    block = build_block("q", ["a", "", "c"], "be strict", char_tokenize, IDS)
    assert [block.ids[p] for p in block.doc_positions] == [IDS[EMBED_TOKEN]] * 3
    assert block.ids[block.query_position] == IDS[RERANK_TOKEN]
    assert block.query_position == len(block.ids) - 1
    assert block.output_positions == [*block.doc_positions, block.query_position]
    assert "<instruct>\nbe strict\n</instruct>\n<passage" in detokenize(block.ids)


def test_text_stretches_are_tokenised_whole():
    """Template text and user text between two special tokens go to the tokenizer as one string."""
    calls: list[str] = []

    def spy(text: str) -> list[int]:
        calls.append(text)
        return char_tokenize(text)

    build_block("the query", ["first", "second"], None, spy, IDS)
    assert calls[-3].endswith('<passage id="0">\nfirst')
    assert calls[-3].startswith("user\nI will provide you with 2 passages")
    assert calls[-2] == '\n</passage>\n<passage id="1">\nsecond'
    assert calls[-1] == "\n</passage>\n<query>\nthe query"


@pytest.mark.parametrize(("lengths", "capacity", "max_item", "max_docs", "expected"), [
    ([10] * 5, 1000, 100, 125, [[0, 1, 2, 3, 4]]),
    ([10] * 5, 1000, 100, 2, [[0, 1], [2, 3], [4]]),
    ([300, 300, 300, 300], 1000, 400, 125, [[0, 1], [2, 3]]),  # remaining 400 <= max item: close
    ([399, 1, 1], 1000, 600, 125, [[0, 1], [2]]),
])
def test_plan_blocks(lengths, capacity, max_item, max_docs, expected):
    assert plan_blocks(lengths, capacity, max_item, max_docs) == expected


def test_plan_blocks_rejects_a_capacity_that_cannot_hold_one_document():
    with pytest.raises(ValueError, match="capacity"):
        plan_blocks([1], 100, 100, 125)


@given(st.lists(st.integers(1, 400), min_size=1, max_size=400), st.integers(1, 130))
def test_plan_blocks_keeps_order_and_fits(lengths, max_docs):
    capacity, max_item = 2000, 400
    blocks = plan_blocks(lengths, capacity, max_item, max_docs)
    assert [i for b in blocks for i in b] == list(range(len(lengths)))
    for block in blocks:
        assert len(block) <= max_docs
        assert sum(lengths[i] for i in block) <= capacity
    # the same rule, written independently in the reference
    assert blocks == ref.pack_blocks(lengths, capacity, max_item, max_docs)


def test_merged_query_is_the_weighted_mean():
    q1, q2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    merged = merged_query([q1, q2], [np.array([1.0, -1.0]), np.array([0.0])])
    np.testing.assert_allclose(merged, (1.0 * q1 + 0.5 * q2) / 1.5)
    np.testing.assert_array_equal(merged_query([q1], [np.array([0.3])]), q1)


def test_cosine_handles_zero_vectors():
    scores = cosine(np.array([1.0, 0.0]), np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(scores, [1.0, 0.0, -1.0])


def test_opening_query_marker_follows_the_opening_lines_query():
    """v3.5's recipe: a query marker right after the opening line's query too; the last one is read."""
    block = build_block("q?", ["doc A"], "be strict", char_tokenize, IDS, opening_query_marker=True)
    text = detokenize(block.ids)
    expected = "".join(p if isinstance(p, str) else p.name
                       for p in ref.prompt_pieces("q?", ["doc A"], "be strict", opening_query_marker=True))
    assert text == expected
    assert "relevance to query: q?<|rerank_token|>\n<instruct>\nbe strict\n</instruct>\n<passage" in text
    assert text.count(RERANK_TOKEN) == 2
    assert block.query_position == len(block.ids) - 1
    assert detokenize(build_block("q?", ["doc A"], None, char_tokenize, IDS).ids).count(RERANK_TOKEN) == 1


def test_template_tokens_count_the_opening_query_marker():
    assert template_tokens(char_tokenize, IDS, opening_query_marker=True) == template_tokens(char_tokenize, IDS) + 1
