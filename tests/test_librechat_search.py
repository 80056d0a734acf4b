"""LibreChat's web-search load: the pages and their chunking, the committed workload, the bench's summary, and
LibreChat's own reranker client (npm, where installed) against a real stack."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading

import pytest

from perf import tables
from perf.load import librechat_bench, web_pages
from perf.load.librechat_bench import Search, run_client, scored, searches_of, served_stack, summarize
from perf.load.workloads import LIBRECHAT_SEARCH, Entry, dumps, generate_search, load, path_of

pytestmark = pytest.mark.system

CLIENT_INSTALLED = librechat_bench.installed_version() == librechat_bench.AGENTS_VERSION
needs_client = pytest.mark.skipif(not CLIENT_INSTALLED, reason="LibreChat's client is installed by "
                                  "`make librechat-client` (npm @librechat/agents, pinned)")


def test_pages_are_cleaned_as_librechat_cleans_them() -> None:
    scraped = "Title\r\n\r\n  Intro   text\t here  \\\n\n\n- item\r- other \n\n"
    assert web_pages.clean_text(scraped) == "Title\nIntro text here\n- item\n- other"


def test_chunks_are_cut_at_50000_characters_and_at_most_150_long() -> None:
    lines = [f"L{i:05d} " + "word " * (i % 13) for i in range(3000)]  # ~60,000 characters of short lines
    lines[10] = "long " * 80  # one line of 400 characters: cut into pieces, as LibreChat's splitter does
    text = "\n".join(lines)
    cut = web_pages.clean_text(text)[:web_pages.MAX_CONTENT_CHARS]
    chunks = web_pages.chunks_of(text)
    assert all(len(c) <= web_pages.CHUNK_SIZE for c in chunks)
    assert all(c in cut for c in chunks)
    assert cut.endswith(chunks[-1])
    last_line = cut.rsplit("\n", 1)[1][:6]
    assert not any(f"L{int(last_line[1:]) + 1:05d}" in c for c in chunks)
    long_pieces = [c for c in chunks if c.startswith("long") and c.endswith("long")]
    assert len(long_pieces) >= 3  # 400 characters in pieces of <= 150 that overlap
    assert 200 < len(chunks) < 1000


def test_committed_search_workload_is_librechat_shaped() -> None:
    path = path_of("librechat-search")
    assert path.stat().st_size <= 1_500_000
    searches = searches_of(load("librechat-search"))
    assert [len(s.pages) for s in searches] == [len(pages) for pages in LIBRECHAT_SEARCH.searches]
    assert all(len(s.pages) == 5 for s in searches)
    assert len({s.query for s in searches}) == len(searches)
    chunks = [c for s in searches for page in s.pages for c in page]
    assert all(250 <= len(page) <= 500 for s in searches for page in s.pages)
    assert max(len(c) for c in chunks) == web_pages.CHUNK_SIZE
    text = "".join(chunks)
    for first, last in (("a", "z"), ("а", "я"), ("\u4e00", "\u9fff"), ("\u30a0", "\u30ff")):  # Latin, Cyrillic, CJK
        assert any(first <= c <= last for c in text)
    for mark in ("\n# ", "\n## ", "\n- ", "\n1. ", "```", "\n| "):  # headings, lists, code, tables
        assert any(mark in c for c in chunks), mark


def test_committed_search_workload_is_what_the_generator_makes() -> None:
    assert path_of("librechat-search").read_text(encoding="utf-8") == dumps(generate_search(LIBRECHAT_SEARCH))


def test_consecutive_entries_with_one_query_are_one_search() -> None:
    entries = [Entry("a", ("1",)), Entry("a", ("2", "3")), Entry("b", ("4",)), Entry("a", ("5",))]
    assert searches_of(entries) == [Search("a", (("1",), ("2", "3"))), Search("b", (("4",),)),
                                    Search("a", (("5",),))]


def call(latency_ms: float, documents: int, fell_back: bool = False, header: str | None = None, **extra) -> dict:
    return {"search": extra.pop("search", 0), "page": 0, "documents": documents, "latency_ms": latency_ms,
            "fell_back": fell_back, "reason": "error" if fell_back else None, "scored_header": header,
            "tokens": None if fell_back else 1000, **extra}


def test_summary_counts_fallbacks_latency_and_the_model_scored_share() -> None:
    calls = [call(8000.0, 489, header="64/489"), call(300.0, 300), call(10004.0, 400, fell_back=True, search=1,
                                                                     error={"message": "timeout of 10000ms exceeded"}),
             call(9600.0, 11, header="11/11", search=1), call(9001.0, 0, fell_back=True, status=504, search=1)]
    assert [scored(c) for c in calls] == [64, None, 0, 11, 0]  # None: answered without the header
    summary = summarize(calls)
    assert summary["calls"] == 5
    assert summary["searches"] == 2
    assert summary["fallbacks"] == 2
    assert summary["fallback_causes"] == {"client timeout": 1, "HTTP 504": 1}
    assert summary["answered_within_deadline"] == 2  # 9.6 s is an answer, but later than 9.5 s
    assert summary["latency_ms"] == {"p50": 9001.0, "p99": 10004.0, "max": 10004.0}
    assert summary["documents"] == 1200
    assert summary["answered_without_scored_header"] == 1
    assert summary["documents_of_known_calls"] == 900
    assert summary["documents_model_scored"] == 75
    assert summary["model_scored_share"] == round(75 / 900, 4)
    assert summary["model_scored_share_of_answered"] == round(75 / 500, 4)
    assert [librechat_bench.outcome(c) for c in calls[:3]] == [
        "489 docs in 8.0 s answered, 64 scored by the model", "300 docs in 0.3 s answered",
        "400 docs in 10.0 s fell back (client timeout)"]
    line = tables.librechat_summary(summary)
    assert "2 fell back" in line
    assert "75/900" in line
    assert "1 answers without an X-Rerank-Scored header" in line


def test_summary_of_nothing_answered() -> None:
    summary = summarize([call(10010.0, 300, fell_back=True)])
    assert summary["documents_model_scored"] == 0
    assert summary["model_scored_share"] == 0.0
    assert summary["model_scored_share_of_answered"] is None
    assert summary["fallback_causes"] == {"error": 1}


def test_a_stack_that_does_not_start_is_an_error_naming_its_log(tmp_path) -> None:
    missing = tmp_path / "model.gguf"
    with pytest.raises(RuntimeError, match=r"serve\.log"), served_stack(missing, missing, tmp_path / "serve.log"):
        pytest.fail("a stack without its model file came up")
    assert f"RERANKER_MODEL: no file at {missing}" in (tmp_path / "serve.log").read_text()


# -- LibreChat's own client (npm), where installed ----------------------------------------------------


@needs_client
def test_javascript_splitter_gives_the_same_chunks() -> None:
    """LibreChat's splitter (@langchain/textsplitters from its package) on the same cleaned pages."""
    pages = [web_pages.clean_text(web_pages.page(locale, f"t/{locale}", 3000, "a query"))
             for locale in ("en_US", "ru_RU", "zh_CN", "ja_JP")]
    script = f"""
        const {{ createRequire }} = require("node:module");
        const load = createRequire({json.dumps(str(librechat_bench.AGENTS_DIR / "node_modules" / "@librechat"
                                                   / "agents" / "package.json"))});
        const {{ RecursiveCharacterTextSplitter }} = load("@langchain/textsplitters");
        const splitter = new RecursiveCharacterTextSplitter({{separators: ["\\n\\n", "\\n"], chunkSize: 150,
                                                             chunkOverlap: 50}});
        console.warn = () => {{}};
        Promise.all(JSON.parse(require("node:fs").readFileSync(0, "utf8")).map((p) => splitter.splitText(p)))
            .then((chunks) => process.stdout.write(JSON.stringify(chunks)));
    """
    result = subprocess.run(["node", "-e", script], input=json.dumps(pages), capture_output=True, text=True,
                            timeout=60, check=True)
    assert json.loads(result.stdout) == [web_pages.chunks_of(p) for p in pages]


