"""The dialects (adapter/dialects) in-process: each route parses its clients' bodies, answers in their shape, and
shares one code path (limits, key, deadline, X-Rerank-Scored, metrics); pure functions of each dialect alone.

The real stack, with Cohere's own SDK and TEI-shaped requests, is in tests/test_dialects_live.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.app import SCORED_HEADER
from adapter.dialects import cohere, tei
from adapter.errors import BackendTimeoutError, BackendUnavailableError, InvalidRequestError
from tests import test_app as harness
from tests.test_app import DOCS, by_length

pytestmark = pytest.mark.unit

# The app with its stand-in backend, as tests/test_app.py serves it.
serve, app = harness.serve, harness.app

COHERE = {"model": "rerank-v3.5", "query": "rivers", "documents": DOCS, "top_n": 3, "max_tokens_per_doc": 100}
TEI = {"query": "rivers", "texts": DOCS, "return_text": True}
# A bad body of each dialect, and the shape its error comes in: (path, body, status, keys of the error body).
BAD_BODIES = [
    ("/v2/rerank", {"query": "", "documents": DOCS}, 400, {"message"}),
    ("/v2/rerank", {"query": "q", "documents": [{"text": "objects are Jina's, not Cohere's v2"}]}, 400, {"message"}),
    ("/v2/rerank", {"query": "q", "documents": DOCS, "max_tokens_per_doc": 0}, 400, {"message"}),
    ("/v2/rerank", [1, 2], 400, {"message"}),
    ("/rerank", {"query": " ", "texts": DOCS}, 422, {"error", "error_type"}),
    ("/rerank", {"query": "q", "texts": []}, 422, {"error", "error_type"}),
    ("/rerank", {"query": "q", "texts": [1]}, 422, {"error", "error_type"}),
    ("/rerank", {"query": "q", "texts": DOCS, "raw_scores": "sometimes"}, 422, {"error", "error_type"}),
    ("/rerank", {"query": "q", "documents": []}, 422, {"detail", "type"}),
    ("/v1/rerank", {"query": "q", "texts": DOCS}, 422, {"detail", "type"}),  # TEI's body on Jina's own route
]


def test_cohere_v2_answer(app):
    client, backend = app
    response = client.post("/v2/rerank", json=COHERE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "results", "meta"}
    assert [r["index"] for r in body["results"]] == by_length(DOCS)[:3]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([len(DOCS[i]) / 100
                                                                            for i in by_length(DOCS)[:3]])
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                            "tokens": {"input_tokens": 7 * len(DOCS)}}
    assert backend.calls[-1]["max_doc_tokens"] == 100
    assert response.headers[SCORED_HEADER] == f"{len(DOCS)}/{len(DOCS)}"
    assert client.post("/v2/rerank", json=COHERE).json()["id"] != body["id"]  # unique per request


def test_the_v1_answer_gains_cohere_v1_id_and_meta_and_keeps_jinas_fields(app):
    client, _ = app
    body = client.post("/v1/rerank", json={"query": "rivers", "documents": DOCS, "top_n": 2}).json()
    assert set(body) == {"model", "object", "usage", "results", "id", "meta"}
    assert body["meta"]["api_version"] == {"version": "1"}
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert body["usage"] == {"total_tokens": 7 * len(DOCS)}
    assert all(set(r) == {"index", "relevance_score", "document"} for r in body["results"])


@pytest.mark.parametrize("raw_scores", [False, True])
def test_tei_answer_is_a_bare_list_best_first(app, raw_scores):
    client, backend = app
    response = client.post("/rerank", json={**TEI, "raw_scores": raw_scores})
    assert response.status_code == 200, response.text
    ranks = response.json()
    assert [r["index"] for r in ranks] == by_length(DOCS)  # every text: TEI has no top_n
    cosines = [len(DOCS[i]) / 100 for i in by_length(DOCS)]
    expected = cosines if raw_scores else [(c + 1) / 2 for c in cosines]
    assert [r["score"] for r in ranks] == pytest.approx(expected)
    assert [r["text"] for r in ranks] == [DOCS[i] for i in by_length(DOCS)]
    assert backend.calls[-1]["documents"] == DOCS
    assert response.headers[SCORED_HEADER] == f"{len(DOCS)}/{len(DOCS)}"
    without_text = client.post("/rerank", json={"query": "rivers", "texts": DOCS}).json()
    assert all(set(r) == {"index", "score"} for r in without_text)


def test_a_body_with_documents_on_rerank_is_still_the_old_services(app):
    client, _ = app
    body = client.post("/rerank", json={"query": "q", "documents": DOCS, "texts": ["ignored"]}).json()
    assert len(body["results"]) == len(DOCS)


@pytest.mark.parametrize(("path", "body", "status", "keys"), BAD_BODIES)
def test_bad_bodies_are_4xx_in_the_dialects_error_shape(app, path, body, status, keys):
    client, backend = app
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == keys
    message = next(value for key, value in response.json().items() if key in ("message", "error", "detail"))
    assert isinstance(message, str)
    assert message
    assert not backend.calls


@pytest.mark.parametrize(("path", "body", "keys"), [
    ("/v2/rerank", COHERE, {"message"}), ("/rerank", TEI, {"error", "error_type"}),
    ("/v1/rerank", {"query": "q", "documents": DOCS}, {"detail", "type"})])
def test_limits_key_and_backend_failures_are_the_same_on_every_dialect(serve, path, body, keys):
    client, backend = serve(api_key="k", max_documents=3)
    refused = client.post(path, json=body)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    if path != "/rerank":  # before the body is read /rerank cannot know it is TEI's: Jina's shape
        assert set(refused.json()) == keys
    auth = {"Authorization": "Bearer k"}
    too_many = client.post(path, json=body, headers=auth)
    assert too_many.status_code == (400 if path == "/v2/rerank" else 422)
    assert set(too_many.json()) == keys
    assert f"{'texts' if 'texts' in body else 'documents'}: {len(DOCS)} documents, at most 3 allowed" in str(
        too_many.json())
    short = {**body, ("texts" if "texts" in body else "documents"): DOCS[:2]}
    for error, status in ((BackendUnavailableError("down"), 503), (BackendTimeoutError("late"), 504)):
        backend.error = error
        failed = client.post(path, json=short, headers=auth)
        assert failed.status_code == status
        assert set(failed.json()) == keys
    metrics = client.get("/metrics").text
    assert 'rerank_errors_total{kind="unauthorized"} 1.0' in metrics
    assert 'rerank_errors_total{kind="backend_unavailable"} 1.0' in metrics
    assert 'rerank_requests_total{status="401"} 1.0' in metrics


def test_tei_error_types_name_teis_kinds():
    assert tei.error(InvalidRequestError("bad")) == (422, {"error": "bad", "error_type": "validation"})
    assert tei.error(BackendUnavailableError("down")) == (503, {"error": "down", "error_type": "unhealthy"})
    assert cohere.error(InvalidRequestError("bad")) == (400, {"message": "bad"})
    assert cohere.error(BackendTimeoutError("late")) == (504, {"message": "late"})


@given(st.floats(-1, 1))
def test_tei_scores_map_cosines_onto_zero_to_one_keeping_order(cosine):
    assert 0 <= tei.score(cosine, raw=False) <= 1
    assert tei.score(cosine, raw=True) == pytest.approx(cosine)
    assert tei.score(min(cosine + 0.01, 1), raw=False) >= tei.score(cosine, raw=False)


@pytest.mark.parametrize(("documents", "units"), [(1, 1), (100, 1), (101, 2), (1000, 10)])
def test_cohere_bills_a_search_unit_per_hundred_documents(documents, units):
    assert cohere.meta("2", documents, 5).billed_units.search_units == units


@pytest.mark.parametrize(("path", "body"), [("/v2/rerank", COHERE), ("/rerank", TEI)])
def test_a_budgeted_answer_says_so_on_every_dialect(app, path, body):
    client, backend = app
    backend.scored = 2
    response = client.post(path, json=body)
    assert response.status_code == 200
    assert response.headers[SCORED_HEADER] == f"2/{len(DOCS)}"
    assert "rerank_budgeted_requests_total 1.0" in client.get("/metrics").text
