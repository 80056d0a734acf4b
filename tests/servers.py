"""Real servers on loopback for the integration tests: Triton (and, later, the adapter)."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

from stack.adapter_server import AdapterServer
from stack.settings import Settings
from stack.triton_server import REPOSITORY, TritonServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def triton_settings(paths: tuple[Path, Path]) -> Settings:
    return Settings(model=str(paths[0]), projector=str(paths[1]), triton_http_port=free_port(),
                    triton_grpc_port=free_port(), triton_metrics_port=free_port())


def repository_copy(target: Path, parameters: dict[str, str] | None = None,
                    replace: dict[str, str] | None = None) -> Path:
    """The project's model repository with its CPU config changed: parameters, or any text."""
    shutil.copytree(REPOSITORY, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / "jina_reranker_v3" / "configs" / "cpu.pbtxt"
    text = config.read_text()
    for old, new in (replace or {}).items():
        assert old in text, f"{old!r} not in {config}"
        text = text.replace(old, new)
    for key, value in (parameters or {}).items():
        text, count = re.subn(rf'(key: "{key}", value: {{ string_value: )"[^"]*"', rf'\1"{value}"', text)
        assert count == 1, f"no parameter {key} in {config}"
    config.write_text(text)
    return target


def start_triton(paths: tuple[Path, Path], log_path: Path, repository: Path = REPOSITORY) -> TritonServer:
    server = TritonServer(triton_settings(paths), repository=repository, log_path=log_path,
                          extra_args=("--log-verbose=1",))
    server.__enter__()
    return server


def start_adapter(triton_url: str, log_path: Path, protocol: str = "grpc", wait_ready: bool = True,
                  **env: str) -> AdapterServer:
    """The adapter as its own process (uvicorn on a free loopback port); env: settings by variable name."""
    adapter = AdapterServer(free_port(), triton_url, log_path, protocol=protocol, extra_env=env)
    adapter.start()
    try:
        adapter.wait_ready() if wait_ready else adapter.wait_alive()
    except BaseException:
        adapter.stop()
        raise
    return adapter
