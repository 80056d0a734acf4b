"""llama.cpp through llama-cpp-python's low-level API: tokenise, and decode token
sequences into last-layer hidden states at chosen positions.

Hidden states are read without embeddings mode. With ``embeddings=True``
llama.cpp marks every token as an output and runs the LM head over all of them
(measured ~1.5x slower). Instead we decode in logits mode with outputs only at
the positions we need and copy the graph tensor ``result_norm`` (the final
RMSNorm output, whose rows are exactly the output positions) in the scheduler's
eval callback. The callback then ends the graph (ggml's scheduler stops a
graph's nodes when it returns false): the LM head, the only node after
``result_norm``, is not computed; it cost 1-2% of a pass (20 output rows of
151,936 logits each) and its logits were never read.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence

# OpenMP threads that spin while waiting starve a second instance's threads on the same cores; waiting
# passively cost nothing measurable on one request and halved a small request's wait behind a large one
# (configs/cpu.pbtxt). Read by libgomp when llama.cpp loads it, so it is set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp
import numpy as np

from .config import RunnerOptions
from .cpu_backends import load_cpu_variant
from .errors import ModelLoadError

log = logging.getLogger(__name__)

HIDDEN_STATE_TENSOR = b"result_norm"
# How often ggml's abort callback (run between graph nodes on the CPU) may ask whether to stop.
ABORT_CHECK_INTERVAL_S = 0.05
DECODE_ABORTED = 2  # llama_decode's status when the abort callback stopped it
KV_CACHE_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}

_ggml_base = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
_ggml_base.ggml_get_name.argtypes = [ctypes.c_void_p]
_ggml_base.ggml_get_name.restype = ctypes.c_char_p
_ggml_base.ggml_nbytes.argtypes = [ctypes.c_void_p]
_ggml_base.ggml_nbytes.restype = ctypes.c_size_t
_ggml_base.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
_ggml_base.ggml_backend_tensor_get.restype = None
_ggml_base.ggml_op_desc.argtypes = [ctypes.c_void_p]
_ggml_base.ggml_op_desc.restype = ctypes.c_char_p

# A profiler's hook: ggml's op description of a graph node (``MUL_MAT``), its name (``ffn_up-3``) and its seconds.
NodeObserver = Callable[[str, str, float], None]


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _log_to_python(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


@functools.cache
def _init_llama_once() -> str | None:
    """Process-wide llama.cpp set-up: its logs go to Python logging (debug) instead of stderr, and a dispatch
    build's best CPU variant is loaded (cpu_backends). The variant's name, None for a native build."""
    llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))
    variant = load_cpu_variant()
    llama_cpp.llama_backend_init()
    return variant


def load_mode(options: RunnerOptions) -> int:
    """How llama.cpp reads the GGUF: into its own buffers when the weights are copied anyway, else its default.

    On the CPU with extra buffer types every weight matrix is repacked into a buffer of its own, so a mapped
    file would stay resident beside the copies: with the 0.6B Q8_0 model, 600 MB of file pages in every
    instance's RSS (shared between instances, reclaimable, but charged to the container and never read again).
    Read instead, only the tensors used as stored (embeddings, norms: ~160 MB) are copied. Without the repacking
    the weights are used where they lie, and llama.cpp's default maps the file once for every instance; with
    layers on a GPU the default (mapping) is also kept.
    """
    if options.extra_buffers and options.n_gpu_layers == 0:
        return llama_cpp.LLAMA_LOAD_MODE_NONE
    return llama_cpp.LLAMA_LOAD_MODE_AUTO


class DecodeAbortedError(Exception):
    """llama_decode stopped early because every sequence of the decode was cancelled."""


class LlamaRunner:
    """One model and one context. Not thread-safe: callers serialise access.

    ``on_node`` (for profiling; the engine passes none): the scheduler is then asked for every graph node, so
    each node is computed on its own (a few percent slower), and once computed it is reported with its op,
    its name and the seconds since the previous node was reported (or since the decode call began). The
    hidden states are the same with or without it.
    """

    def __init__(self, model_path: str, options: RunnerOptions, on_node: NodeObserver | None = None) -> None:
        if options.kv_cache_type not in KV_CACHE_TYPES:
            raise ValueError(f"kv_cache_type must be one of {sorted(KV_CACHE_TYPES)}, not {options.kv_cache_type!r}")
        # the CPU backend variant a runtime-dispatch build loaded in this process (None: a native build)
        self.cpu_variant = _init_llama_once()
        self.model_path = model_path
        self.options = options
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        mparams.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE  # the whole model on main_gpu
        mparams.main_gpu = options.main_gpu
        mparams.use_extra_bufts = options.extra_buffers
        mparams.load_mode = load_mode(options)
        self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"{model_path}: llama.cpp could not load this file as a GGUF model "
                                 "(enable debug logging to see llama.cpp's reason)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._ctx = None
        self._batch = None
        self._reserved: dict[int, str] = {}
        self._kept_prefix: tuple[int, ...] = ()  # token ids whose KV cache sequence 0 holds (see _keep_prefix)
        self._rows: list[np.ndarray] = []
        self._stop: Callable[[], bool] | None = None
        self._next_stop_check = 0.0
        self._on_node = on_node
        self._node_clock = 0.0  # when the last node was reported, or the decode call began
        # Kept on the instance: llama.cpp holds raw pointers to them for the context's lifetime.
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._observe)
        self._abort_callback = llama_cpp.ggml_abort_callback(self._should_abort)

    @property
    def model(self) -> llama_cpp.llama_model_p | None:
        """llama.cpp's handle of the loaded model, for a caller that creates a context of its own with
        llama_cpp's API; None once closed. The runner owns it: close() frees it."""
        return self._model

    def architecture(self) -> str:
        return self.metadata("general.architecture") or ""

    @property
    def sliding_window(self) -> int:
        """The window llama.cpp runs on the model's sliding layers; 0 when every layer attends globally."""
        return max(0, llama_cpp.llama_model_n_swa(self._model))

    def metadata(self, key: str) -> str | None:
        """A scalar GGUF metadata value as text, or None when the file lacks the key (llama.cpp keeps no arrays)."""
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def start(self) -> None:
        """Create the context; separate from loading so that model checks fail before allocating it."""
        o = self.options
        threads = o.n_threads or len(os.sched_getaffinity(0))
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = o.n_ctx
        cparams.n_batch = o.n_batch
        cparams.n_ubatch = o.n_ubatch
        cparams.n_seq_max = o.n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if o.flash_attn
                                   else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.type_k = cparams.type_v = KV_CACHE_TYPES[o.kv_cache_type]
        cparams.embeddings = False
        cparams.kv_unified = True  # sequences of one decode share the cache: each may use all of n_ctx
        cparams.no_perf = True
        cparams.cb_eval = self._callback
        cparams.abort_callback = self._abort_callback
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelLoadError(f"{self.model_path}: llama.cpp could not create a context with n_ctx={o.n_ctx} "
                                 "(out of memory?)")
        self._batch = llama_cpp.llama_batch_init(o.n_batch, 0, 1)

    def reserve(self, token_texts: dict[str, int]) -> None:
        """Token ids user text must never produce (the template's control and marker tokens)."""
        self._reserved = {token_id: text for text, token_id in token_texts.items()}

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # -- vocabulary ---------------------------------------------------------------------------

    def _tokenize(self, data: bytes, parse_special: bool) -> list[int]:
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, parse_special)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, parse_special)
        return buf[:n]

    def token_text(self, token_id: int) -> str:
        return llama_cpp.llama_vocab_get_text(self._vocab, token_id).decode("utf-8", "replace")

    def find_token(self, text: str) -> int | None:
        """The id of a single vocabulary token spelled ``text``, or None."""
        ids = self._tokenize(text.encode(), parse_special=True)
        return ids[0] if len(ids) == 1 and self.token_text(ids[0]) == text else None

    def tokenize(self, text: str) -> list[int]:
        """Plain-text tokens. Raises UnicodeEncodeError for text that is not valid Unicode.

        Special-token parsing is off, which stops control tokens; a vocabulary may
        still declare a marker as a user-defined token, which llama.cpp matches in
        any text. Such a spelling is split after its first character, so it is
        tokenised as the plain characters it is.
        """
        data = text.encode("utf-8")
        ids = self._tokenize(data, parse_special=False)
        if not self._reserved or self._reserved.keys().isdisjoint(ids):
            return ids
        pieces, start = [], 0
        for spelling in sorted({s.encode() for s in self._reserved.values()}):
            at = data.find(spelling)
            while at >= 0:
                pieces.append(at + 1)
                at = data.find(spelling, at + 1)
        ids = []
        for end in [*sorted(pieces), len(data)]:
            ids += self._tokenize(data[start:end], parse_special=False)
            start = end
        if not self._reserved.keys().isdisjoint(ids):
            raise ValueError("text cannot be tokenised without producing a reserved token")
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; a UTF-8 sequence cut at the end is dropped."""
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        size = 8 * len(ids) + 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, False)
        if n < 0:
            size = -n
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self._vocab, arr, len(ids), buf, size, False, False)
        return buf.raw[:n].decode("utf-8", "ignore")

    # -- decoding -----------------------------------------------------------------------------

    def _observe(self, tensor: int, ask: bool, _user_data: int) -> bool:
        """Scheduler eval callback: ask for ``result_norm`` only, copy it when computed and stop the graph there,
        before the LM head (with ``on_node``: ask for every node, and report each up to the same stop)."""
        if self._on_node is not None:
            return self._report_node(tensor, ask)
        if _ggml_base.ggml_get_name(tensor) != HIDDEN_STATE_TENSOR:
            return not ask
        if ask:
            return True
        self._copy_rows(tensor)
        return False

    def _report_node(self, tensor: int, ask: bool) -> bool:
        if ask:
            return True
        seconds = time.perf_counter() - self._node_clock
        name = _ggml_base.ggml_get_name(tensor)
        self._on_node(_ggml_base.ggml_op_desc(tensor).decode(), name.decode(), seconds)  # type: ignore[misc]
        if name == HIDDEN_STATE_TENSOR:
            self._copy_rows(tensor)
        self._node_clock = time.perf_counter()  # the time spent here is no node's
        return name != HIDDEN_STATE_TENSOR  # the LM head after it is skipped, as in _observe

    def _copy_rows(self, tensor: int) -> None:
        nbytes = _ggml_base.ggml_nbytes(tensor)
        rows = np.empty(nbytes // 4, dtype=np.float32)
        _ggml_base.ggml_backend_tensor_get(tensor, rows.ctypes.data, 0, nbytes)
        self._rows.append(rows.reshape(-1, self.n_embd))

    def _should_abort(self, _data: int) -> bool:
        """ggml's abort callback, called between graph nodes on the CPU: stops a decode nobody waits for."""
        if self._stop is None:
            return False
        now = time.monotonic()
        if now < self._next_stop_check:
            return False
        self._next_stop_check = now + ABORT_CHECK_INTERVAL_S
        try:
            return self._stop()
        except Exception:  # an exception cannot cross into C; keep decoding
            log.exception("cancellation check failed")
            return False

    def hidden_states(self, sequences: Sequence[Sequence[int]],
                      outputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Hidden states of each sequence at its output positions (ascending), as a list."""
        return [states for states in self.iter_hidden_states(sequences, outputs) if states is not None]

    def iter_hidden_states(self, sequences: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                           cancelled: Callable[[int], bool] | None = None,
                           decoded: Callable[[list[int], float], None] | None = None,
                           prefix: Sequence[int] = ()) -> Iterator[np.ndarray | None]:
        """Hidden states of each sequence at its output positions, yielded in order as they are decoded.

        With ``share_decodes`` sequences are decoded together, as separate llama.cpp
        sequences sharing decode calls, while they fit the context and ``n_seq_max``;
        the per-sequence mask keeps them independent, but kernels chosen by batch
        size may round differently. Otherwise each sequence is decoded alone.

        ``cancelled(i)`` is polled before and during each decode; when it holds for
        every sequence of a decode, the decode stops (within a graph node on the
        CPU) and those sequences yield None.

        ``decoded(lengths, seconds)`` is told the wall time of each completed decode and the
        lengths of its sequences (how the engine learns its own speed), the reused prefix left out.

        ``prefix``: token ids that sequences start with (the prompt's fixed system part). Its KV
        cache is computed once and kept; a decode whose sequences all start with it computes only
        what follows. Attention over the kept cache gives the states of one full decode, but the
        prefix's kernels ran on a batch of another size, so rounding may differ in the last bits.
        """
        for group in self._groups([len(s) for s in sequences]):
            stop = None if cancelled is None else functools.partial(_all_cancelled, cancelled, group)
            if stop is not None and stop():
                yield from [None] * len(group)
                continue
            members = [sequences[i] for i in group]
            reuse = len(prefix) if prefix and all(list(s[:len(prefix)]) == list(prefix) for s in members) else 0
            if reuse:
                self._keep_prefix(prefix)
            started = time.perf_counter()
            try:
                states = self._decode_group(members, [outputs[i] for i in group], stop, reuse)
            except DecodeAbortedError:
                yield from [None] * len(group)
                continue
            if decoded is not None:
                decoded([len(s) - reuse for s in members], time.perf_counter() - started)
            yield from states

    def _groups(self, lengths: Sequence[int]) -> list[list[int]]:
        n_ctx = self.options.n_ctx
        n_seq = self.options.n_seq_max if self.options.share_decodes else 1
        groups: list[list[int]] = []
        used = n_ctx + 1
        for i, length in enumerate(lengths):
            if length > n_ctx:
                raise ValueError(f"sequence of {length} tokens exceeds the context size {n_ctx}")
            if used + length > n_ctx or len(groups[-1]) >= n_seq:
                groups.append([])
                used = 0
            groups[-1].append(i)
            used += length
        return groups

    def holds_prefix(self, prefix: Sequence[int]) -> bool:
        """Whether the cache holds ``prefix`` now, so that a decode starting with it skips it. A decode without a
        prefix clears the cache: the next one with a prefix pays for it again."""
        return bool(prefix) and self._kept_prefix == tuple(prefix)

    def _keep_prefix(self, prefix: Sequence[int]) -> None:
        """Make the cache hold ``prefix`` (sequence 0, positions from 0), decoding it if it does not already."""
        if self.holds_prefix(prefix):
            return
        self._decode_group([prefix], [[]], None, 0)
        self._kept_prefix = tuple(prefix)

    def _decode_group(self, sequences: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                      stop: Callable[[], bool] | None, reuse: int) -> list[np.ndarray]:
        """Decode ``sequences`` as sequences 0, 1, ...; with ``reuse``, their first ``reuse`` tokens are the kept
        prefix, whose cache is shared with each sequence instead of computed again."""
        memory = llama_cpp.llama_get_memory(self._ctx)
        if reuse:
            llama_cpp.llama_memory_seq_rm(memory, -1, reuse, -1)
            for seq_id in range(1, len(sequences)):
                llama_cpp.llama_memory_seq_cp(memory, 0, seq_id, 0, reuse)
        else:
            llama_cpp.llama_memory_clear(memory, True)
            self._kept_prefix = ()
        batch, n_batch = self._batch, self.options.n_batch
        self._rows = []
        self._stop, self._next_stop_check = stop, time.monotonic() + ABORT_CHECK_INTERVAL_S
        try:
            n = 0
            for seq_id, (ids, wanted) in enumerate(zip(sequences, outputs, strict=True)):
                marked = set(wanted)
                for pos, token in enumerate(ids):
                    if pos < reuse:
                        continue
                    batch.token[n] = token
                    batch.pos[n] = pos
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq_id
                    batch.logits[n] = pos in marked
                    n += 1
                    if n == n_batch:
                        self._decode(n, stop)
                        n = 0
            if n:
                self._decode(n, stop)
        finally:
            self._stop = None
        rows = np.concatenate(self._rows) if self._rows else np.empty((0, self.n_embd), np.float32)
        self._rows = []
        counts = [len(w) for w in outputs]
        if rows.shape[0] != sum(counts):
            raise RuntimeError(f"llama.cpp returned {rows.shape[0]} hidden-state rows, expected {sum(counts)}")
        return np.split(rows, np.cumsum(counts)[:-1])

    def _decode(self, n_tokens: int, stop: Callable[[], bool] | None) -> None:
        if stop is not None and stop():  # between calls too: GPU backends ignore the abort callback
            raise DecodeAbortedError
        self._batch.n_tokens = n_tokens
        self._node_clock = time.perf_counter()
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status == DECODE_ABORTED:
            raise DecodeAbortedError
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")


def _all_cancelled(cancelled: Callable[[int], bool], group: Sequence[int]) -> bool:
    return all(cancelled(i) for i in group)

