"""The engine (real llama.cpp) against the independent NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from models import numpy_reference as ref
from models.reference_check import DOCS, EXACT, QUERY, Reference, open_engine, words
from rerank_engine import RerankRequest

pytestmark = pytest.mark.integration

def test_hidden_states_match_reference_f32(engine_f32, reference_f32):
    prompt = engine_f32.plan(RerankRequest(QUERY, DOCS)).prompts[0]
    [hidden] = engine_f32.runner.hidden_states([prompt.ids], [prompt.output_positions])
    expected = reference_f32.model.hidden_states(prompt.ids)[prompt.output_positions]
    cos = np.sum(hidden * expected, axis=1) / (np.linalg.norm(hidden, axis=1) * np.linalg.norm(expected, axis=1))
    assert hidden.shape == (len(DOCS) + 1, engine_f32.n_embd)
    assert cos.min() >= 0.99999


def test_prompt_matches_reference_assembly(engine_f32, reference_f32):
    prompt = engine_f32.plan(RerankRequest(QUERY, DOCS, "prefer encyclopedic text")).prompts[0]
    ids, doc_pos, query_pos = ref.prompt_ids(ref.prompt_pieces(QUERY, DOCS, "prefer encyclopedic text"),
                                             reference_f32.plain_tokenize, engine_f32.token_ids)
    assert prompt.ids == ids
    assert prompt.doc_positions == doc_pos
    assert prompt.query_position == query_pos


def test_scores_match_reference_f32(engine_f32, reference_f32):
    result = engine_f32.rerank(QUERY, DOCS, return_embeddings=True)
    expected = reference_f32.rerank(QUERY, DOCS)
    assert result.scores.dtype == np.float32
    assert result.scores.shape == (len(DOCS),)
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-4)
    np.testing.assert_allclose(result.doc_embeddings, expected.doc_embeddings, rtol=1e-3, atol=1e-4)
    assert result.tokens == len(engine_f32.plan(RerankRequest(QUERY, DOCS)).prompts[0].ids)


def test_scores_match_reference_q8(engine_q8, reference_q8):
    docs = [*DOCS, *(words(40, seed) for seed in range(10))]
    result = engine_q8.rerank(QUERY, docs)
    expected = reference_q8.rerank(QUERY, docs).scores
    np.testing.assert_allclose(result.scores, expected, atol=0.05)
    spread = expected.max() - expected.min()
    for i in range(len(docs)):
        for j in range(len(docs)):
            if expected[i] - expected[j] > 0.25 * spread:
                assert result.scores[i] > result.scores[j], (i, j)


def test_embeddings_only_when_asked(engine_f32):
    assert engine_f32.rerank(QUERY, DOCS).doc_embeddings is None
    embeddings = engine_f32.rerank(QUERY, DOCS, return_embeddings=True).doc_embeddings
    assert embeddings.shape == (len(DOCS), engine_f32.projector.out_features)


def test_many_documents_use_several_blocks_and_the_reference_merge(engine_f32, reference_f32):
    docs = [words(1 + i % 3, i) for i in range(300)]
    plan = engine_f32.plan(RerankRequest(QUERY, docs))
    assert [len(b) for b in plan.blocks] == [125, 125, 50]
    result = engine_f32.rerank(QUERY, docs)
    expected = reference_f32.rerank(QUERY, docs)
    assert expected.blocks == plan.blocks
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-4)
    assert result.tokens == sum(len(p.ids) for p in plan.prompts)


def test_blocks_split_by_context_capacity(tiny_f32, reference_f32):
    engine = open_engine(tiny_f32, n_ctx=1024, max_query_tokens=32, max_doc_tokens=96, **EXACT)
    docs = [words(60, i) for i in range(12)]
    plan = engine.plan(RerankRequest(QUERY, docs))
    assert len(plan.blocks) > 1
    assert [i for block in plan.blocks for i in block] == list(range(len(docs)))
    assert all(len(p.ids) <= 1024 for p in plan.prompts)
    result = engine.rerank(QUERY, docs)
    expected = reference_f32.rerank(QUERY, docs, blocks=plan.blocks, max_query_tokens=32, max_doc_tokens=96)
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-4)
    single = reference_f32.rerank(QUERY, docs, max_query_tokens=32, max_doc_tokens=96)
    assert len(single.blocks) == 1
    assert not np.allclose(result.scores, single.scores, atol=1e-4), "the merge rule should matter here"


def test_truncates_long_document_and_query(engine_f32, reference_f32):
    long_doc = words(3000, 1)
    long_query = words(700, 2)
    assert len(engine_f32.tokenize(long_doc)) > 2048
    assert len(engine_f32.tokenize(long_query)) > 512
    docs = [long_doc, DOCS[0]]
    result = engine_f32.rerank(long_query, docs)
    expected = reference_f32.rerank(long_query, docs)
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-4)
    untruncated = len(engine_f32.tokenize(long_doc)) + 2 * len(engine_f32.tokenize(long_query))
    assert result.tokens < untruncated


def test_a_request_caps_its_documents_tokens_as_the_reference_truncates(engine_f32, reference_f32):
    """Cohere's max_tokens_per_doc: the request's own cap, applied by the engine's tokeniser."""
    docs = [words(200, 3), words(150, 4), DOCS[0]]
    [capped] = engine_f32.rerank_many([RerankRequest(QUERY, docs, max_doc_tokens=24)])
    expected = reference_f32.rerank(QUERY, docs, max_doc_tokens=24)
    np.testing.assert_allclose(capped.scores, expected.scores, atol=1e-4)
    assert capped.tokens < engine_f32.rerank(QUERY, docs).tokens - 200
    # Above the engine's own limit, the engine's limit holds: as if no cap were given.
    [loose] = engine_f32.rerank_many([RerankRequest(QUERY, docs, max_doc_tokens=10**9)])
    assert loose.tokens == engine_f32.rerank(QUERY, docs).tokens


