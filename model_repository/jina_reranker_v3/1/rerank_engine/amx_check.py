"""A start-up check of ggml's AMX kernels: they must agree with the plain CPU path before serving.

ggml's AMX matmul has crashed with SIGILL on some virtual machines (see stack/cpu_features.py), and a
crash cannot be caught inside the process. So the check runs in a child process: it decodes the same
tokens with llama.cpp's extra buffer types (where AMX lives) and without them, and compares the hidden
states. Any failure (a crash, a timeout, states that disagree) makes the engine serve with the extra
buffer types off: slower, never a crash. Nothing runs where the build has no AMX or the CPU lacks it.

    python -m rerank_engine.amx_check MODEL.gguf     # exit 0: agree; 1: disagree
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import RunnerOptions

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
CHECK_TOKENS = 96
CHECK_OUTPUTS = [31, 63, 95]


def amx_in_play() -> bool:
    """The llama.cpp build has AMX kernels and this CPU has AMX: the only case the check is needed."""
    import llama_cpp

    built = b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return built and " amx_int8" in flags


@functools.lru_cache(maxsize=8)
def failure_reason(model_path: str, timeout_s: float = 300.0, command: tuple[str, ...] = ()) -> str | None:
    """None when the AMX path agrees with the plain path on ``model_path``, else why not (run once per model)."""
    # Inside Triton's backend stub sys.executable is not always a Python interpreter.
    python = sys.executable if Path(sys.executable).name.startswith("python") else shutil.which("python3")
    # The check runs from the engine's folder: a relative model path must not change meaning there.
    argv = list(command) or [python or "python3", "-m", "rerank_engine.amx_check", str(Path(model_path).resolve())]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return f"the check did not finish within {timeout_s:.0f} s"
    if result.returncode < 0:
        return f"the check died with {signal.Signals(-result.returncode).name}"
    if result.returncode != 0:
        lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
        return lines[-1] if lines else f"the check exited with status {result.returncode}"
    return None


def checked_options(options: RunnerOptions, model_path: str) -> RunnerOptions:
    """``options``, without the extra buffer types (so without AMX) when the self-check fails here."""
    if options.extra_buffers and amx_in_play():
        reason = failure_reason(model_path)
        if reason:
            log.warning("AMX self-check failed (%s): serving without llama.cpp's extra buffer types "
                        "(AMX and repacked weights), which is slower but correct", reason)
            return dataclasses.replace(options, extra_buffers=False)
        log.info("AMX self-check passed: llama.cpp uses AMX")
    return options


def hidden_states(model_path: str, extra_buffers: bool) -> np.ndarray:
    from .config import RunnerOptions
    from .llama_runner import LlamaRunner

    runner = LlamaRunner(model_path, RunnerOptions(n_ctx=512, n_batch=512, n_ubatch=512, extra_buffers=extra_buffers))
    try:
        runner.start()
        ids = [int(i) for i in np.random.default_rng(0).integers(0, runner.n_vocab, CHECK_TOKENS)]
        [states] = runner.hidden_states([ids], [CHECK_OUTPUTS])
        return states
    finally:
        runner.close()


def main(model_path: str) -> int:
    amx = hidden_states(model_path, extra_buffers=True)
    plain = hidden_states(model_path, extra_buffers=False)
    cosine = np.sum(amx * plain, axis=1) / (np.linalg.norm(amx, axis=1) * np.linalg.norm(plain, axis=1))
    if not np.all(np.isfinite(cosine)) or cosine.min() < MIN_COSINE:
        print(f"AMX and plain hidden states disagree (cosine {np.nan_to_num(cosine.min()):.6f} < {MIN_COSINE})")
        return 1
    print(f"AMX agrees with the plain path (cosine {cosine.min():.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
