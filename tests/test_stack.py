"""`make serve` and its pieces, run as the user runs them (subprocesses, real ports)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from stack.processes import http_ok
from tests.servers import free_port, start_serve


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


def test_serve_runs_triton_and_the_adapter_and_stops_both(tiny_q8):
    serve = start_serve(tiny_q8, API_KEY="k")
    try:
        adapter = serve.adapter_url
        assert f"JINA_API_URL={adapter}/v1/rerank" in serve.banner
        assert "JINA_API_KEY=k" in serve.banner
        assert f"curl -s {adapter}/v1/rerank -H 'Authorization: Bearer k'" in serve.banner
        response = httpx.post(f"{adapter}/v1/rerank", headers={"Authorization": "Bearer k"},
                              json={"query": "q", "documents": ["a", "b"]}, timeout=10)
        assert response.status_code == 200
        assert http_ok(serve.triton_ready_url)
        assert serve.stop() == 0
        assert not http_ok(f"{adapter}/health", timeout=1)
        assert not http_ok(serve.triton_ready_url, timeout=1)
    finally:
        serve.stop()
