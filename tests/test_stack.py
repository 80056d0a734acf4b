"""`make serve` and its pieces, run as the user runs them (subprocesses, real ports)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from stack.processes import http_ok
from stack.stub_watchdog import STUB_NAME, alive
from tests.servers import free_port, start_serve, wait_for

pytestmark = pytest.mark.system


def run_module(module: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def test_download_offline_says_how_to_place_the_files(tmp_path):
    result = run_module("stack.download", {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}, "--dir",
                        str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "jina-reranker-v3-Q8_0.gguf and projector.safetensors" in lines[0]
    assert "https://huggingface.co/jinaai/jina-reranker-v3-GGUF" in lines[0]
    assert "RERANKER_MODEL" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_download_of_v35_offline_names_its_own_files(tmp_path):
    result = run_module("stack.download", {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}, "--release", "v3.5",
                        "--dir", str(tmp_path))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "jina-reranker-v3.5-Q8_0.gguf and projector.safetensors" in line
    assert "https://huggingface.co/jinaai/jina-reranker-v3.5-GGUF" in line
    assert list(tmp_path.iterdir()) == []


def test_serve_of_v35_offline_says_where_its_files_go():
    result = run_module("stack.serve", {"RERANKER_RELEASE": "v3.5", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "jina-reranker-v3.5-Q8_0.gguf and projector.safetensors" in line
    assert "models/v3.5/" in line


def test_serve_names_a_missing_model_file(tmp_path):
    missing = tmp_path / "model.gguf"
    result = run_module("stack.serve", {"RERANKER_MODEL": str(missing), "RERANKER_PROJECTOR": str(missing)})
    assert result.returncode == 2
    assert result.stderr.strip() == f"RERANKER_MODEL: no file at {missing}"


def test_serve_runs_triton_and_the_adapter_and_stops_both(tiny_q8):
    key = "kiwi-7781-secret"
    serve = start_serve(tiny_q8, API_KEY=key)
    try:
        adapter = serve.adapter_url
        assert f"JINA_API_URL={adapter}/v1/rerank" in serve.banner
        assert "JINA_API_KEY=<your API_KEY>" in serve.banner
        assert f"curl -s {adapter}/v1/rerank -H 'Authorization: Bearer <your API_KEY>'" in serve.banner
        assert key not in serve.banner  # the banner ends up in logs
        response = httpx.post(f"{adapter}/v1/rerank", headers={"Authorization": f"Bearer {key}"},
                              json={"query": "q", "documents": ["a", "b"]}, timeout=10)
        assert response.status_code == 200
        assert http_ok(serve.triton_ready_url)
        assert serve.stop() == 0
        assert not http_ok(f"{adapter}/health", timeout=1)
        assert not http_ok(serve.triton_ready_url, timeout=1)
    finally:
        serve.stop()


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, with its command line."""
    found = {}
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, children.read_text().split()):
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            found.update(descendants(child))
    return found


def cpu_ticks(pids: list[int]) -> int:
    """User and system time the processes used so far, in clock ticks."""
    return sum(sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
               for pid in pids)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what servers set: only a listener blocks it
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_serve_killed_by_sigkill_mid_request_leaves_no_process_and_no_port(tiny_q8):
    """SIGKILL gives the supervisor no chance to stop anything: its children's process groups are killed for it
    (stack/reaper.py), the Python-backend stubs in tritonserver's group included. A stub whose tritonserver died
    while it was computing would otherwise hang for good, holding its model's memory."""
    serve = start_serve(tiny_q8, RERANK_MODE="exact", REQUEST_TIMEOUT_S="600")
    processes = descendants(serve.process.pid)
    stubs = [pid for pid in processes if Path(f"/proc/{pid}/comm").read_text().strip() == STUB_NAME]
    assert len(stubs) == 2, processes
    assert any(command.startswith(f"{sys.executable} -m adapter") for command in processes.values()), processes
    assert serve.triton_pid() in processes
    idle = cpu_ticks(stubs)
    large = {"query": "q", "documents": [f"word{i} " * 60 for i in range(150)]}  # ~18 s on two cores
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        request = pool.submit(httpx.post, f"{serve.adapter_url}/v1/rerank", json=large, timeout=600)
        wait_for(lambda: cpu_ticks(stubs) > idle + 30, timeout=60)  # a stub is computing it
        assert not request.done()
        serve.process.send_signal(signal.SIGKILL)
        serve.process.wait()
        wait_for(lambda: not any(alive(pid) for pid in processes), timeout=30)
        # A killed process's leader shows as a zombie while its other threads still exit (a stub unmapping its
        # model's gigabytes, say); its sockets close when the last one has: wait for that, not a moment.
        wait_for(lambda: all(port_free(port) for port in serve.ports.values()), timeout=30)
        # The request fails: its connection drops, or, where the reaper's SIGKILL reached Triton's group first, the
        # adapter answered it as Triton's loss (502/503) in the moment before its own group's.
        outcome = request.exception(timeout=30) or request.result()
        assert isinstance(outcome, httpx.TransportError) or outcome.status_code in (502, 503), outcome
