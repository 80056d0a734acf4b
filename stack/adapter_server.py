"""Run the adapter (uvicorn) as a child process pointed at a Triton server."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from adapter.settings import AdapterSettings
from stack.processes import ManagedProcess, http_ok

ROOT = Path(__file__).resolve().parent.parent


class AdapterServer(ManagedProcess):
    def __init__(self, port: int, triton_url: str, log_path: Path, protocol: str = "grpc",
                 extra_env: Mapping[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.port, self.host = port, host
        env = {**os.environ, **AdapterSettings.environment(adapter_port=port, adapter_host=host, triton_url=triton_url,
                                                           triton_protocol=protocol), **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        super().__init__("adapter", [sys.executable, "-m", "adapter"], env, log_path)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def wait_alive(self, timeout: float = 30.0) -> None:
        self.wait_until(lambda: http_ok(f"{self.url}/health"), timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_until(lambda: http_ok(f"{self.url}/ready"), timeout)
