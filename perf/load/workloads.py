"""Benchmark workloads, written as perf_analyzer ``--input-data`` files and read back by the load generator.

    python -m perf.load.workloads                # (re)generate perf/workloads/*.json and print their token counts
    python -m perf.load.workloads --check        # exit 1 if the committed files differ from what the script makes

AIPerf's datasets of the same requests (perf/aiperf/*) are written from these files, after them, by
``python -m perf.aiperf.aiperf_dataset`` (``--check`` likewise).

| workload           | query      | documents                           | as                                  |
|--------------------|------------|-------------------------------------|-------------------------------------|
| `short`            | ~15 tokens | 10 of ~60 tokens                    | snippets                            |
| `docs-20x400`      | ~15 tokens | 20 of ~400 tokens                   | mid-sized documents, 2 passes       |
| `long`             | ~15 tokens | 100 of ~300 tokens                  | several passes per request          |
| `librechat-search` | ~5 words   | 250-500 chunks of <= 150 characters | LibreChat's web search, 4 x 5 pages |

Text comes from Faker's word lists in eight languages (seeded: the same files every time with the pinned
Faker). The first three are sized in tokens, measured with the stand-in model's tokenizer, the real
Qwen2/Qwen3 vocabulary, so "400 tokens" means 400 tokens to jina-reranker-v3. `librechat-search` is what
LibreChat sends (perf/load/web_pages.py): generated pages that look like scraped web text, cleaned, cut at
50,000 characters and chunked with LangChain's splitter at LibreChat's settings; entries 5k to 5k+4 are
the five concurrent requests of search k (same query, one page each).

File format (perf_analyzer's "real input data"): ``{"data": [entry, ...]}`` and nothing else besides
"data" (perf_analyzer rejects other top-level keys), each entry
``{"QUERY": {"content": [query], "shape": [1]}, "DOCUMENTS": {"content": [doc, ...], "shape": [n]}}``.
Shapes leave out the batch dimension: perf_analyzer sends each entry as one ``[1, 1]`` / ``[1, n]``
request, round robin over the entries; the explicit ``shape`` is what lets ``n`` vary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from perf import ROOT
from perf.load import web_pages

WORKLOAD_DIR = ROOT / "perf" / "workloads"
# English first (LibreChat's most common case), then a mix of scripts: Latin, Cyrillic, CJK.
LOCALES = ("en_US", "de_DE", "fr_FR", "es_ES", "it_IT", "ru_RU", "zh_CN", "ja_JP")
SEED = 6

Tokenize = Callable[[str], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    name: str
    documents: int
    doc_tokens: int
    entries: int  # distinct requests in the file, sent round robin
    query_tokens: int = 15
    seed_name: str = ""  # seeds the texts instead of the name: a renamed workload keeps its texts

    @property
    def seed_key(self) -> str:
        return self.seed_name or self.name


@dataclasses.dataclass(frozen=True)
class Page:
    locale: str
    chars: int  # before the cut at 50,000 characters


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """LibreChat web searches: per search, its pages (the query is in the first page's language)."""

    name: str
    searches: tuple[tuple[Page, ...], ...]

    @property
    def entries(self) -> int:
        return sum(len(pages) for pages in self.searches)


def _pages(*pages: tuple[str, int]) -> tuple[Page, ...]:
    return tuple(Page(locale, chars) for locale, chars in pages)


# Page lengths give 250-500 chunks each (about one per 100 characters; six real pages gave 269-497); in two
# searches one page is longer than 50,000 characters and cut. Four searches keep the file near 1.3 MB (CJK
# text is 3 bytes a character).
LIBRECHAT_SEARCH = SearchSpec("librechat-search", (
    _pages(("en_US", 60_000), ("en_US", 30_000), ("fr_FR", 42_000), ("es_ES", 27_000), ("en_US", 36_000)),
    _pages(("zh_CN", 60_000), ("ja_JP", 27_000), ("en_US", 45_000), ("zh_CN", 30_000), ("de_DE", 33_000)),
    _pages(("ru_RU", 48_000), ("de_DE", 48_000), ("ru_RU", 28_000), ("it_IT", 38_000), ("en_US", 33_000)),
    _pages(("en_US", 44_000), ("it_IT", 30_000), ("ja_JP", 26_000), ("es_ES", 48_000), ("en_US", 28_000)),
))

WORKLOADS: dict[str, WorkloadSpec | SearchSpec] = {
    "short": WorkloadSpec("short", documents=10, doc_tokens=60, entries=8),
    # Called `librechat` until LibreChat's real requests were read (`librechat-search`); same texts.
    "docs-20x400": WorkloadSpec("docs-20x400", documents=20, doc_tokens=400, entries=4, seed_name="librechat"),
    "long": WorkloadSpec("long", documents=100, doc_tokens=300, entries=2),
    LIBRECHAT_SEARCH.name: LIBRECHAT_SEARCH,
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One rerank request."""

    query: str
    documents: tuple[str, ...]


def path_of(name: str, directory: Path = WORKLOAD_DIR) -> Path:
    return directory / f"{name}.json"


def to_input_data(entries: Sequence[Entry]) -> dict[str, list]:
    return {"data": [{"QUERY": {"content": [e.query], "shape": [1]},
                      "DOCUMENTS": {"content": list(e.documents), "shape": [len(e.documents)]}} for e in entries]}


def from_input_data(data: dict) -> list[Entry]:
    """Entries of a perf_analyzer input-data document; raises ValueError if it is not one this project writes."""
    if not isinstance(data, dict) or set(data) != {"data"} or not isinstance(data["data"], list) or not data["data"]:
        raise ValueError('expected {"data": [entry, ...]} with at least one entry and no other key')
    entries = []
    for i, step in enumerate(data["data"]):
        texts = {}
        for name in ("QUERY", "DOCUMENTS"):
            tensor = step.get(name) if isinstance(step, dict) else None
            if not isinstance(tensor, dict) or not isinstance(tensor.get("content"), list):
                raise ValueError(f"entry {i}: {name} must be {{\"content\": [...], \"shape\": [...]}}")
            content, shape = tensor["content"], tensor.get("shape")
            if shape != [len(content)] or not all(isinstance(t, str) for t in content):
                raise ValueError(f"entry {i}: {name} content must be strings matching its shape {shape}")
            texts[name] = content
        if len(texts["QUERY"]) != 1 or not texts["DOCUMENTS"]:
            raise ValueError(f"entry {i}: one query and at least one document expected")
        entries.append(Entry(texts["QUERY"][0], tuple(texts["DOCUMENTS"])))
    return entries


def load(name: str, directory: Path = WORKLOAD_DIR) -> list[Entry]:
    return from_input_data(json.loads(path_of(name, directory).read_text(encoding="utf-8")))


def dumps(entries: Sequence[Entry]) -> str:
    # One document per line keeps diffs readable; UTF-8 as is (perf_analyzer's JSON reader takes it).
    return json.dumps(to_input_data(entries), ensure_ascii=False, indent=1) + "\n"


# -- generation ---------------------------------------------------------------------------------------


def _joiner(locale: str) -> str:
    return "" if locale.startswith(("zh", "ja")) else " "


def text_of_tokens(target: int, sentence: Callable[[], str], joiner: str, tokenize: Tokenize) -> str:
    """Whole sentences, stopping at whichever of the two lengths around ``target`` tokens is closer."""
    text, count = "", 0
    while count < target:
        longer = (text + joiner if text else "") + sentence()
        longer_count = len(tokenize(longer))
        if longer_count >= target and text and longer_count - target > target - count:
            break
        text, count = longer, longer_count
    return text


def generate_search(spec: SearchSpec, seed: int = SEED) -> list[Entry]:
    """Five entries per search, one per page: the search's query and all the chunks of that page."""
    entries = []
    for s, pages in enumerate(spec.searches):
        query, chunks = web_pages.search([p.locale for p in pages], f"{seed}/{spec.name}/{s}",
                                         [p.chars for p in pages])
        entries += [Entry(query, tuple(documents)) for documents in chunks]
    return entries


def generate(spec: WorkloadSpec | SearchSpec, tokenize: Tokenize, seed: int = SEED) -> list[Entry]:
    if isinstance(spec, SearchSpec):
        return generate_search(spec, seed)
    from faker import Faker

    fakers = {locale: Faker(locale) for locale in LOCALES}

    def seeded(locale: str, *where: object) -> Faker:
        fake = fakers[locale]
        fake.seed_instance(zlib.crc32(f"{seed}/{spec.seed_key}/{'/'.join(map(str, where))}".encode()))
        return fake

    entries = []
    for e in range(spec.entries):
        locale = LOCALES[e % len(LOCALES)]
        fake = seeded(locale, e, "query")
        query = text_of_tokens(spec.query_tokens, lambda f=fake: f.sentence(nb_words=6), _joiner(locale), tokenize)
        docs = []
        for d in range(spec.documents):
            doc_locale = LOCALES[(e + d) % len(LOCALES)]
            fake = seeded(doc_locale, e, d)
            docs.append(text_of_tokens(spec.doc_tokens, lambda f=fake: f.sentence(nb_words=8),
                                       _joiner(doc_locale), tokenize))
        entries.append(Entry(query, tuple(docs)))
    return entries


def token_stats(entries: Sequence[Entry], tokenize: Tokenize) -> dict[str, float | int]:
    """Token counts of a workload's texts (each text alone, without the prompt template)."""
    query = [len(tokenize(e.query)) for e in entries]
    docs = [len(tokenize(d)) for e in entries for d in e.documents]
    return {"entries": len(entries), "documents_per_request": round(len(docs) / len(entries), 1),
            "query_tokens_mean": round(statistics.mean(query), 1),
            "document_tokens_mean": round(statistics.mean(docs), 1),
            "document_tokens_min": min(docs), "document_tokens_max": max(docs),
            "text_tokens_per_request": round(sum(query + docs) / len(entries), 1)}


def model_tokenizer(model_path: Path) -> tuple[Tokenize, Callable[[], None]]:
    """The engine's plain-text tokenizer on a GGUF's vocabulary, and a function that releases the model."""
    from rerank_engine.llama_runner import LlamaRunner, RunnerOptions

    runner = LlamaRunner(str(model_path), RunnerOptions())
    return runner.tokenize, runner.close


def ensure_workloads(names: Sequence[str], model_path: Path, directory: Path = WORKLOAD_DIR) -> None:
    """Generate the workload files that are missing (the committed ones are kept as they are)."""
    missing = [name for name in names if not path_of(name, directory).is_file()]
    if not missing:
        return
    directory.mkdir(parents=True, exist_ok=True)
    tokenize, release = model_tokenizer(model_path)
    try:
        for name in missing:
            path_of(name, directory).write_text(dumps(generate(WORKLOADS[name], tokenize)), encoding="utf-8")
            print(f"generated {path_of(name, directory)}", flush=True)
    finally:
        release()


def main(argv: Sequence[str] | None = None) -> int:
    from perf.common import ensure_standin

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"workloads: {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--model", type=Path, help="GGUF whose vocabulary measures lengths (default: the stand-in)")
    parser.add_argument("--out", type=Path, default=WORKLOAD_DIR, help="folder for the JSON files")
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads: {', '.join(unknown)}")
    tokenize, release = model_tokenizer(args.model or ensure_standin()[0])
    differ = []
    try:
        for name in args.names or list(WORKLOADS):
            entries = generate(WORKLOADS[name], tokenize)
            path = path_of(name, args.out)
            if args.check:
                if not path.is_file() or path.read_text(encoding="utf-8") != dumps(entries):
                    differ.append(str(path))
            else:
                args.out.mkdir(parents=True, exist_ok=True)
                path.write_text(dumps(entries), encoding="utf-8")
            print(f"{name}: {json.dumps(token_stats(entries, tokenize))}")
    finally:
        release()
    if not args.check:
        print("AIPerf's datasets of these requests: "
              "python -m perf.aiperf.aiperf_dataset rewrites perf/aiperf/ from them")
    if differ:
        print(f"differ from what the generator makes: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
