"""Write jina-reranker-v3/v3.5-shaped test models: a random-weight ``qwen3`` GGUF and its projector.

The real weights cannot be downloaded on build machines, yet the engine must be
checked against llama.cpp for real. These models have the real architecture,
tokenizer kind and marker tokens, so everything but the weights' values is
exercised; compute cost depends only on the shapes, so the ``qwen3-0.6b`` preset
is an honest timing stand-in. The ``-v35`` presets add v3.5's sliding-window keys (a window and one bool per
layer, true = sliding) and its name; the tiny one has a window of 12 tokens so that short prompts cross it.

    python models/generate_test_model.py --preset tiny --dtype q8_0 --out .cache/models/tiny-q8
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import struct
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

from models.gguf_metadata import read_metadata

EMBED_TOKEN = "<|embed_token|>"
RERANK_TOKEN = "<|rerank_token|>"
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Where the released vocabulary keeps the markers; used when the real Qwen2 vocabulary is taken.
RELEASED_MARKER_IDS = {EMBED_TOKEN: 151670, RERANK_TOKEN: 151671}

DTYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "bf16": gguf.GGMLQuantizationType.BF16,
}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
PROJECTOR_KEYS = {"gguf": ("projector.0.weight", "projector.2.weight"),
                  "mlx": ("linear1.weight", "linear2.weight")}
# Text the synthetic tokenizer learns its merges from, so common words become few tokens.
MERGE_CORPUS = (
    "You are a search relevance expert who can determine a ranking of the passages based on how "
    "relevant they are to the query. I will provide you with passages, each indicated by a numerical "
    "identifier. Rank the passages based on their relevance to query passage id query instruct system "
    "user assistant the of and to in is that for with as on was by it at from this an be are which "
    "have not or has his her they their were one all we can there been more other when what would "
    '<passage id="0">\n</passage>\n<passage id="1">\n</passage>\n<query>\n</query> <instruct>\n</instruct>\n'
)


# Close to the qwen2 pre-tokenizer llama.cpp applies, so learned merges are ones it can use.
PRE_TOKENIZER = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Shapes and options of a generated model; every size is free, nothing assumes the real ones."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_ff: int = 128
    context_length: int = 8192
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    vocab: str = "synthetic"  # "synthetic" (small, built here) or "qwen2" (the real BPE vocabulary)
    n_merges: int = 400  # synthetic vocabulary only
    projector_hidden: int = 32
    projector_out: int = 32
    projector_keys: str = "gguf"  # "gguf" (projector.0/2) or "mlx" (linear1/2)
    projector_dtype: str = "f32"  # "f32", "f16" or "bf16"
    marker_token_type: int = int(gguf.TokenType.CONTROL)
    architecture: str = "qwen3"  # "qwen2" (no QK-norm) gives a loadable model of the wrong architecture
    include_markers: tuple[str, ...] = (EMBED_TOKEN, RERANK_TOKEN)
    seed: int = 0
    release: str = "jina-reranker-v3"  # written into general.name
    sliding_window: int = 0  # 0: no sliding-window keys (v3)
    sliding_pattern: tuple[bool, ...] = ()  # one per layer, true = sliding; written with a window only
    # >= 0: the pattern written as llama.cpp's other form, a scalar period (the last layer of each period global,
    # 0 = every layer sliding), instead of sliding_pattern; -1: the per-layer form
    sliding_period: int = -1


def v35_pattern(n_layer: int) -> tuple[bool, ...]:
    """A stand-in for v3.5's "3L2G" layout: three sliding layers, then two global ones, the last layer global."""
    return tuple(i % 5 < 3 and i != n_layer - 1 for i in range(n_layer))


PRESETS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(),
    "qwen3-0.6b": ModelSpec(n_layer=28, n_embd=1024, n_head=16, n_head_kv=8, head_dim=128, n_ff=3072,
                            context_length=131072, vocab="qwen2", projector_hidden=512, projector_out=512),
}
PRESETS["tiny-v35"] = dataclasses.replace(PRESETS["tiny"], n_layer=4, release="jina-reranker-v3.5",
                                          sliding_window=12, sliding_pattern=(True, False, True, False))
