"""ggml's CPU flash attention (GGML_OP_FLASH_ATTN_EXT) on one case, called through ggml's C API
(perf/builds/ggml_c_api.py), against float64
(test support; run in a child process whose PYTHONPATH puts the build to test first).

A case is "n_q x n_kv x n_head x n_head_kv x DK x DV x cache type", then optionally ":" and options separated by
",": Q (F32), K and V (in the cache type) and a causal F16 mask (the last query row sees every key) from a fixed
seed, computed with 2 threads. 64 query rows or more take the tiled path (stack/patches/ggml-cpu-flash-attn-tiled.patch
and, where the build has AVX512-BF16, ggml-cpu-flash-attn-bf16.patch). The options are the op's others, which
qwen3 does not use: ``softcap=C`` (scores C*tanh(s/C), as gemma 2), ``alibi=B`` (max_bias B: the mask also holds
minus each key's distance from the query, which ggml scales by each head's ALiBi slope) and ``sinks`` (one more
logit per head in every softmax's denominator, as gpt-oss; ggml_flash_attn_ext_add_sinks). The reference is
computed twice in float64: from the operands as given, and from the operands rounded to BF16 as that patch rounds
Q, K and V, so that its one remaining rounding (of P) can be bounded tightly.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import numpy as np

from perf.builds import ggml_c_api

THREADS = 2


def to_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) rounded to BF16 as ggml and VCVTNEPS2BF16 round (nearest even), as float32 again."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    return rounded.view(np.float32)


def refuse_amx_tiles() -> None:
    """From now on the kernel refuses this process AMX tile data: a seccomp filter answers arch_prctl
    (ARCH_REQ_XCOMP_PERM) with EPERM, as a sandbox without AMX does (x86-64 Linux; for the fallback's test)."""
    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
        return code, jt, jf, k
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    program = [op(ld_w_abs, 0),  # seccomp_data.nr
               op(jeq_k, 158, 0, 3),  # arch_prctl, else allow
               op(ld_w_abs, 16),  # args[0], low half
               op(jeq_k, 0x1023, 0, 1),  # ARCH_REQ_XCOMP_PERM, else allow
               op(ret_k, 0x00050000 | 1),  # SECCOMP_RET_ERRNO | EPERM
               op(ret_k, 0x7FFF0000)]  # SECCOMP_RET_ALLOW

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(program))(*[Filter(*f) for f in program])
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) or libc.prctl(
            pr_set_seccomp, seccomp_mode_filter, ctypes.byref(Program(len(program), filters)), 0, 0):
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def _stored(x: np.ndarray, cache_type: str) -> np.ndarray:
    """The bytes of ``x`` as ggml stores it in ``cache_type``."""
    if cache_type == "f16":
        return x.astype(np.float16)
    if cache_type == "bf16":
        return (to_bf16(x).view(np.uint32) >> 16).astype(np.uint16)
    return x.astype(np.float32)


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float, softcap: float = 0.0,
               slopes: np.ndarray | None = None, sinks: np.ndarray | None = None) -> np.ndarray:
    """softmax(Q·K^T·scale + mask)·V in float64, [n_q, n_head, DV] like ggml's output; GQA by head groups. With
    ``softcap`` the scores are softcap*tanh(Q·K^T·scale/softcap), ``slopes`` scale the mask per head, and each
    head's ``sinks`` logit joins the softmax's denominator only."""
    group = q.shape[0] // k.shape[0]
    k, v = np.repeat(k, group, axis=0).astype(np.float64), np.repeat(v, group, axis=0).astype(np.float64)
    scores = np.einsum("hqd,hkd->hqk", q.astype(np.float64), k) * scale
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    slope = np.ones(q.shape[0]) if slopes is None else slopes
    with np.errstate(invalid="ignore"):  # -inf * slope
        scores = scores + slope[:, None, None] * mask.astype(np.float64)
    sink = np.full(q.shape[0], -np.inf) if sinks is None else sinks.astype(np.float64)
    top = np.maximum(scores.max(-1, keepdims=True), sink[:, None, None])
    p = np.exp(scores - top)
    return np.einsum("hqk,hkd->qhd", p / (p.sum(-1, keepdims=True) + np.exp(sink[:, None, None] - top)), v)


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """Each head's ALiBi slope, as ggml computes it from max_bias."""
    n_log2 = 2 ** int(np.floor(np.log2(n_head)))
    m0, m1 = 2.0 ** (-max_bias / n_log2), 2.0 ** (-(max_bias / 2) / n_log2)
    return np.array([m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1) for h in range(n_head)])


