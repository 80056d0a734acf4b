"""/docs in a real browser, as a user on a network without internet opens it: Debian's Chromium, driven by Playwright.

Chromium resolves no host but 127.0.0.1 (--host-resolver-rules), and every request the page makes is routed
through the test: one to any origin but the adapter's is recorded and aborted, and the test asserts there was
none (FastAPI's default page fetched Swagger UI from a CDN and stayed blank). Then the page is used against the
real stack (Triton on the tiny Q8_0 model, the adapter with an API_KEY, both on loopback): "Authorize" with the
key, and the rerank route's "Try it out" on its first example, LibreChat's body.

The screenshot of the page with its answer is saved as a test artefact: .cache/test-artefacts/docs-page.png.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Route, expect, sync_playwright

from adapter.schemas import LIBRECHAT_EXAMPLE
from stack.adapter_server import AdapterServer
from tests.servers import start_adapter, start_triton

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.system, pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH: the /docs browser test needs Debian's chromium package, which "
                             "`make test` installs where it runs as root (apt-get install chromium)")]

ARTEFACTS = Path(__file__).resolve().parent.parent / ".cache" / "test-artefacts"
API_KEY = "docs-page-key"
# Headless as root, nothing of Chromium's own reaching out (updates, sync, field trials), no host but loopback.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
ACTION_TIMEOUT_MS = 60_000  # a rerank on a loaded 2-core machine; Playwright waits on the page, never sleeps


@pytest.fixture(scope="module")
def adapter(tiny_q8, tmp_path_factory) -> Iterator[AdapterServer]:
    logs = tmp_path_factory.mktemp("docs-browser")
    triton = start_triton(tiny_q8, logs / "triton.log")
    try:
        adapter = start_adapter(triton.grpc_url, logs / "adapter.log", API_KEY=API_KEY)
    except BaseException:
        triton.stop()
        raise
    yield adapter
    adapter.stop()
    triton.stop()


def execute(page: Page, operation: str, status: str) -> dict:
    """Press the operation's Execute and wait for the answer with ``status``; its body."""
    page.locator(f"#{operation} button.execute").click()
    response = page.locator(f"#{operation} .live-responses-table .response")
    expect(response.locator(".response-col_status")).to_have_text(status, timeout=ACTION_TIMEOUT_MS)
    return json.loads(response.locator(".response-col_description .highlight-code pre").inner_text())


def test_docs_page_works_offline_authorizes_and_reranks(adapter, tmp_path):
    outside: list[str] = []
    reranks: list[dict[str, str]] = []  # the headers of each rerank request the page sent

    def same_origin_only(route: Route) -> None:
        url = route.request.url
        if url != adapter.url and not url.startswith(f"{adapter.url}/"):
            outside.append(url)
            route.abort()
            return
        if url == f"{adapter.url}/v1/rerank":
            reranks.append(route.request.headers)
        route.continue_()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(  # a fresh profile: --user-data-dir
            tmp_path / "profile", executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            browser.set_default_timeout(ACTION_TIMEOUT_MS)
            browser.route("**/*", same_origin_only)
            page = browser.new_page()
            page.goto(f"{adapter.url}/docs")  # returns at the load event: the page's scripts and styles are in
            assert outside == []

            paths = page.locator(".opblock-summary-path")
            expect(paths.first).to_be_visible(timeout=ACTION_TIMEOUT_MS)
            assert set(paths.all_inner_texts()) == {"/v1/rerank", "/rerank", "/v2/rerank", "/health", "/ready",
                                                    "/info", "/metrics"}

            operation = "operations-default-rerank_v1_rerank_post"
            page.locator(f"#{operation} .opblock-summary").click()
            body = page.locator(f"#{operation} textarea.body-param__text")
            assert json.loads(body.input_value()) == LIBRECHAT_EXAMPLE["value"]  # the first example, as it is
            assert execute(page, operation, "401")["type"] == "unauthorized"  # before "Authorize": no key sent

            page.locator(".auth-wrapper button.authorize").click()
            page.locator(".modal-ux input").fill(API_KEY)
            page.locator(".modal-ux .auth-btn-wrapper button.authorize").click()
            page.locator(".modal-ux button.btn-done").click()
            answer = execute(page, operation, "200")

            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTEFACTS / "docs-page.png", full_page=True)
        finally:
            browser.close()

    assert outside == []  # nor later: the favicon, the OpenAPI document, the calls of "Try it out"
    assert [headers.get("authorization") for headers in reranks] == [None, f"Bearer {API_KEY}"]
    direct = httpx.post(f"{adapter.url}/v1/rerank", json=LIBRECHAT_EXAMPLE["value"],
                        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60).json()
    assert answer["model"] == "jina-reranker-v3"
    assert [r["index"] for r in answer["results"]] == [r["index"] for r in direct["results"]]
    assert [r["relevance_score"] for r in answer["results"]] == pytest.approx(
        [r["relevance_score"] for r in direct["results"]], abs=1e-6)
    assert len(answer["results"]) == LIBRECHAT_EXAMPLE["value"]["top_n"]
    assert answer["usage"] == direct["usage"]