PRESETS["qwen3-0.6b-v35"] = dataclasses.replace(PRESETS["qwen3-0.6b"], release="jina-reranker-v3.5",
                                                sliding_window=1024, sliding_pattern=v35_pattern(28))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def synthetic_vocab(n_merges: int) -> tuple[list[str], list[int], list[str]]:
    """A byte-level BPE vocabulary: 256 byte symbols plus merges learned from ``MERGE_CORPUS``."""
    byte_map = bytes_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    words = Counter("".join(byte_map[b] for b in w.encode()) for w in PRE_TOKENIZER.findall(MERGE_CORPUS))
    words_split = {w: list(w) for w in words}
    merges: list[str] = []
    known = set(tokens)
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, parts in words_split.items():
            for a, b in itertools.pairwise(parts):
                pairs[(a, b)] += words[word]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda item: (item[1], item[0]))
        merges.append(f"{a} {b}")
        if a + b not in known:
            tokens.append(a + b)
            known.add(a + b)
        for word, parts in words_split.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            words_split[word] = merged
    return tokens, [int(gguf.TokenType.NORMAL)] * len(tokens), merges


def qwen2_vocab_path(cache_dir: Path = Path(".cache")) -> Path:
    """The real Qwen2 vocabulary, extracted once from the llama-cpp-python sdist the build keeps."""
    target = cache_dir / "ggml-vocab-qwen2.gguf"
    if target.exists():
        return target
    sdists = sorted((cache_dir / "sdist").glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise FileNotFoundError(f"no llama-cpp-python sdist under {cache_dir / 'sdist'}; run `make install` first")
    with tarfile.open(sdists[-1]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("models/ggml-vocab-qwen2.gguf"))
        data = archive.extractfile(member).read()  # type: ignore[union-attr]
    tmp = target.with_suffix(f".{os.getpid()}.tmp")  # two test processes may extract it at once
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def qwen2_vocab() -> tuple[list[str], list[int], list[str]]:
    fields = read_metadata(qwen2_vocab_path())
    return fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"], fields["tokenizer.ggml.merges"]


def build_vocab(spec: ModelSpec) -> tuple[list[str], list[int], list[str]]:
    """Vocabulary with the chat control tokens and the requested marker tokens."""
    tokens, types, merges = qwen2_vocab() if spec.vocab == "qwen2" else synthetic_vocab(spec.n_merges)
    for name in CHAT_TOKENS:
        if name not in tokens:
            tokens.append(name)
            types.append(int(gguf.TokenType.CONTROL))
    for name in spec.include_markers:
        slot = RELEASED_MARKER_IDS[name]
        if slot < len(tokens) and tokens[slot].startswith("[PAD"):
            tokens[slot] = name
            types[slot] = spec.marker_token_type
        else:
            tokens.append(name)
            types.append(spec.marker_token_type)
    return tokens, types, merges


def random_weights(spec: ModelSpec, n_vocab: int) -> dict[str, np.ndarray]:
    """Tensors named and shaped as llama.cpp's qwen3 loader expects (NumPy row = output feature)."""
    rng = np.random.default_rng(spec.seed)

    def linear(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    q_dim, kv_dim = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    tensors = {"token_embd.weight": rng.standard_normal((n_vocab, spec.n_embd)).astype(np.float32)}
    for i in range(spec.n_layer):
        tensors |= {
            f"blk.{i}.attn_norm.weight": norm(spec.n_embd),
            f"blk.{i}.attn_q.weight": linear(q_dim, spec.n_embd),
            f"blk.{i}.attn_k.weight": linear(kv_dim, spec.n_embd),
            f"blk.{i}.attn_v.weight": linear(kv_dim, spec.n_embd),
            f"blk.{i}.attn_output.weight": linear(spec.n_embd, q_dim),
            f"blk.{i}.ffn_norm.weight": norm(spec.n_embd),
            f"blk.{i}.ffn_gate.weight": linear(spec.n_ff, spec.n_embd),
            f"blk.{i}.ffn_up.weight": linear(spec.n_ff, spec.n_embd),
            f"blk.{i}.ffn_down.weight": linear(spec.n_embd, spec.n_ff),
        }
        if spec.architecture == "qwen3":  # Qwen3's per-head RMSNorm on queries and keys
            tensors |= {f"blk.{i}.attn_q_norm.weight": norm(spec.head_dim),
                        f"blk.{i}.attn_k_norm.weight": norm(spec.head_dim)}
    tensors["output_norm.weight"] = norm(spec.n_embd)
    return tensors


def write_gguf(spec: ModelSpec, dtype: str, path: Path) -> None:
    tokens, types, merges = build_vocab(spec)
    arch = spec.architecture
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"{spec.release} test model ({spec.n_layer}x{spec.n_embd}, {dtype}, random weights)")
    writer.add_file_type(int(FILE_TYPES[dtype]))
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.sliding_window:
        writer.add_sliding_window(spec.sliding_window)
        if spec.sliding_period >= 0:
            writer.add_uint32(f"{arch}.attention.sliding_window_pattern", spec.sliding_period)
        elif len(spec.sliding_pattern) != spec.n_layer:
            raise ValueError(f"sliding_pattern has {len(spec.sliding_pattern)} entries for {spec.n_layer} layers")
        else:
            writer.add_array(f"{arch}.attention.sliding_window_pattern", [bool(x) for x in spec.sliding_pattern])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    end_of_text = tokens.index("<|endoftext|>")
    writer.add_bos_token_id(end_of_text)
    writer.add_eos_token_id(end_of_text)
    writer.add_pad_token_id(end_of_text)
    writer.add_add_bos_token(False)

    qtype = DTYPES[dtype]
    for name, array in random_weights(spec, len(tokens)).items():
        if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_projector(spec: ModelSpec, path: Path) -> None:
    rng = np.random.default_rng(spec.seed + 1)
    first, second = PROJECTOR_KEYS[spec.projector_keys]
    tensors = {
        first: (rng.standard_normal((spec.projector_hidden, spec.n_embd)) / np.sqrt(spec.n_embd)).astype(np.float32),
        second: (rng.standard_normal((spec.projector_out, spec.projector_hidden))
                 / np.sqrt(spec.projector_hidden)).astype(np.float32),
    }
    if spec.projector_dtype == "bf16":
        write_bf16_safetensors(tensors, path)
    else:
        save_file({k: v.astype(np.float16 if spec.projector_dtype == "f16" else np.float32)
                   for k, v in tensors.items()}, str(path))


def write_bf16_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """safetensors.numpy cannot write BF16 (NumPy has no such type): the format by hand, values truncated."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        blob = (np.ascontiguousarray(array, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def generate(spec: ModelSpec, dtype: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``model.gguf`` and ``projector.safetensors`` into ``out_dir``; return both paths."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model, projector = out_dir / "model.gguf", out_dir / "projector.safetensors"
    write_gguf(spec, dtype, model)
    write_projector(spec, projector)
    return model, projector


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="q8_0")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.gguf and projector.safetensors")
    parser.add_argument("--vocab", choices=("synthetic", "qwen2"), help="override the preset's vocabulary")
    parser.add_argument("--projector-keys", choices=sorted(PROJECTOR_KEYS), help="override the key scheme")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"vocab": args.vocab, "projector_keys": args.projector_keys,
                                   "seed": args.seed}.items() if v is not None}
    spec = dataclasses.replace(PRESETS[args.preset], **overrides)
    model, projector = generate(spec, args.dtype, args.out)
    print(f"wrote {model} ({model.stat().st_size / 1e6:.1f} MB) and {projector}")


if __name__ == "__main__":
    main()
