"""No input makes the adapter answer 5xx: generated, schema-driven and hand-picked strange requests,
sent over real HTTP to the adapter with the real Triton behind it."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapter.app import TIMEOUT_HEADER

pytestmark = pytest.mark.integration

CLIENT_ERRORS = {413, 422}

json_scalars = st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# Lone surrogates, control characters, NUL, right-to-left marks and emoji, as JSON can carry them.
odd_text = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=40)
documents = st.lists(odd_text | st.fixed_dictionaries({"text": odd_text}) | json_values, max_size=12)
bodies = st.fixed_dictionaries({}, optional={
    "query": odd_text | json_values, "documents": documents | json_values,
    "top_n": st.integers(-(10**30), 10**30) | json_values, "return_documents": st.booleans() | json_values,
    "model": odd_text | json_values, "batch_size": json_values, "instruction": odd_text | json_values,
}) | json_values


@pytest.fixture(scope="module")
def client(live_stack):
    _, adapter = live_stack
    with httpx.Client(base_url=adapter.url, timeout=30) as http:
        yield http


def check_answer(response: httpx.Response, body: object) -> None:
    assert response.status_code < 500, response.text
    payload = response.json()
    if response.status_code != 200:
        assert response.status_code in CLIENT_ERRORS
        assert isinstance(payload["detail"], str)
        assert payload["detail"]
        return
    docs = body["documents"]
    indices = [r["index"] for r in payload["results"]]
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < len(docs) for i in indices)
    top_n = body.get("top_n")
    assert len(indices) == (len(docs) if top_n is None else min(top_n, len(docs)))
    scores = [r["relevance_score"] for r in payload["results"]]
    assert all(math.isfinite(s) and -1.0001 <= s <= 1.0001 for s in scores)
    assert scores == sorted(scores, reverse=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=bodies)
def test_generated_bodies_never_get_a_server_error(client, body):
    response = client.post("/v1/rerank", content=json.dumps(body), headers={"Content-Type": "application/json"})
    check_answer(response, body)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_get_a_server_error(client, raw):
    response = client.post("/rerank", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in CLIENT_ERRORS
    assert error_message(response.json())


STRANGE = {
    "deep array": b"[" * 200_000 + b"]" * 200_000,
    "deep object": b'{"query": ' * 50_000 + b"1" + b"}" * 50_000,
    "deep inside documents": b'{"query": "q", "documents": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    "huge top_n": b'{"query": "q", "documents": ["a", "b"], "top_n": ' + b"9" * 5000 + b"}",
    "float overflow": b'{"query": "q", "documents": ["a"], "top_n": 1e400}',
    "invalid utf-8": b'{"query": "\xff\xfe", "documents": ["a"]}',
    "lone surrogate": b'{"query": "q", "documents": ["a\\udc80"]}',
    "nul and controls": b'{"query": "q\\u0000\\u001b[31m", "documents": ["\\u0000", "\\u0007\\u0008"]}',
    "10,000 tiny documents": json.dumps({"query": "q", "documents": ["x"] * 10_000}).encode(),
    "duplicate keys": b'{"query": "a", "query": "b", "documents": ["a"]}',
    "wrong content type": b"query=q&documents=a",
}


@pytest.mark.parametrize("case", sorted(STRANGE))
def test_strange_requests_get_a_clear_answer(client, case):
    response = client.post("/v1/rerank", content=STRANGE[case], headers={"Content-Type": "application/json"})
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    if response.status_code != 200:
        assert response.json()["detail"]
    assert client.get("/health").status_code == 200


def test_request_over_the_token_limit_is_422_and_long_documents_are_truncated(client):
    # 1,000 documents of ~100 tokens pass every adapter limit but exceed the CPU config's 65,536 tokens.
    many = client.post("/v1/rerank", json={"query": "q", "documents": ["rivers and lakes " * 40] * 1000})
    assert many.status_code == 422
    assert "tokens" in many.json()["detail"]
    assert "65536" in many.json()["detail"]
    # A 90,000-character document is under the character limit: truncated by the model, not rejected.
    long = client.post("/v1/rerank", json={"query": "q", "documents": ["word " * 18_000, "short"]})
    assert long.status_code == 200
    assert long.json()["usage"]["total_tokens"] < 2048 + 400


# What JSON (and Python's parser: NaN, Infinity) can carry where a number is expected: past int64 either way,
# past float64 (1e400 parses as inf), fractions, and the wrong types.
EXTREMES = ("9223372036854775808", "9223372036854775807", "-9223372036854775809", "18446744073709551616",
            "1" + "0" * 30, "-1" + "0" * 30, "1" + "0" * 400, "0", "-1", "1", "2", "1e20", "-1e20", "1.5", "1.0",
            "-0.0", "1e308", "1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "true", "false", "null",
            '"5"', '"1e20"', '""', '"nan"', "[]", "{}")
raw_numbers = (st.sampled_from(EXTREMES) | st.integers().map(str) | st.floats().map(json.dumps)
               | st.text(max_size=12).map(json.dumps) | st.booleans().map(json.dumps))
header_numbers = (st.sampled_from(EXTREMES) | st.integers().map(str) | st.floats().map(repr)
                  | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=12))
NUMERIC = {"integer", "number"}


def is_numeric(schema: dict) -> bool:
    return schema.get("type") in NUMERIC or any(is_numeric(option) for option in schema.get("anyOf", ()))


def numeric_fields(adapter_url: str) -> list[tuple[str, str, str, str]]:
    """(path, body schema, where, name) of every numeric field of every route and every body it takes (a route may
    take several: /rerank, Jina's and TEI's): body fields and parameters from the adapter's OpenAPI schema, and the
    deadline header the schema leaves out."""
    spec = httpx.get(f"{adapter_url}/openapi.json", timeout=10).json()
    fields = []
    for path, methods in spec["paths"].items():
        for operation in methods.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is None:
                continue
            for ref in body.get("oneOf", [body]):
                name = ref["$ref"].rsplit("/", 1)[1]
                schema = spec["components"]["schemas"][name]
                fields += [(path, name, "header", p["name"]) for p in operation.get("parameters", ())
                           if is_numeric(p["schema"])]
                fields += [(path, name, "body", field) for field, spec_ in schema["properties"].items()
                           if is_numeric(spec_)]
                fields.append((path, name, "header", TIMEOUT_HEADER))
    return sorted(set(fields))


def body_examples(adapter_url: str) -> dict[str, dict]:
    """Each body schema's own example (the one /docs shows), by the schema's name."""
    schemas = httpx.get(f"{adapter_url}/openapi.json", timeout=10).json()["components"]["schemas"]
    return {name: schema["examples"][0] for name, schema in schemas.items() if schema.get("examples")}


def error_message(payload: dict) -> object:
    """An error body's message in any dialect's shape: Jina's ``detail``, Cohere's ``message``, TEI's ``error``."""
    return next(payload[key] for key in ("detail", "message", "error") if key in payload)


