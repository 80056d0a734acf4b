"""transformers' Qwen3 forward pass on a GGUF's own weights: the PyTorch peer the benches measure the engine against.

The config comes from the GGUF's ``qwen3.*`` metadata and the weights are its tensors dequantised with the
``gguf`` package, so both sides compute the same thing from the same values and nothing comes from a hub.
Nothing here imports torch at module level: the pure parts (weight names, metadata) are tested without it
(CI does not install torch; ``make bench`` installs perf/peers/requirements.txt).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from perf import ROOT

PEER_REQUIREMENTS = ROOT / "perf" / "peers" / "requirements.txt"

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                   "output.weight": None}  # an untied LM head: not part of Qwen3Model
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """transformers' ``Qwen3Model`` parameter name for a GGUF tensor; None for the LM head (not used)."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER.fullmatch(gguf_name)
    if not match or match[2] not in _LAYER_TENSORS:
        raise KeyError(f"no Qwen3Model counterpart for GGUF tensor {gguf_name!r}")
    return f"layers.{match[1]}.{_LAYER_TENSORS[match[2]]}.{match[3]}"


def qwen3_config(metadata: Mapping[str, object], vocab_size: int) -> dict[str, object]:
    """``Qwen3Config`` arguments from the GGUF's ``qwen3.*`` metadata: nothing comes from a hub."""
    arch = metadata["general.architecture"]
    if arch != "qwen3":
        raise ValueError(f"architecture {arch!r}: the peer is a Qwen3 forward")

    def hp(key: str) -> object:
        return metadata[f"{arch}.{key}"]

    n_head = int(hp("attention.head_count"))
    return {
        "vocab_size": vocab_size,
        "hidden_size": int(hp("embedding_length")),
        "intermediate_size": int(hp("feed_forward_length")),
        "num_hidden_layers": int(hp("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(metadata.get(f"{arch}.attention.head_count_kv", n_head)),
        "head_dim": int(hp("attention.key_length")),
        "rms_norm_eps": float(hp("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(hp("context_length")),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(hp("rope.freq_base"))},
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "use_cache": False,
    }


def gguf_metadata(reader: object) -> dict[str, object]:
    """The GGUF's scalar metadata (strings and numbers; arrays such as the vocabulary left out)."""
    import gguf

    values: dict[str, object] = {}
    for key, field in reader.fields.items():  # type: ignore[attr-defined]
        if not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        part = field.parts[field.data[0]]
        values[key] = bytes(part).decode() if field.types[0] == gguf.GGUFValueType.STRING else part[0].item()
    return values


class TorchQwen3:
    """transformers' Qwen3Model built from a GGUF: config from its metadata, weights dequantised from it."""

    def __init__(self, gguf_path: Path, threads: int) -> None:
        import gguf
        import torch

        torch.set_num_threads(threads)
        started = time.perf_counter()
        reader = gguf.GGUFReader(str(gguf_path))
        self.metadata = gguf_metadata(reader)
        self.weights: dict[str, np.ndarray] = {}
        self.weights_type = "?"  # the GGUF's type for the big matrices, e.g. Q8_0
        for tensor in reader.tensors:
            name = hf_name(tensor.name)
            if name is None:
                continue
            if name.endswith("self_attn.q_proj.weight"):
                self.weights_type = tensor.tensor_type.name
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            self.weights[name] = np.ascontiguousarray(
                np.asarray(values, dtype=np.float32).reshape([int(d) for d in reversed(tensor.shape)]))
        self.vocab_size = self.weights["embed_tokens.weight"].shape[0]
        self.config_args = qwen3_config(self.metadata, self.vocab_size)
        self.dequantise_s = time.perf_counter() - started
        self.models: dict[str, object] = {}

    def build(self, dtype_name: str) -> float:
        """Build the model in ``bfloat16`` or ``float32``, as from_pretrained would (RoPE tables in fp32)."""
        import torch
        from transformers import Qwen3Config, Qwen3Model
        from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

        started = time.perf_counter()
        dtype = getattr(torch, dtype_name)
        config = Qwen3Config(**self.config_args)
        config._attn_implementation = "sdpa"
        with torch.device("meta"):
            model = Qwen3Model(config)
        with warnings.catch_warnings():  # read-only arrays: the model is only ever run under inference_mode
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            state = {name: torch.from_numpy(w).to(dtype) for name, w in self.weights.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.rotary_emb = Qwen3RotaryEmbedding(config=config)  # its tables are buffers the meta model lacks
        self.models[dtype_name] = model.eval()
        return time.perf_counter() - started

    def forward(self, dtype_name: str, ids: Sequence[int], positions: Sequence[int]) -> tuple[np.ndarray, float]:
        import torch

        model = self.models[dtype_name]
        with torch.inference_mode():
            input_ids = torch.tensor([list(ids)], dtype=torch.long)
            start = time.perf_counter()
            hidden = model(input_ids=input_ids, use_cache=False).last_hidden_state[0, list(positions)]
            seconds = time.perf_counter() - start
        return hidden.float().numpy(), seconds


def peer_available() -> str | None:
    """None when torch and transformers import; otherwise why not (and how to install them)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        return f"{error}: pip install -r {PEER_REQUIREMENTS.relative_to(ROOT)} (make bench does)"
    return None
