"""The served attention (flash attention, ggml's tiled path) against the NumPy reference, on prompts long enough
for several Q and KV tiles.

The CPU config serves flash attention; for ubatches of 64 tokens or more ggml computes it in
64x64 tiles (``ggml_compute_forward_flash_attn_ext_tiled``), which stack/patches/ggml-cpu-flash-attn-tiled.patch
changes: each thread converts K and V once per KV head and reuses them for every later Q tile of that head. A
stale or wrong head, tile or padding shows up here as hidden states far from the reference. The shapes cover
GQA (Q heads sharing a KV head, with several heads per thread's chunk), the real head size 128, lengths that are
not multiples of the tile, one ubatch and several (the second attends to a longer, padded cache), and a prompt
too short for the tiled path. Flash attention rounds K and V through F16, so agreement is to F16 rounding, not
to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import numpy_reference as ref
from perf.common import engine_config
from tests.conftest import open_engine

pytestmark = pytest.mark.integration

MIN_COSINE = 0.9999
# ggml splits the Q rows (heads x tokens) into 4 chunks per thread, so with 2 threads (set, whatever the machine
# has) a chunk is half a head (tiny), one head, or, with 16 or 12 heads, two or a head and a half: Q tiles of a
# chunk then pass from one KV head to the next, where K and V must be converted anew.
THREADS = 2
SHAPES = {
    "tiny": {},  # 4 Q heads, 2 KV heads of 16
    "gqa-4-head-128": {"n_head": 8, "n_head_kv": 2, "head_dim": 128},
    "mha-16-heads": {"n_head": 16, "n_head_kv": 16},
    "gqa-3-12-heads": {"n_head": 12, "n_head_kv": 4},
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def model_and_reference(request, make_model):
    paths = make_model("f32", **SHAPES[request.param])
    served = engine_config(*paths).llama  # configs/cpu.pbtxt's attention
    assert served.flash_attn
    engine = open_engine(paths, n_ctx=4096, n_ubatch=512, n_threads=THREADS, flash_attn=True,
                         kv_cache_type=served.kv_cache_type)
    return engine, ref.Qwen3Reference(str(paths[0]))


@pytest.mark.parametrize("n_tokens", [40, 200, 700])
def test_flash_attention_matches_reference(model_and_reference, n_tokens):
    engine, reference = model_and_reference
    rng = np.random.default_rng(n_tokens)
    ids = rng.integers(0, reference.w["token_embd.weight"].shape[0], n_tokens).tolist()
    positions = sorted({0, 63, 64, n_tokens // 2, n_tokens - 2, n_tokens - 1} & set(range(n_tokens)))
    [hidden] = engine.runner.hidden_states([ids], [positions])
    expected = reference.hidden_states(ids)[positions]
    cos = np.sum(hidden * expected, axis=1) / (np.linalg.norm(hidden, axis=1) * np.linalg.norm(expected, axis=1))
    assert cos.min() >= MIN_COSINE, dict(zip(positions, cos.round(6), strict=True))
