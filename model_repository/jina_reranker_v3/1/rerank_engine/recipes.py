"""What differs between jina-reranker-v3 and v3.5, in one place, and which one a GGUF file is.

Both are the same Qwen3-0.6B listwise model with the same projector and scoring; v3.5 attends within a sliding
window on most layers (llama.cpp runs that from the GGUF's own keys, with stack/patches/
llama-qwen3-sliding-window.patch) and its prompt and truncation limits differ. The v3.5 recipe is that of
Jina's GGUF reference script (``rerank.py``) as reported publicly: a ``<|rerank_token|>`` right after the
query in the user message's opening line, whose state is discarded, the usual ``<query>`` block whose marker is
the one scored, and longer truncation limits. The closing line that script adds after the ``<query>`` block
lies past the scored marker, so under causal attention it changes nothing and is never computed.
"""

from __future__ import annotations

import dataclasses

# The GGUF keys of a sliding window (after the architecture's prefix).
SLIDING_WINDOW_KEY = "attention.sliding_window"
SLIDING_WINDOW_PATTERN_KEY = "attention.sliding_window_pattern"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one release builds its prompt and truncates its inputs."""

    name: str  # the release, as reported to clients
    # A <|rerank_token|> right after the query in the opening line (its state is not scored).
    opening_query_marker: bool
    max_query_tokens: int  # also the limit for an instruction
    max_doc_tokens: int
    max_docs_per_block: int


V3 = Recipe("jina-reranker-v3", opening_query_marker=False, max_query_tokens=512, max_doc_tokens=2048,
            max_docs_per_block=125)
V3_5 = Recipe("jina-reranker-v3.5", opening_query_marker=True, max_query_tokens=2048, max_doc_tokens=8192,
              max_docs_per_block=125)


class RecipeError(ValueError):
    """The file cannot be served as what it is (a v3.5 model that llama.cpp would run with global attention)."""


def select(general_name: str | None, declared_window: int, effective_window: int) -> Recipe:
    """The recipe of a GGUF file: its ``general.name``, the window its metadata declares, and the window
    llama.cpp runs (``llama_model_n_swa``: 0 unless some layer slides).

    A file whose declared window llama.cpp does not run (no per-layer pattern in the file, or a llama.cpp
    without this project's patch), or one named v3.5 without any window, would be scored with global attention
    on every layer, silently wrong: refused rather than served. Otherwise the window decides, whatever the name.
    """
    if declared_window and not effective_window:
        raise RecipeError(f"the file declares a sliding window of {declared_window} tokens ({SLIDING_WINDOW_KEY}) "
                          "but llama.cpp runs every layer globally: the file lacks the per-layer "
                          f"{SLIDING_WINDOW_PATTERN_KEY}, or llama.cpp was built without "
                          "stack/patches/llama-qwen3-sliding-window.patch (make install)")
    if effective_window:
        return V3_5
    if general_name is not None and "v3.5" in general_name.lower():
        raise RecipeError(f"general.name {general_name!r} names jina-reranker-v3.5 but the file has no "
                          f"sliding-window keys ({SLIDING_WINDOW_KEY}, {SLIDING_WINDOW_PATTERN_KEY}): every layer "
                          "would attend globally; convert it again with the keys")
    return V3
