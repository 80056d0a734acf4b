"""LibreChat-shaped web search requests: generated pages that look like scraped web text, chunked as LibreChat does.

LibreChat's web search (``@librechat/agents`` 3.9.2, ``dist/cjs/tools/search/search.cjs``) scrapes several
sources at once and, for EACH source: cleans the scraped text (line endings to ``\\n``, whitespace around
line breaks and blank lines dropped, runs of spaces and tabs to one space), cuts it at 50,000 characters,
splits it with LangChain's ``RecursiveCharacterTextSplitter`` (separators ``"\\n\\n"``, ``"\\n"``; chunk size
150, overlap 50) and sends ALL chunks of that source in one rerank request with ``top_n`` 5.

The splitting here is LangChain's own Python splitter (``langchain-text-splitters``) with those settings plus
one more separator, ``""``: LibreChat runs the JavaScript splitter (``@langchain/textsplitters`` 1.0.2),
which, once the listed separators are used up, splits a line that is still longer than the chunk size
into characters (it tests an empty list of further separators for truth, and an empty array is true in
JavaScript); the Python splitter keeps such a line whole unless ``""`` is listed. With ``""`` both give
the same chunks for a cleaned page (checked against the JavaScript splitter by tests/test_librechat_search.py
where the npm package is installed).

Pages: a site's navigation, a language switcher, a title and byline, then sections of headings, paragraphs
(one line each, often longer than a chunk), bulleted and numbered lists, code blocks, tables and short
lines, and a footer; text from Faker's word lists in the page's language, seeded, so the same pages come
out every time with the pinned Faker.
"""

from __future__ import annotations

import datetime
import random
import re
import zlib
from collections.abc import Sequence
from functools import cache

# LibreChat's defaults (SEARCH_MAX_CONTENT_LENGTH, SEARCH_CHUNK_SIZE, SEARCH_CHUNK_OVERLAP).
MAX_CONTENT_CHARS = 50_000
CHUNK_SIZE, CHUNK_OVERLAP = 150, 50
SEPARATORS = ("\n\n", "\n")

LANGUAGE_SWITCHER = "English | Deutsch | Français | Español | Italiano | Русский | 中文 | 日本語"
CODE_LANGUAGES = ("python", "bash", "javascript", "json")


