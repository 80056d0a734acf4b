"""An independent jina-reranker-v3 / v3.5 reference in plain NumPy, for tests and benchmarks only.

It shares nothing with the engine but the tokenizer (passed in as two functions):
its own GGUF reading and dequantisation, a float64 Qwen3 forward pass, its own
prompt assembly written straight from the model's description, its own block
packing and the multi-block merge rule. Slow by design; meant for small models.

v3.5's sliding window: on the layers its pattern marks, a key is masked when query position - key position
>= window (Hugging Face masks ``kv_idx <= q_idx - window``; llama.cpp's LLAMA_SWA_TYPE_STANDARD is the same).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import gguf
import numpy as np
from safetensors.numpy import load_file

Tokenize = Callable[[str], list[int]]
Detokenize = Callable[[list[int]], str]

SYSTEM = (
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant "
    "they are to the query. If the query is a question, how relevant a passage is depends on how well it "
    "answers the question. If not, try to analyze the intent of the query and assess how well each passage "
    "satisfies the intent. If an instruction is provided, you should follow the instruction when determining "
    "the ranking."
)
SPECIALS = ("<|im_start|>", "<|im_end|>", "<|embed_token|>", "<|rerank_token|>")


@dataclasses.dataclass(frozen=True)
class Special:
    """A template token that must be inserted by id, never tokenised from text."""

    name: str


class Qwen3Reference:
    """Float64 Qwen3 forward pass over the GGUF's own (dequantised) tensors."""

    def __init__(self, gguf_path: str, sliding_window: int | None = None,
                 sliding_pattern: Sequence[bool] | None = None) -> None:
        """``sliding_window`` / ``sliding_pattern`` override the file's (tests: what if they were ignored or
        off by one); 0 / all False is plain causal attention."""
        reader = gguf.GGUFReader(gguf_path)
        arch = _field(reader, "general.architecture")

        def hp(name: str):
            return _field(reader, f"{arch}.{name}")

        self.n_layer = int(hp("block_count"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv"))
        self.head_dim = int(hp("attention.key_length"))
        self.rope_theta = float(hp("rope.freq_base"))
        self.eps = float(hp("attention.layer_norm_rms_epsilon"))
        window_key, pattern_key = f"{arch}.attention.sliding_window", f"{arch}.attention.sliding_window_pattern"
        file_window = int(_field(reader, window_key)) if window_key in reader.fields else 0
        file_pattern = (_sliding_layers(reader.fields[pattern_key], self.n_layer) if pattern_key in reader.fields
                        else [False] * self.n_layer)
        self.sliding_window = file_window if sliding_window is None else sliding_window
        self.sliding_pattern = list(file_pattern if sliding_pattern is None else sliding_pattern)
        self.w: dict[str, np.ndarray] = {}
        for tensor in reader.tensors:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            self.w[tensor.name] = np.asarray(values, dtype=np.float64).reshape(
                [int(d) for d in reversed(tensor.shape)])

    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """NeoX rotation (first half paired with second half); x is [tokens, heads, head_dim]."""
        half = self.head_dim // 2
        inv_freq = self.rope_theta ** (-np.arange(half, dtype=np.float64) * 2.0 / self.head_dim)
        angles = np.arange(x.shape[0], dtype=np.float64)[:, None] * inv_freq[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        """Final-norm output of the last layer at every position, shape [len(ids), n_embd]."""
        n = len(ids)
        x = self.w["token_embd.weight"][np.asarray(ids)]
        causal = np.triu(np.full((n, n), -np.inf), k=1)
        distance = np.arange(n)[:, None] - np.arange(n)[None, :]
        windowed = np.where(distance >= self.sliding_window, -np.inf, causal) if self.sliding_window else causal
        group = self.n_head // self.n_head_kv
        for i in range(self.n_layer):
            w = {k.split(".", 2)[2]: v for k, v in self.w.items() if k.startswith(f"blk.{i}.")}
            h = self._rms(x, w["attn_norm.weight"])
            q = (h @ w["attn_q.weight"].T).reshape(n, self.n_head, self.head_dim)
            k = (h @ w["attn_k.weight"].T).reshape(n, self.n_head_kv, self.head_dim)
            v = (h @ w["attn_v.weight"].T).reshape(n, self.n_head_kv, self.head_dim)
            q = self._rope(self._rms(q, w["attn_q_norm.weight"]))
            k = self._rope(self._rms(k, w["attn_k_norm.weight"]))
            # [heads, tokens, head_dim]: matmul runs each head's products on BLAS, where einsum took 7 of the
            # 12.7 s a 3,900-token prompt cost; the softmax works in place on the [heads, n, n] scores
            q, k, v = (t.transpose(1, 0, 2) for t in (q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)))
            mask = windowed if self.sliding_pattern[i] else causal
            att = q @ k.transpose(0, 2, 1)
            att /= np.sqrt(self.head_dim)
            att += mask
            att -= att.max(axis=-1, keepdims=True)
            np.exp(att, out=att)
            att /= att.sum(axis=-1, keepdims=True)
            out = (att @ v).transpose(1, 0, 2).reshape(n, self.n_head * self.head_dim)
            x = x + out @ w["attn_output.weight"].T
            h = self._rms(x, w["ffn_norm.weight"])
            gate = h @ w["ffn_gate.weight"].T
            x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ w["ffn_up.weight"].T)) @ w["ffn_down.weight"].T
        return self._rms(x, self.w["output_norm.weight"])


