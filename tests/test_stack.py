"""`make serve` and its pieces, run as the user runs them (subprocesses, real ports)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from stack.processes import http_ok
from stack.settings import Settings
from tests.servers import free_port


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


def test_serve_names_a_missing_model_file(tmp_path):
    missing = tmp_path / "model.gguf"
    result = run_module("stack.serve", {"RERANKER_MODEL": str(missing), "RERANKER_PROJECTOR": str(missing)})
    assert result.returncode == 2
    assert result.stderr.strip() == f"RERANKER_MODEL: no file at {missing}"


def test_bad_port_is_a_clear_error():
    with pytest.raises(SystemExit, match="TRITON_HTTP_PORT='eighty' is not a port number"):
        Settings.from_environment({"TRITON_HTTP_PORT": "eighty"})


def test_serve_runs_triton_and_the_adapter_and_stops_both(tiny_q8, tmp_path):
    ports = {name: str(free_port()) for name in
             ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "ADAPTER_PORT")}
    env = {**os.environ, **ports, "RERANKER_MODEL": str(tiny_q8[0]), "RERANKER_PROJECTOR": str(tiny_q8[1]),
           "API_KEY": "k"}
    serve = subprocess.Popen([sys.executable, "-m", "stack.serve"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    adapter = f"http://127.0.0.1:{ports['ADAPTER_PORT']}"
    triton_ready = f"http://127.0.0.1:{ports['TRITON_HTTP_PORT']}/v2/health/ready"
    try:
        lines = []
        for line in serve.stdout:  # the banner comes once both servers are ready
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        banner = "".join(lines)
        assert f"JINA_API_URL={adapter}/v1/rerank" in banner
        assert "JINA_API_KEY=k" in banner
        assert f"curl -s {adapter}/v1/rerank -H 'Authorization: Bearer k'" in banner
        response = httpx.post(f"{adapter}/v1/rerank", headers={"Authorization": "Bearer k"},
                              json={"query": "q", "documents": ["a", "b"]}, timeout=10)
        assert response.status_code == 200
        assert http_ok(triton_ready)
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0
        assert not http_ok(f"{adapter}/health", timeout=1)
        assert not http_ok(triton_ready, timeout=1)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