class Scripted(http.server.BaseHTTPRequestHandler):
    """A rerank endpoint that scores page 0 with a header saying 3 of its documents, and answers 504 otherwise."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        documents = body["documents"]
        if documents[0].startswith("page 0"):
            payload = json.dumps({"model": "m", "usage": {"total_tokens": 77}, "results": [
                {"index": i, "relevance_score": 0.9 - i / 10, "document": {"text": documents[i]}}
                for i in range(body["top_n"])]}).encode()
            self.send_response(200)
            self.send_header("X-Rerank-Scored", f"3/{len(documents)}")
        else:
            payload = b'{"detail": "no answer within the deadline"}'
            self.send_response(504)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return None


@needs_client
def test_librechat_client_records_header_status_and_fallback() -> None:
    """Each call's own response is read: the header and status of one do not leak into the others."""
    pages = tuple(tuple(f"page {p} chunk {i}" for i in range(7 + p)) for p in range(3))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            calls = run_client(f"http://127.0.0.1:{server.server_port}", [Search("q", pages)], report=False)
        finally:
            server.shutdown()
    calls.sort(key=lambda c: c["page"])
    assert [(c["status"], c["scored_header"], scored(c), c["fell_back"]) for c in calls] == [
        (200, "3/7", 3, False), (504, None, 0, True), (504, None, 0, True)]
    assert calls[0]["tokens"] == 77
    assert calls[0]["top_score"] == pytest.approx(0.9)
    assert [librechat_bench.fallback_cause(c) for c in calls[1:]] == ["HTTP 504", "HTTP 504"]
    assert [c["top_score"] for c in calls[1:]] == [0, 0]  # LibreChat's silent fallback: page order, score 0