def parse(spec: str) -> tuple[tuple[int, ...], str, dict[str, str]]:
    """A case's sizes (n_q, n_kv, n_head, n_head_kv, DK, DV), its cache type and its options (see the module's
    docstring): the one reading of the spec, for the kernel's run and for the tests choosing cases."""
    shape, _, option_text = spec.partition(":")
    *sizes, cache_type = shape.split("x")
    options = dict(option.partition("=")[::2] for option in option_text.split(",") if option)
    return tuple(map(int, sizes)), cache_type, options


def case(lib_dir: Path, spec: str, threads: int = THREADS) -> dict:
    """One case (``spec``, see the module's docstring) on the build in ``lib_dir``, on ``threads``: the largest
    error against both references, relative to the largest |V|, the largest score's magnitude (for the error
    bound) and a digest of the output's bytes."""
    (n_q, n_kv, n_head, n_head_kv, dk, dv), cache_type, options = parse(spec)
    rng = np.random.default_rng(int(hashlib.sha256(spec.encode()).hexdigest()[:8], 16))
    q = (rng.standard_normal((n_head, n_q, dk)) * 2).astype(np.float32)
    k = (rng.standard_normal((n_head_kv, n_kv, dk)) * 2).astype(np.float32)
    v = rng.standard_normal((n_head_kv, n_kv, dv)).astype(np.float32)
    k_stored, v_stored = _stored(k, cache_type), _stored(v, cache_type)
    if cache_type != "f32":  # what the kernel reads
        k, v = (to_bf16(x) if cache_type == "bf16" else x.astype(np.float16).astype(np.float32) for x in (k, v))
    causal = np.arange(n_kv)[None, :] > np.arange(n_q)[:, None] + (n_kv - n_q)
    softcap, max_bias = float(options.get("softcap", 0)), float(options.get("alibi", 0))
    distance = (np.arange(n_q)[:, None] + (n_kv - n_q) - np.arange(n_kv)[None, :]) if max_bias else 0
    mask = np.where(causal, -np.inf, -distance).astype(np.float16)  # integers up to n_kv: exact in F16
    # sinks near a row's largest scores (about 10 here), where they weigh in the softmax
    sinks = (rng.standard_normal(n_head) * 4 + 8).astype(np.float32) if "sinks" in options else None
    slopes = alibi_slopes(n_head, max_bias) if max_bias else None
    scale = 1 / np.sqrt(dk)

    size = sum(x.nbytes for x in (q, k_stored, v_stored, mask)) + n_q * n_head * dv * 4
    with ggml_c_api.graph(lib_dir, size + 256 * 2**20) as graph:
        graph.base.ggml_flash_attn_ext_add_sinks.argtypes = [ctypes.c_void_p] * 2
        tensors = [graph.tensor(array, type_name, shape) for array, type_name, shape in (
            (q, "f32", (dk, n_q, n_head)), (k_stored, cache_type, (dk, n_kv, n_head_kv)),
            (v_stored, cache_type, (dv, n_kv, n_head_kv)), (mask, "f16", (n_kv, n_q, 1)))]
        out = graph.flash_attn_ext(*tensors, scale, max_bias, softcap)
        if sinks is not None:
            graph.base.ggml_flash_attn_ext_add_sinks(out, graph.tensor(sinks, "f32", (n_head,)))
        result = graph.compute(out, (n_q, n_head, dv), threads)
    v_max = float(np.abs(v).max())
    group = n_head // n_head_kv
    magnitudes = np.einsum("hqd,hkd->hqk", np.abs(q).astype(np.float64), np.repeat(np.abs(k), group, axis=0))
    exact = _reference(q, k, v, mask, scale, softcap, slopes, sinks)
    bf16_operands = _reference(to_bf16(q), to_bf16(k), to_bf16(v), mask, scale, softcap, slopes, sinks)
    return {"error": float(np.abs(result - exact).max() / v_max),
            "error_bf16_operands": float(np.abs(result - bf16_operands).max() / v_max),
            "score_magnitude": float(magnitudes.max() * scale),  # max over scores of scale * sum |q_d k_d|
            "digest": hashlib.sha256(result.tobytes()).hexdigest()}
