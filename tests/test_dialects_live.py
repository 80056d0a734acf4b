"""Every dialect over real HTTP against the real stack (adapter -> Triton -> llama.cpp): Cohere's own SDK, v1 and
v2 clients, and TEI-shaped requests, with scores held to Triton's own answer and to the NumPy reference."""

from __future__ import annotations

import cohere
import httpx
import numpy as np
import pytest

from tests.test_adapter import DOCS, QUERY, expected_order, triton_scores

pytestmark = pytest.mark.integration

KEY = "any-key"  # the stack runs without API_KEY: any bearer token is accepted, as LibreChat's and Cohere's send one
# The q8 model against the float64 reference (tests/test_engine_reference.py holds the engine to the same bound).
REFERENCE_ATOL = 0.05


@pytest.fixture(scope="module")
def adapter(live_stack):
    return live_stack[1]


@pytest.fixture(scope="module")
def triton(live_stack):
    return live_stack[0]


def assert_matches_reference(scores: list[float], indices: list[int], expected: np.ndarray) -> None:
    np.testing.assert_allclose(scores, expected[indices], rtol=0, atol=REFERENCE_ATOL)


def test_cohere_v2_client_reranks_through_the_adapter(adapter, triton, reference_q8):
    client = cohere.ClientV2(api_key=KEY, base_url=adapter.url)
    response = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=4)
    scores, tokens = triton_scores(triton, QUERY, DOCS)
    indices = [r.index for r in response.results]
    assert indices == expected_order(scores)[:4]
    np.testing.assert_allclose([r.relevance_score for r in response.results], scores[indices], rtol=0, atol=1e-6)
    assert_matches_reference([r.relevance_score for r in response.results], indices,
                             reference_q8.rerank(QUERY, DOCS).scores)
    assert response.id
    assert response.meta.api_version.version == "2"
    assert response.meta.billed_units.search_units == 1
    assert response.meta.tokens.input_tokens == tokens


def test_cohere_v2_max_tokens_per_doc_truncates_as_the_reference_does(adapter, reference_q8):
    docs = [" ".join(DOCS), *DOCS[:3]]  # the first is long enough for the cap to cut
    client = cohere.ClientV2(api_key=KEY, base_url=adapter.url)
    capped = client.rerank(model="rerank-v3.5", query=QUERY, documents=docs, max_tokens_per_doc=12)
    whole = client.rerank(model="rerank-v3.5", query=QUERY, documents=docs)
    assert capped.meta.tokens.input_tokens < whole.meta.tokens.input_tokens
    expected = reference_q8.rerank(QUERY, docs, max_doc_tokens=12).scores
    assert_matches_reference([r.relevance_score for r in capped.results], [r.index for r in capped.results],
                             expected)


def test_cohere_v1_client_reranks_through_the_adapter(adapter, triton, reference_q8):
    client = cohere.Client(api_key=KEY, base_url=adapter.url)
    response = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=3,
                             return_documents=True)
    scores, _ = triton_scores(triton, QUERY, DOCS)
    indices = [r.index for r in response.results]
    assert indices == expected_order(scores)[:3]
    assert_matches_reference([r.relevance_score for r in response.results], indices,
                             reference_q8.rerank(QUERY, DOCS).scores)
    assert [r.document for r in response.results] == [DOCS[i] for i in indices]  # Jina's form: as they arrived
    assert response.id
    assert response.meta.api_version.version == "1"
    assert response.meta.billed_units.search_units == 1


def test_cohere_clients_raise_their_own_errors_for_bad_input(adapter):
    with pytest.raises(cohere.BadRequestError) as raised:
        cohere.ClientV2(api_key=KEY, base_url=adapter.url).rerank(model="m", query=" ", documents=DOCS)
    assert "query" in raised.value.body["message"]


@pytest.mark.parametrize("raw_scores", [False, True])
def test_tei_request_reranks_through_the_adapter(adapter, triton, reference_q8, raw_scores):
    response = httpx.post(f"{adapter.url}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": raw_scores,
                                                         "return_text": True, "truncate": True}, timeout=30)
    assert response.status_code == 200, response.text
    ranks = response.json()
    scores, _ = triton_scores(triton, QUERY, DOCS)
    indices = [r["index"] for r in ranks]
    assert indices == expected_order(scores)
    cosines = [r["score"] if raw_scores else 2 * r["score"] - 1 for r in ranks]
    np.testing.assert_allclose(cosines, scores[indices], rtol=0, atol=1e-6)
    assert_matches_reference(cosines, indices, reference_q8.rerank(QUERY, DOCS).scores)
    assert all(0 <= r["score"] <= 1 for r in ranks) or raw_scores
    assert [r["text"] for r in ranks] == [DOCS[i] for i in indices]
    assert response.headers["X-Rerank-Scored"] == f"{len(DOCS)}/{len(DOCS)}"


@pytest.mark.parametrize(("path", "body", "status", "keys"), [
    ("/rerank", {"query": "q", "texts": []}, 422, {"error", "error_type"}),
    ("/rerank", {"query": "q", "texts": ["rivers and lakes " * 40] * 1000}, 422, {"error", "error_type"}),
    ("/v2/rerank", {"query": "q", "documents": ["rivers and lakes " * 40] * 1000}, 400, {"message"})])
def test_bad_bodies_over_the_wire_are_4xx_in_the_dialects_shape(adapter, path, body, status, keys):
    """The adapter's own validation, and the model's rejection (over the CPU config's 65,536 tokens)."""
    response = httpx.post(f"{adapter.url}{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert set(response.json()) == keys
