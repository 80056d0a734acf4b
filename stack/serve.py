"""`make serve`: model files, Triton and the adapter, in one command; Ctrl-C stops both.

Settings: stack.settings.Settings (RERANKER_RELEASE: v3 or v3.5; RERANKER_MODEL, RERANKER_PROJECTOR: default the
release's files under models/, downloaded when absent;
Triton's ports) and adapter.settings.AdapterSettings (ADAPTER_PORT, ADAPTER_HOST: 0.0.0.0 to accept other
hosts, e.g. LibreChat in Docker; API_KEY; the adapter's limits), both checked before anything starts.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from adapter.settings import AdapterSettings
from stack.adapter_server import AdapterServer
from stack.download import RELEASES, DownloadError, fetch
from stack.processes import interrupt_on_stop_signals
from stack.settings import Settings, missing_model_files
from stack.triton_server import TritonServer


def gpu_config_usable() -> bool:
    """The GPU config needs a CUDA build of llama-cpp-python and a visible NVIDIA GPU."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload() or not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def ensure_model_files(settings: Settings) -> None:
    if settings.model is None and settings.projector is None:
        fetch(release=settings.release)
    problem = missing_model_files(settings)
    if problem:
        raise DownloadError(problem)


def adapter_environment(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The adapter reports the release served (its MODEL_NAME, in /info and every response), unless MODEL_NAME
    is set."""
    if environ.get("MODEL_NAME"):
        return {}
    return AdapterSettings.environment(model_name=RELEASES[settings.release].name)


def usage_banner(settings: Settings, adapter: AdapterServer, api_key: str) -> str:
    """How to call the stack; a configured API key is named, never shown (the banner ends up in logs)."""
    key = "<your API_KEY>" if api_key else "any-non-empty-key"
    url = f"{adapter.url}/v1/rerank"
    return f"""
ready: the reranker answers at {url}

  curl -s {url} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"query": "what is a reranker?", "top_n": 2, "documents": ["A reranker orders passages.", "Bananas."]}}'

LibreChat (.env), reranker type "jina":
  JINA_API_KEY={key}
  JINA_API_URL={url}

Triton: http://127.0.0.1:{settings.triton_http_port} (HTTP), 127.0.0.1:{settings.triton_grpc_port} (gRPC),
        http://127.0.0.1:{settings.triton_metrics_port}/metrics
Ctrl-C stops everything.
"""


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_environment()
    adapter_settings = AdapterSettings.from_environment()
    try:
        ensure_model_files(settings)
    except DownloadError as exc:
        print(exc, file=sys.stderr)
        return 2
    config = None if gpu_config_usable() else "cpu"
    print(f"starting Triton ({'GPU' if config is None else 'CPU'} config) and the adapter ...", flush=True)
    triton = TritonServer(settings, config_name=config)
    adapter = AdapterServer(adapter_settings.adapter_port, triton.grpc_url, Path(".cache/adapter.log"),
                            extra_env=adapter_environment(settings), host=adapter_settings.adapter_host)
    interrupt_on_stop_signals()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints where every thread is
    try:
        with triton:
            adapter.start()
            adapter.wait_ready()
            print(usage_banner(settings, adapter, adapter_settings.api_key), flush=True)
            while adapter.running():
                triton.keep_alive()
                time.sleep(0.5)
            print("the adapter exited; stopping (log: .cache/adapter.log)", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        adapter.stop()


if __name__ == "__main__":
    sys.exit(main())
