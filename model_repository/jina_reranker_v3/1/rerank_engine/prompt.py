"""jina-reranker-v3's listwise prompt, assembled as token ids.

Template control and marker tokens are inserted by id. Each stretch of text
between two of them (template text and user text together) is tokenised as one
string with special-token parsing off, so user text can never forge a marker or
a control token, and BPE merges at the template/user boundary match what the
model was trained on. The prompt stops at the query marker: attention is causal,
so nothing after it can change an extracted hidden state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

SYSTEM_PROMPT = (
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant "
    "they are to the query. If the query is a question, how relevant a passage is depends on how well it "
    "answers the question. If not, try to analyze the intent of the query and assess how well each passage "
    "satisfies the intent. If an instruction is provided, you should follow the instruction when determining "
    "the ranking."
)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
EMBED_TOKEN, RERANK_TOKEN = "<|embed_token|>", "<|rerank_token|>"
TEMPLATE_TOKENS = (IM_START, IM_END, EMBED_TOKEN, RERANK_TOKEN)

# Upper bound on the tokens the per-document wrapper ('\n</passage>\n<passage id="123">\n' and
# the marker) adds around a document's own tokens, merges at its edges included.
DOC_WRAPPER_TOKENS = 16

Tokenize = Callable[[str], list[int]]


@dataclasses.dataclass(frozen=True)
class Block:
    """One forward pass: token ids and where to read hidden states (documents in order, then the query)."""

    ids: list[int]
    doc_positions: list[int]
    query_position: int

    @property
    def output_positions(self) -> list[int]:
        return [*self.doc_positions, self.query_position]


def opening_text(n_docs: int, query: str) -> str:
    """The user turn's opening line, up to and including the query (without its line break)."""
    return (f"user\nI will provide you with {n_docs} passages, each indicated by a numerical identifier. "
            f"Rank the passages based on their relevance to query: {query}")


def build_block(query: str, docs: Sequence[str], instruction: str | None, tokenize: Tokenize,
                token_ids: dict[str, int], opening_query_marker: bool = False) -> Block:
    """Token ids of one pass over ``docs``; ``tokenize`` must not parse special tokens.

    ``opening_query_marker`` (jina-reranker-v3.5, ``recipes``): a query marker right after the query of the
    opening line too; only the last marker's state is read.
    """
    im_start, im_end = token_ids[IM_START], token_ids[IM_END]
    embed, rerank = token_ids[EMBED_TOKEN], token_ids[RERANK_TOKEN]
    ids = [im_start, *tokenize("system\n" + SYSTEM_PROMPT), im_end, *tokenize("\n"), im_start]
    doc_positions = []
    lead = opening_text(len(docs), query)
    if opening_query_marker:
        ids += tokenize(lead)
        ids.append(rerank)
        lead = ""
    lead += "\n" + (f"<instruct>\n{instruction}\n</instruct>\n" if instruction else "")
    for i, doc in enumerate(docs):
        ids += tokenize(f'{lead}<passage id="{i}">\n{doc}')
        doc_positions.append(len(ids))
        ids.append(embed)
        lead = "\n</passage>\n"
    ids += tokenize(f"{lead}<query>\n{query}")
    ids.append(rerank)
    return Block(ids, doc_positions, len(ids) - 1)


def template_tokens(tokenize: Tokenize, token_ids: dict[str, int], opening_query_marker: bool = False) -> int:
    """Tokens a block without documents adds to its query (there twice) and instruction: the system turn,
    the header, the instruction's wrapper, the query's wrapper and marker(s) (``build_block``'s recipe flag).

    Counted on a block built with one-token placeholders, so that every wrapper the template adds is in it;
    how the texts merge at their edges is left to the caller's slack.
    """
    placeholder = "x"
    block = build_block(placeholder, [], placeholder, tokenize, token_ids, opening_query_marker)
    return len(block.ids) - 3 * len(tokenize(placeholder))


def plan_blocks(doc_lengths: Sequence[int], capacity: int, max_item_tokens: int,
                max_docs: int) -> list[list[int]]:
    """Split documents (by index, order kept) into passes, as the model's reference does.

    A block closes when it holds ``max_docs`` documents or when its remaining
    capacity falls to ``max_item_tokens`` or below, so the next document always
    fits. ``doc_lengths`` and ``max_item_tokens`` include the per-document wrapper.
    """
    if capacity <= max_item_tokens:
        raise ValueError(f"capacity {capacity} must exceed the largest document ({max_item_tokens} tokens)")
    blocks: list[list[int]] = [[]]
    remaining = capacity
    for index, length in enumerate(doc_lengths):
        blocks[-1].append(index)
        remaining -= length
        if len(blocks[-1]) >= max_docs or remaining <= max_item_tokens:
            blocks.append([])
            remaining = capacity
    return [block for block in blocks if block]
