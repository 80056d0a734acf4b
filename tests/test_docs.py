"""The docs page's HTTP side, in-process: what /docs loads, the OpenAPI document's examples and security scheme.

tests/test_docs_browser.py opens the page in a real browser against the real stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from adapter.app import DOCS_EXAMPLES, RERANK_PATHS, create_app
from adapter.schemas import RerankResponse
from adapter.settings import AdapterSettings
from tests.test_app import StandIn

pytestmark = pytest.mark.unit

# Where a page names what it loads: src= and href= attributes, and Swagger UI's `url:` (the OpenAPI document).
LOADED = re.compile(r"""(?:src|href)="([^"]*)"|\burl: '([^']*)'""")
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(AdapterSettings(), StandIn)) as client:
        yield client


def loaded_urls(html: str) -> list[str]:
    return [src or url for src, url in LOADED.findall(html)]


def test_the_docs_page_loads_everything_from_the_adapter(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = loaded_urls(page.text)
    assert len(urls) == 4  # the script, the style, the favicon and the OpenAPI document
    for url in urls:
        assert re.match(r"/[^/]", url), url  # a path on the page's own origin, not //host/...
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(MEDIA_TYPES[url[url.rindex("."):]]), url
        assert response.content


def test_behind_a_proxy_the_page_loads_under_its_root_path():
    with TestClient(create_app(AdapterSettings(), StandIn), root_path="/reranker") as client:
        urls = loaded_urls(client.get("/docs").text)
    assert len(urls) == 4
    assert all(url.startswith("/reranker/") for url in urls), urls


def test_only_the_packaged_assets_are_served_and_redoc_is_gone(client):
    for path in ("/docs/assets/__init__.py", "/docs/assets/..%2Fmain.py", "/redoc", "/docs/oauth2-redirect"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["type"] == "not_found"


@pytest.mark.parametrize("path", sorted(RERANK_PATHS))
def test_each_rerank_route_shows_its_clients_bodies_and_each_is_answered(client, path):
    schema = client.get("/openapi.json").json()
    examples = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert list(examples) == list(DOCS_EXAMPLES[path])  # in order: the first is what "Try it out" starts from
    assert examples
    for name, example in examples.items():
        assert example["summary"]
        body = example["value"]
        response = client.post(path, json=body)
        assert response.status_code == 200, (name, response.text)
        answer = response.json()
        results = answer if isinstance(answer, list) else answer["results"]  # TEI's answer is a bare list
        documents = body.get("documents", body.get("texts"))
        assert len(results) == min(body.get("top_n", len(documents)), len(documents))


def test_the_answers_example_is_an_answer(client):
    schema = client.get("/openapi.json").json()
    content = schema["paths"]["/v1/rerank"]["post"]["responses"]["200"]["content"]["application/json"]
    (example,) = schema["components"]["schemas"][content["schema"]["$ref"].rpartition("/")[2]]["examples"]
    assert RerankResponse.model_validate(example).results


def test_with_an_api_key_the_rerank_routes_declare_bearer_auth():
    with TestClient(create_app(AdapterSettings(api_key="k"), StandIn)) as client:
        schema = client.get("/openapi.json").json()
        example = DOCS_EXAMPLES["/v1/rerank"]["librechat"]["value"]
        assert client.post("/v1/rerank", json=example).status_code == 401
        assert client.post("/v1/rerank", json=example, headers={"Authorization": "Bearer k"}).status_code == 200
    assert schema["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": "The adapter's API_KEY."}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert operation.get("security") == ([{"bearer": []}] if path in RERANK_PATHS else None), path


def test_without_an_api_key_nothing_declares_auth(client):
    schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert all("security" not in operation for operations in schema["paths"].values()
               for operation in operations.values())
