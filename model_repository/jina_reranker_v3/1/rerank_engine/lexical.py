"""The fast first stage of a budgeted answer: BM25 over the request's own documents.

When a deadline leaves no time to score every document with the model, documents are ranked
lexically first (milliseconds for hundreds of chunks) and the model scores the best of them.
Scoring is ``bm25s`` (Lucene's BM25 variant, NumPy only); the terms are ours, because web
pages come in every script: words are Unicode ``\\w`` runs, case- and width-folded, and text
in scripts written without spaces (Chinese, Japanese, Korean, Thai, Lao, Khmer, Myanmar) is cut
into overlapping character pairs, the usual stand-in for a word segmenter.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence

import bm25s
import numpy as np

WORD = re.compile(r"\w+")
# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, Hangul Jamo and syllables,
# CJK punctuation-free ranges (Hiragana, Katakana, Han, compatibility ideographs).
UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff]+"
)

logging.getLogger("bm25s").setLevel(logging.WARNING)


def terms(text: str) -> list[str]:
    """Index terms of ``text``: folded words, and character pairs for unspaced scripts."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for word in WORD.findall(folded):
        start = 0
        for run in UNSPACED.finditer(word):
            if run.start() > start:
                out.append(word[start:run.start()])
            chars = run.group()
            out += [chars] if len(chars) == 1 else [chars[i:i + 2] for i in range(len(chars) - 1)]
            start = run.end()
        if start < len(word):
            out.append(word[start:])
    return out


def bm25_scores(query: str, documents: Sequence[str]) -> np.ndarray:
    """BM25 score of each document for ``query`` (float32, input order; 0 where no term matches)."""
    corpus = [terms(doc) for doc in documents]
    query_terms = terms(query)
    vocabulary = {term for doc in corpus for term in doc}
    wanted = [term for term in query_terms if term in vocabulary]
    if not wanted:
        return np.zeros(len(documents), dtype=np.float32)
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    return np.asarray(index.get_scores(wanted), dtype=np.float32)


def lexical_order(query: str, documents: Sequence[str]) -> list[int]:
    """Document indices, best BM25 score first; ties keep page order."""
    scores = bm25_scores(query, documents)
    return sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))
