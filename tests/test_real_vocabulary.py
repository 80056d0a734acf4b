"""Test models built on the real Qwen2 BPE vocabulary tokenise exactly as llama.cpp's own test vectors say.

Token counts of real text then match the released model's, which the block
planner and the benchmarks depend on.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from models.generate_test_model import RELEASED_MARKER_IDS
from rerank_engine import RerankRequest
from tests.conftest import open_engine

pytestmark = pytest.mark.integration

SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_test_vectors() -> list[tuple[str, list[int]]]:
    [sdist] = sorted(Path(".cache/sdist").glob("llama_cpp_python-*.tar.gz"))[-1:]
    with tarfile.open(sdist) as archive:
        def read(suffix: str) -> str:
            member = next(m for m in archive.getmembers() if m.name.endswith(suffix))
            return archive.extractfile(member).read().decode()  # type: ignore[union-attr]

        texts = read("models/ggml-vocab-qwen2.gguf.inp").split(SEPARATOR)[:-1]
        expected = [[int(t) for t in line.split()] for line in read("models/ggml-vocab-qwen2.gguf.out").splitlines()]
    assert len(texts) == len(expected) > 40
    return list(zip(texts, expected, strict=True))


@pytest.fixture(scope="module")
def qwen2_engine(make_model):
    return open_engine(make_model("q8_0", vocab="qwen2"))


def test_markers_sit_where_the_released_vocabulary_has_them(qwen2_engine):
    for text, token_id in RELEASED_MARKER_IDS.items():
        assert qwen2_engine.token_ids[text] == token_id
    assert qwen2_engine.runner.n_vocab == 151936


def test_tokenisation_matches_llama_cpp_test_vectors(qwen2_engine):
    for text, expected in vocab_test_vectors():
        assert qwen2_engine.tokenize(text) == expected, repr(text)


def test_realistic_token_counts(qwen2_engine):
    prompt = qwen2_engine.plan(RerankRequest("What is the capital of France?", ["Paris is its capital."])).prompts[0]
    # system prompt, template and two short texts: ~150 tokens with the real merges (the synthetic
    # test vocabulary, with a few hundred merges, needs several times more)
    assert 120 < len(prompt.ids) < 180