def clean_text(text: str) -> str:
    """What LibreChat does to a scraped page before cutting and splitting it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"\\+\n", "\n", text)
    text = re.sub(r"[\t ]*\n[\t \n]*", "\n", text)
    return re.sub(r"[ \t]+", " ", text).strip()


@cache
def _splitter() -> object:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(separators=[*SEPARATORS, ""], chunk_size=CHUNK_SIZE,
                                          chunk_overlap=CHUNK_OVERLAP)


def chunks_of(page: str) -> list[str]:
    """The documents of the one rerank request LibreChat sends for a scraped page."""
    return _splitter().split_text(clean_text(page)[:MAX_CONTENT_CHARS])


# -- generation ---------------------------------------------------------------------------------------


def _faker(locale: str, key: str) -> object:
    """A Faker of its own for ``locale``, seeded from ``key``."""
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(zlib.crc32(key.encode()))
    return fake


def _date(rng: random.Random) -> str:
    # Not Faker's date(): it picks a day up to today, so the pages would change from one day to the next.
    return (datetime.date(2010, 1, 1) + datetime.timedelta(days=rng.randint(0, 5800))).isoformat()


def _line(fake: object, words: int) -> str:
    return fake.sentence(nb_words=words).rstrip(".。")


def _code_block(code: object, rng: random.Random) -> list[str]:
    language = rng.choice(CODE_LANGUAGES)
    names = [f"{code.word()}_{code.word()}" for _ in range(4)]
    if language == "python":
        body = [f"def {names[0]}({names[1]}, {names[2]}=None):", f'    """{code.sentence(nb_words=8)}"""',
                f"    {names[3]} = {names[1]}.get(\"{code.word()}\", {rng.randint(1, 999)})",
                f"    return [{names[3]} * x for x in {names[2]} or []]"]
    elif language == "bash":
        body = [f"export {names[0].upper()}={code.word()}", f"mkdir -p /opt/{code.word()}/{code.word()}",
                f"{code.word()} --{code.word()} {rng.randint(1, 64)} --{code.word()}-{code.word()} ./{names[1]}.conf"]
    elif language == "javascript":
        body = [f"const {{ {names[0]} }} = require('{code.word()}');",
                f"async function {names[1]}({names[2]}) {{",
                f"  const {names[3]} = await {names[0]}({names[2]}, {{ timeout: {rng.randint(1, 60) * 1000} }});",
                f"  return {names[3]}.{code.word()};", "}"]
    else:
        body = ["{", *(f'  "{name}": "{code.word()}",' for name in names[:3]), f'  "{names[3]}": {rng.randint(0, 99)}',
                "}"]
    return [f"```{language}", *body, "```"]


def _section(fake: object, code: object, rng: random.Random, query: str) -> list[str]:
    lines = [f"## {query.capitalize() if rng.random() < 0.15 else _line(fake, rng.randint(2, 6))}", ""]
    for _ in range(rng.randint(1, 3)):
        lines += [fake.paragraph(nb_sentences=rng.randint(1, 5)), ""]
    kind = rng.random()
    if kind < 0.35:
        numbered = rng.random() < 0.4
        lines += [f"{f'{i + 1}.' if numbered else '-'} {_line(fake, rng.randint(2, 10))}"
                  for i in range(rng.randint(3, 8))] + [""]
    elif kind < 0.55:
        lines += [*_code_block(code, rng), ""]
    elif kind < 0.7:
        header = [_line(fake, 1) for _ in range(3)]
        lines += [f"| {' | '.join(header)} |", "|---|---|---|"]
        lines += [f"| {fake.word()} | {rng.randint(1, 9999)} | {_line(fake, rng.randint(1, 4))} |"
                  for _ in range(rng.randint(2, 6))] + [""]
    if rng.random() < 0.3:
        lines += [rng.choice(("Share", "Read more", "Back to top", "Print", "Copy link")),
                  f"{_date(rng)} · {rng.randint(2, 30)} min", ""]
    return lines


def page(locale: str, key: str, chars: int, query: str) -> str:
    """A scraped page of at least ``chars`` characters once cleaned, in the language of ``locale``."""
    fake, code, rng = _faker(locale, key), _faker("en_US", f"{key}/code"), random.Random(zlib.crc32(key.encode()))
    lines = [_line(fake, 1) for _ in range(rng.randint(4, 8))]  # the site's navigation
    lines += [LANGUAGE_SWITCHER, "", f"# {query.capitalize()}: {_line(fake, rng.randint(2, 5))}", "",
              f"{fake.name()} · {_date(rng)}", ""]
    footer = ["", f"© {rng.randint(2015, 2025)} {fake.company()}", " | ".join(_line(fake, 1) for _ in range(4))]
    while not _long_enough("\n".join(lines + footer), chars):
        lines += _section(fake, code, rng, query)
    return "\n".join(lines + footer)


def _long_enough(text: str, chars: int) -> bool:
    """Whether ``text`` has ``chars`` characters once cleaned. Cleaning never lengthens a text, so a shorter one is
    not cleaned at all: cleaning the page anew after each section made the search workload take 8.1 s, not 2.6."""
    return len(text) >= chars and len(clean_text(text)) >= chars


def search(locales: Sequence[str], key: str, chars: Sequence[int]) -> tuple[str, list[list[str]]]:
    """One search: its query (in the first page's language) and the chunks of each of its pages."""
    query = _line(_faker(locales[0], f"{key}/query"), 5)
    pages = [chunks_of(page(locale, f"{key}/{i}", n, query)) for i, (locale, n) in
             enumerate(zip(locales, chars, strict=True))]
    return query, pages
