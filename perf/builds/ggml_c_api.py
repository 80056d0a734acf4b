"""One ggml graph on a build's CPU backend, through ggml's C API: for the kernel tests
(tests/flash_attention_kernel.py, tests/rms_norm_kernel.py) and the attention op's timing in the patch revision
comparison (perf/builds/patch_revision_comparison.py), each run in a child process whose PYTHONPATH puts the build
in question first, so that the process loads that build's libraries and no other.

The tensors live in one ggml context that owns their memory; the graph is computed with
``ggml_graph_compute_with_ctx`` on the threads asked for, and its output copied out as float32, or timed.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

GGML_TYPES = {"f32": 0, "f16": 1, "bf16": 30}


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class Graph:
    """Tensors made in one context (``tensor``, ``view_3d``), an op's result computed from them (``compute``) or
    timed (``seconds``: each computation allocates its work buffer anew in the context, so size it for all).
    ``flash_attn_ext`` is declared with the context (``graph``); ``base`` is libggml-base, whose other op
    constructors (ggml_rms_norm, ...) a caller declares and calls with ``context``."""

    def __init__(self, base: ctypes.CDLL, cpu: ctypes.CDLL, context: int) -> None:
        self.base, self._cpu, self.context = base, cpu, context

    def tensor(self, array: np.ndarray, type_name: str, shape: Sequence[int]) -> int:
        """A new tensor of ``type_name`` and ``shape`` (ggml's order, innermost first) holding ``array``'s bytes."""
        tensor = self.base.ggml_new_tensor_4d(self.context, GGML_TYPES[type_name], *shape, *[1] * (4 - len(shape)))
        data = np.ascontiguousarray(array)
        ctypes.memmove(self.base.ggml_get_data(tensor), data.ctypes.data, data.nbytes)
        return tensor

    def compute(self, out: int, shape: Sequence[int], threads: int) -> np.ndarray:
        """The F32 tensor ``out`` computed on ``threads``, as an array of ``shape`` (NumPy's order)."""
        self._run(self._graph_of(out), threads)
        data = ctypes.cast(self.base.ggml_get_data(out), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(data, tuple(shape)).copy()

    def flash_attn_ext(self, q: int, k: int, v: int, mask: int, scale: float, max_bias: float = 0.0,
                       softcap: float = 0.0) -> int:
        """GGML_OP_FLASH_ATTN_EXT of these tensors (ggml_flash_attn_ext): the attention the CPU config serves."""
        return self.base.ggml_flash_attn_ext(self.context, q, k, v, mask, scale, max_bias, softcap)

    def view_3d(self, tensor: int, shape: Sequence[int], strides: Sequence[int], offset: int) -> int:
        """A view into ``tensor`` (ggml_view_3d): three sizes (ggml's order), the byte strides of the second and
        third dimensions, and the byte offset of its first element."""
        return self.base.ggml_view_3d(self.context, tensor, *shape, *strides, offset)

    def seconds(self, outs: Sequence[int], threads: int, repeats: int) -> list[float]:
        """The wall-clock seconds of each of ``repeats`` computations of the tensors ``outs`` (one graph) on
        ``threads``, after one untimed (which pages in the tensors and the threads' scratch)."""
        cgraph = self._graph_of(*outs)
        self._run(cgraph, threads)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self._run(cgraph, threads)
            times.append(time.perf_counter() - start)
        return times

    def _graph_of(self, *outs: int) -> int:
        cgraph = self.base.ggml_new_graph(self.context)
        for out in outs:
            self.base.ggml_build_forward_expand(cgraph, out)
        return cgraph

    def _run(self, cgraph: int, threads: int) -> None:
        if self._cpu.ggml_graph_compute_with_ctx(self.context, cgraph, threads) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")


@contextmanager
def graph(lib_dir: Path, size: int) -> Iterator[Graph]:
    """A context of ``size`` bytes on the libraries in ``lib_dir`` (libggml-base, libggml-cpu), freed on exit."""
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    base.ggml_init.restype = ctypes.c_void_p
    base.ggml_init.argtypes = [_InitParams]
    base.ggml_new_tensor_4d.restype = ctypes.c_void_p
    base.ggml_new_tensor_4d.argtypes = [ctypes.c_void_p, ctypes.c_int, *[ctypes.c_int64] * 4]
    base.ggml_view_3d.restype = ctypes.c_void_p
    base.ggml_view_3d.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 3 + [ctypes.c_size_t] * 3
    base.ggml_flash_attn_ext.restype = ctypes.c_void_p
    base.ggml_flash_attn_ext.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_float] * 3
    base.ggml_new_graph.restype = ctypes.c_void_p
    base.ggml_new_graph.argtypes = [ctypes.c_void_p]
    base.ggml_build_forward_expand.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    base.ggml_get_data.restype = ctypes.c_void_p
    base.ggml_get_data.argtypes = [ctypes.c_void_p]
    base.ggml_free.argtypes = [ctypes.c_void_p]
    cpu.ggml_graph_compute_with_ctx.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    cpu.ggml_cpu_init()
    context = base.ggml_init(_InitParams(size, None, False))
    try:
        yield Graph(base, cpu, context)
    finally:
        base.ggml_free(context)
