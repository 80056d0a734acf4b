"""A Hugging Face tokenizer folder made from the stand-in model's GGUF vocabulary, for AIPerf, offline.

AIPerf counts tokens with a Hugging Face tokenizer: its default is a hub name, and its ``builtin`` one
downloads a tiktoken encoding at start; both fail on a machine without a model hub. ``--tokenizer`` with a
local folder (an absolute path) loads ``tokenizer.json`` from disk and asks no server. This module writes
that folder from the vocabulary the generated models carry (models/generate_test_model.py: the real Qwen2
BPE vocabulary from the llama-cpp-python sdist, plus the chat and marker tokens), so AIPerf's token counts
are jina-reranker-v3's.

    python -m perf.aiperf.aiperf_tokenizer [--out DIR]     # default .cache/aiperf/tokenizer
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from perf import ROOT

TOKENIZER_DIR = ROOT / ".cache" / "aiperf" / "tokenizer"
# Qwen2's pre-tokenizer (llama.cpp's "qwen2" pre-type): contractions, letters, single digits, punctuation
# runs, newlines, spaces. Written in the regex dialect of Hugging Face's tokenizers (Oniguruma).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# GGUF token types (gguf.TokenType) that are matched whole in text rather than built by merges.
CONTROL, USER_DEFINED = 3, 4
END_OF_TEXT = "<|endoftext|>"


def tokenizer_json(tokens: Sequence[str], types: Sequence[int], merges: Sequence[str]) -> dict:
    """tokenizer.json for a byte-level BPE vocabulary in GGUF form (tokens, token types, "a b" merges)."""
    if len(set(tokens)) != len(tokens):
        raise ValueError("the vocabulary has repeated tokens; ids would not round-trip")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": kind == CONTROL} for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
             if kind in (CONTROL, USER_DEFINED)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": list(merges)},
    }


def tokenizer_config(max_length: int) -> dict:
    """tokenizer_config.json: transformers' generic fast tokenizer over tokenizer.json, no BOS added."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
            "eos_token": END_OF_TEXT, "pad_token": END_OF_TEXT, "add_bos_token": False,
            "clean_up_tokenization_spaces": False}


def write_tokenizer(tokens: Sequence[str], types: Sequence[int], merges: Sequence[str], max_length: int,
                    out: Path = TOKENIZER_DIR) -> Path:
    """Writes the folder (only the files whose text changed) and returns it."""
    out.mkdir(parents=True, exist_ok=True)
    for name, content in (("tokenizer.json", tokenizer_json(tokens, types, merges)),
                          ("tokenizer_config.json", tokenizer_config(max_length))):
        text = json.dumps(content, ensure_ascii=False) + "\n"
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return out


def ensure_tokenizer(preset: str = "qwen3-0.6b", out: Path = TOKENIZER_DIR) -> Path:
    """The tokenizer of a generated-model preset (default: the timing stand-in's vocabulary)."""
    from models.generate_test_model import PRESETS, build_vocab

    spec = PRESETS[preset]
    tokens, types, merges = build_vocab(spec)
    return write_tokenizer(tokens, types, merges, spec.context_length, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen3-0.6b", help="generated-model preset whose vocabulary to use")
    parser.add_argument("--out", type=Path, default=TOKENIZER_DIR)
    args = parser.parse_args(argv)
    print(ensure_tokenizer(args.preset, args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