def _sliding_layers(field: gguf.ReaderField, n_layer: int) -> list[bool]:
    """A sliding-window pattern in either of llama.cpp's forms: one bool per layer (true = sliding), or a scalar
    period whose last layer is global (0: every layer sliding), as llama_hparams::set_swa_pattern reads it."""
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [bool(field.parts[i][0]) for i in field.data]
    period = int(field.parts[field.data[0]][0])
    return [period == 0 or layer % period < period - 1 for layer in range(n_layer)]


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value[0]


def load_projector(path: str) -> tuple[np.ndarray, np.ndarray]:
    tensors = load_file(path)
    for first, second in (("projector.0.weight", "projector.2.weight"), ("linear1.weight", "linear2.weight")):
        if first in tensors:
            return tensors[first].astype(np.float64), tensors[second].astype(np.float64)
    raise KeyError(f"no projector weights in {path}: {sorted(tensors)}")


def project(hidden: np.ndarray, projector: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    w1, w2 = projector
    return np.maximum(hidden @ w1.T, 0.0) @ w2.T


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of b with the vector a."""
    return (b @ a) / (np.linalg.norm(b, axis=-1) * np.linalg.norm(a))


def prompt_pieces(query: str, docs: Sequence[str], instruction: str | None,
                  opening_query_marker: bool = False) -> list[str | Special]:
    """The prompt as the model's reference builds it, cut off after the (last) query marker.

    ``opening_query_marker``: v3.5's GGUF recipe, a query marker after the opening line's query as well.
    """
    pieces: list[str | Special] = [
        Special("<|im_start|>"), "system\n", SYSTEM, Special("<|im_end|>"), "\n", Special("<|im_start|>"),
        "user\n",
        f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
        f"Rank the passages based on their relevance to query: {query}",
        *([Special("<|rerank_token|>")] if opening_query_marker else []),
        "\n",
    ]
    if instruction:
        pieces.append(f"<instruct>\n{instruction}\n</instruct>\n")
    for i, doc in enumerate(docs):
        if i:
            pieces.append("\n")
        pieces += [f'<passage id="{i}">\n{doc}', Special("<|embed_token|>"), "\n</passage>"]
    pieces += ["\n", f"<query>\n{query}", Special("<|rerank_token|>")]
    return pieces


def prompt_ids(pieces: Sequence[str | Special], tokenize: Tokenize,
               special_ids: dict[str, int]) -> tuple[list[int], list[int], int]:
    """Token ids, the document marker positions and the query marker position."""
    ids: list[int] = []
    doc_positions: list[int] = []
    text = ""
    for piece in [*pieces, None]:
        if isinstance(piece, str):
            text += piece
            continue
        if text:
            ids += tokenize(text)
            text = ""
        if piece is None:
            break
        if piece.name == "<|embed_token|>":
            doc_positions.append(len(ids))
        ids.append(special_ids[piece.name])
    assert ids[-1] == special_ids["<|rerank_token|>"]
    return ids, doc_positions, len(ids) - 1


def truncate(text: str, limit: int, tokenize: Tokenize, detokenize: Detokenize) -> str:
    ids = tokenize(text)
    return text if len(ids) <= limit else detokenize(ids[:limit])


def pack_blocks(doc_lengths: Sequence[int], capacity: int, max_doc_tokens: int,
                block_size: int = 125) -> list[list[int]]:
    """The reference's packing: a block closes at ``block_size`` documents or when the remaining
    capacity falls to ``max_doc_tokens`` or below."""
    blocks: list[list[int]] = [[]]
    remaining = capacity
    for i, length in enumerate(doc_lengths):
        blocks[-1].append(i)
        remaining -= length
        if len(blocks[-1]) >= block_size or remaining <= max_doc_tokens:
            blocks.append([])
            remaining = capacity
    return [b for b in blocks if b]


@dataclasses.dataclass
class ReferenceResult:
    scores: np.ndarray
    doc_embeddings: np.ndarray
    blocks: list[list[int]]
    hidden: list[np.ndarray]  # per block: marker rows, documents then query


def rerank(model: Qwen3Reference, projector: tuple[np.ndarray, np.ndarray], tokenize: Tokenize,
           detokenize: Detokenize, special_ids: dict[str, int], query: str, docs: Sequence[str],
           instruction: str | None = None, blocks: list[list[int]] | None = None,
           max_query_tokens: int = 512, max_doc_tokens: int = 2048,
           context_limit: int = 131072, opening_query_marker: bool = False,
           scored_marker: int = -1) -> ReferenceResult:
    """Scores for ``docs``; ``blocks`` overrides the packing (to mirror an engine's context size).

    ``scored_marker``: which query marker's state is scored, counted like a list index (tests: the wrong one).
    """
    query = truncate(query, max_query_tokens, tokenize, detokenize)
    docs = [truncate(d, max_doc_tokens, tokenize, detokenize) for d in docs]
    if blocks is None:
        capacity = context_limit - 2 * len(tokenize(query))
        blocks = pack_blocks([len(tokenize(d)) for d in docs], capacity, max_doc_tokens)
    doc_embeddings = np.zeros((len(docs), projector[1].shape[0]))
    query_embeddings, weights, hidden = [], [], []
    for block in blocks:
        ids, doc_pos, _ = prompt_ids(prompt_pieces(query, [docs[i] for i in block], instruction,
                                                   opening_query_marker), tokenize, special_ids)
        query_pos = [p for p, token in enumerate(ids) if token == special_ids["<|rerank_token|>"]][scored_marker]
        states = model.hidden_states(ids)[[*doc_pos, query_pos]]
        hidden.append(states)
        projected = project(states, projector)
        doc_embeddings[block] = projected[:-1]
        query_embeddings.append(projected[-1])
        weights.append(np.max((1.0 + cosine(projected[-1], projected[:-1])) / 2.0))
    merged = query_embeddings[0] if len(blocks) == 1 else (
        np.sum([w * q for w, q in zip(weights, query_embeddings, strict=True)], axis=0) / np.sum(weights))
    return ReferenceResult(cosine(merged, doc_embeddings), doc_embeddings, blocks, hidden)