@needs_client
def test_searches_in_turn_reach_every_target_and_alternate_the_first() -> None:
    """--v35's order: each search to both targets, the one served first alternating; calls numbered by search."""
    arrivals: list[int] = []

    class Recording(Scripted):
        def do_POST(self) -> None:
            arrivals.append(self.server.server_port)
            super().do_POST()

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recording) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        a, b = (server.server_port for server in servers)
        search = Search("q", (tuple(f"page 0 chunk {i}" for i in range(7)),))  # Scripted answers page 0
        calls = librechat_bench.run_in_turn({"a": f"http://127.0.0.1:{a}", "b": f"http://127.0.0.1:{b}"},
                                            [search] * 3, "key", None, librechat_bench.AGENTS_DIR)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert arrivals == [a, b, b, a, a, b]
    assert {label: [c["search"] for c in done] for label, done in calls.items()} == {"a": [0, 1, 2], "b": [0, 1, 2]}
    assert all(scored(c) == 3 for done in calls.values() for c in done)  # Scripted's header


@needs_client
def test_librechat_client_against_the_served_stack(tiny_q8, tmp_path) -> None:
    """The bench's own stack (python -m stack.serve) and LibreChat's reranker: answered, then a timed-out call."""
    pages = tuple(tuple(f"page {p} chunk {i}: " + "text " * (i % 7) for i in range(12 + p)) for p in range(5))
    search = Search("which chunk is relevant?", pages)
    with served_stack(*tiny_q8, tmp_path / "serve.log") as url:
        calls = run_client(url, [search, search], report=False)
        late = run_client(url, [search], timeout_ms=1, report=False)
    assert sorted((c["search"], c["page"]) for c in calls) == [(s, p) for s in range(2) for p in range(5)]
    for c in calls:
        assert not c["fell_back"], c
        assert c["status"] == 200
        assert c["documents"] == len(pages[c["page"]])
        assert c["scored_header"] == f"{c['documents']}/{c['documents']}"  # time enough: the model scored all
        assert scored(c) == c["documents"]
        assert c["results"] == 5
        assert c["tokens"] > 0
        assert c["top_score"] != 0
    assert [c["fell_back"] for c in late] == [True] * 5
    assert all("timeout" in c["error"]["message"] and c["top_score"] == 0 for c in late)
    assert summarize(calls + late)["fallback_causes"] == {"client timeout": 5}
