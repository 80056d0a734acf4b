"""Real servers on loopback for the integration tests: Triton (and, later, the adapter)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stack.adapter_server import AdapterServer
from stack.processes import STOP_TIMEOUT_S, free_port
from stack.settings import Settings
from stack.triton_server import MODEL_NAME, REPOSITORY, TritonServer


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail the test if it does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def prometheus_sample(text: str, name: str) -> float | None:
    """The first sample of a Prometheus metric in an exposition text, labels ignored."""
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return None if match is None else float(match[1])


def triton_settings(paths: tuple[Path, Path]) -> Settings:
    return Settings(model=str(paths[0]), projector=str(paths[1]), triton_http_port=free_port(),
                    triton_grpc_port=free_port(), triton_metrics_port=free_port())


def repository_copy(target: Path, parameters: dict[str, str] | None = None,
                    replace: dict[str, str] | None = None) -> Path:
    """The project's model repository with its CPU config changed: parameters, or any text."""
    shutil.copytree(REPOSITORY, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / MODEL_NAME / "configs" / "cpu.pbtxt"
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


@dataclasses.dataclass
class Serve:
    """`python -m stack.serve` (what `make serve` runs) as a child process, with its banner read."""

    process: subprocess.Popen
    ports: dict[str, int]
    banner: str
    output: list[str] = dataclasses.field(default_factory=list)  # what it wrote after the banner

    @property
    def adapter_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ADAPTER_PORT']}"

    @property
    def triton_ready_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['TRITON_HTTP_PORT']}/v2/health/ready"

    def triton_pid(self) -> int:
        """The tritonserver serving these ports (it is restarted under a new pid after a failure)."""
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if args[0].endswith(b"tritonserver") and f"--http-port={self.ports['TRITON_HTTP_PORT']}".encode() in args:
                return int(cmdline.parent.name)
        raise LookupError("no tritonserver for these ports")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                # make serve gives Triton and then the adapter up to 30 s each to stop before it kills them: wait
                # for that whole budget, not exactly it (a slow machine hit 60 s and got -9 for a clean stop).
                self.process.wait(timeout=2 * STOP_TIMEOUT_S + 30)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGUSR1)  # stack.serve prints its threads' stacks
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not any("most recent call first" in x for x in self.output):
                    time.sleep(0.1)
                self.process.kill()
                self.process.wait()
                raise AssertionError("make serve did not stop after SIGINT; its output since the banner:\n"
                                     + "".join(self.output[-200:])) from None
        return self.process.returncode


def start_serve(paths: tuple[Path, Path], **env: str) -> Serve:
    ports = {name: free_port() for name in
             ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "ADAPTER_PORT")}
    environment = {**os.environ, **{k: str(v) for k, v in ports.items()}, "RERANKER_MODEL": str(paths[0]),
                   "RERANKER_PROJECTOR": str(paths[1]), **env}
    # Started with SIGINT ignored, as a non-interactive shell starts `make serve &`: stop() must still work.
    process = subprocess.Popen([sys.executable, "-m", "stack.serve"], env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    for line in process.stdout:  # the banner comes once both servers are ready
        lines.append(line)
        if line.startswith("Ctrl-C stops everything"):
            break
    serve = Serve(process, ports, "".join(lines))
    # Keep reading what make serve and its children write (llama.cpp's load logs of every restarted instance
    # among it): a full pipe would block them, and a blocked Triton never stops.
    threading.Thread(target=lambda: serve.output.extend(process.stdout), daemon=True).start()
    return serve