def test_instruction_is_part_of_the_prompt(engine_f32, reference_f32):
    instruction = "Rank passages about geography above all others."
    with_instruction = engine_f32.rerank(QUERY, DOCS, instruction=instruction)
    expected = reference_f32.rerank(QUERY, DOCS, instruction)
    np.testing.assert_allclose(with_instruction.scores, expected.scores, atol=1e-4)
    without = engine_f32.rerank(QUERY, DOCS)
    assert with_instruction.tokens > without.tokens
    assert not np.allclose(with_instruction.scores, without.scores)


BATCH = [RerankRequest(f"{QUERY} {i}", [words(5 + 3 * j, 10 * i + j) for j in range(1 + i % 4)]) for i in range(9)]


@pytest.mark.parametrize("engine", ["engine_f32", "engine_q8"])
def test_batched_requests_equal_one_at_a_time(engine, request):
    engine = request.getfixturevalue(engine)
    alone = [engine.rerank(r.query, r.documents) for r in BATCH]
    for one, batched in zip(alone, engine.rerank_many(BATCH), strict=True):
        assert batched.tokens == one.tokens
        np.testing.assert_array_equal(batched.scores, one.scores)


def test_shared_decodes_equal_one_at_a_time(tiny_f32):
    engine = open_engine(tiny_f32, share_decodes=True, **EXACT)
    prompts = [p for r in BATCH for p in engine.plan(r).prompts]
    assert len(engine.runner._groups([len(p.ids) for p in prompts])) == 1, "all passes should share one decode"
    alone = [engine.rerank(r.query, r.documents) for r in BATCH]
    for one, batched in zip(alone, engine.rerank_many(BATCH), strict=True):
        assert batched.tokens == one.tokens
        # A shared decode may pick other kernels (batch size) and KV cells: rounding only.
        np.testing.assert_allclose(batched.scores, one.scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("keys", ["gguf", "mlx"])
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_other_dtypes_and_projector_key_schemes(make_model, keys, dtype):
    paths = make_model(dtype, projector_keys=keys, seed=3)
    engine = open_engine(paths)
    result = engine.rerank(QUERY, DOCS)
    expected = Reference(paths, engine).rerank(QUERY, DOCS)
    np.testing.assert_allclose(result.scores, expected.scores, atol=0.05 if dtype == "q8_0" else 5e-3)