def send_numeric(client: httpx.Client, path: str, example: dict, where: str, name: str, raw: str) -> None:
    """One request, the body schema's ``example`` with ``raw`` (JSON text, or a header's value) in the field; any
    answer but a 5xx is fine, an error's body is JSON with a message, and a 200 holds as many results as asked
    for."""
    body = {key: value for key, value in example.items() if key != name}
    text, headers = json.dumps(body), {"Content-Type": "application/json"}
    if where == "body":
        text = f'{text[:-1]}, "{name}": {raw}}}'
    else:
        headers[name] = raw
    response = client.post(path, content=text.encode(), headers=headers)
    assert response.status_code < 500, (path, name, raw, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), (path, name, raw, response.text)
    payload = response.json()
    if response.status_code != 200:
        assert 400 <= response.status_code < 500
        assert isinstance(error_message(payload), str)
        assert error_message(payload), (path, name, raw)
        return
    documents = body.get("documents", body.get("texts"))
    asked = json.loads(text).get("top_n")
    expected = len(documents) if asked is None else min(int(asked), len(documents))
    results = payload if isinstance(payload, list) else payload["results"]  # TEI's answer is a bare list
    assert len(results) == expected, (path, name, raw, payload)


def test_every_numeric_field_of_every_route_takes_any_json_value_without_a_server_error(client):
    fields = numeric_fields(str(client.base_url))
    examples = body_examples(str(client.base_url))
    for path, body in (("/v1/rerank", "RerankBody"), ("/rerank", "RerankBody"), ("/v2/rerank", "CohereBody")):
        assert {(path, body, "body", "top_n"), (path, body, "header", TIMEOUT_HEADER)} <= set(fields)
    assert ("/v2/rerank", "CohereBody", "body", "max_tokens_per_doc") in fields
    assert ("/rerank", "TeiBody", "header", TIMEOUT_HEADER) in fields
    for path, body, where, name in fields:
        for raw in EXTREMES:
            send_numeric(client, path, examples[body], where, name, raw)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def generated(data: st.DataObject) -> None:
        path, body, where, name = data.draw(st.sampled_from(fields))
        send_numeric(client, path, examples[body], where, name,
                     data.draw(raw_numbers if where == "body" else header_numbers))

    generated()


def operations(adapter_url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{adapter_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_schema_fuzzing(live_stack, mode):
    """Requests generated from the adapter's own OpenAPI schema, fitting it and violating it, on every
    route: never a 5xx, and every response (errors included) is one the schema documents."""
    _, adapter = live_stack
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    tried = []
    for operation in operations(adapter.url):
        if mode == GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # a route without parameters or body has nothing to violate
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case) -> None:
            case.call_and_validate(base_url=adapter.url, checks=checks, timeout=30)

        call()
        tried.append(f"{operation.method.upper()} {operation.path}")
    assert {"POST /v1/rerank", "POST /rerank", "POST /v2/rerank"} <= set(tried)
    assert mode == GenerationMode.NEGATIVE or {"GET /ready", "GET /info", "GET /metrics"} <= set(tried)
