"""The settings of the adapter and the local stack: defaults, parsing, and one-line errors at start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.settings import TRITON_MODEL, AdapterSettings
from perf.load import loadgen
from stack.settings import Settings, missing_model_files
from stack.triton_server import MODEL_NAME, REPOSITORY

pytestmark = pytest.mark.unit


def test_defaults():
    settings = AdapterSettings()
    assert settings.request_timeout_s == 9.0  # inside LibreChat's 10 s
    assert settings.rerank_mode == "budgeted"
    assert (settings.triton_url, settings.triton_protocol, settings.triton_model) == ("127.0.0.1:8001", "grpc",
                                                                                    TRITON_MODEL)
    assert (settings.max_body_bytes, settings.max_documents, settings.max_document_chars,
            settings.max_query_chars) == (8 * 1024 * 1024, 1000, 100_000, 20_000)
    assert (settings.api_key, settings.cors_origins) == ("", ())
    assert (settings.adapter_host, settings.adapter_port, settings.log_level) == ("127.0.0.1", 8080, "INFO")
    assert settings.public_limits()["request_timeout_s"] == 9.0
    assert settings.public_limits()["rerank_mode"] == "budgeted"
    stack = Settings()
    assert (stack.triton_http_port, stack.triton_grpc_port, stack.triton_metrics_port) == (8000, 8001, 8002)
    assert stack.release == "v3"
    assert Path(stack.model_path).name == "jina-reranker-v3-Q8_0.gguf"
    assert Path(stack.projector_path).name == "projector.safetensors"
    assert AdapterSettings.from_environment({}) == settings
    assert Settings.from_environment({}) == stack


def test_each_variable_is_its_field_name_in_upper_case():
    environ = {"TRITON_URL": "triton:9001", "TRITON_PROTOCOL": "http", "TRITON_MODEL": "other",
               "MODEL_NAME": "m", "API_KEY": "k", "REQUEST_TIMEOUT_S": "2.5", "RERANK_MODE": "exact",
               "MAX_BODY_BYTES": "10", "MAX_CONCURRENT_REQUESTS": "3", "MAX_BUFFERED_BYTES": "20",
               "MAX_DOCUMENTS": "11", "MAX_DOCUMENT_CHARS": "12", "MAX_QUERY_CHARS": "13",
               "ADAPTER_HOST": "0.0.0.0", "ADAPTER_PORT": "80", "KEEP_ALIVE_S": "30", "LOG_LEVEL": "debug"}
    settings = AdapterSettings.from_environment(environ)
    assert settings == AdapterSettings(triton_url="triton:9001", triton_protocol="http", triton_model="other",
                                       model_name="m", api_key="k", request_timeout_s=2.5, rerank_mode="exact",
                                       max_body_bytes=10, max_concurrent_requests=3, max_buffered_bytes=20,
                                       max_documents=11, max_document_chars=12,
                                       max_query_chars=13, adapter_host="0.0.0.0", adapter_port=80,
                                       keep_alive_s=30, log_level="DEBUG")
    assert set(environ) == {AdapterSettings.variable(name) for name in AdapterSettings.model_fields} - {
        "CORS_ORIGINS"}
    stack = Settings.from_environment({"RERANKER_MODEL": "m.gguf", "RERANKER_PROJECTOR": "p.safetensors",
                                       "TRITON_HTTP_PORT": "1", "TRITON_GRPC_PORT": "2", "TRITON_METRICS_PORT": "3"})
    assert stack == Settings(model="m.gguf", projector="p.safetensors", triton_http_port=1, triton_grpc_port=2,
                             triton_metrics_port=3)


def test_the_release_picks_the_default_model_files():
    v35 = Settings.from_environment({"RERANKER_RELEASE": "v3.5"})
    assert Path(v35.model_path).name == "jina-reranker-v3.5-Q8_0.gguf"
    assert Path(v35.projector_path).parent.name == "v3.5"
    assert Path(v35.projector_path).parent != Path(Settings().projector_path).parent
    chosen = Settings.from_environment({"RERANKER_RELEASE": "v3.5", "RERANKER_MODEL": "m.gguf"})
    assert chosen.model_path == "m.gguf"
    with pytest.raises(SystemExit, match="RERANKER_RELEASE='v4'"):
        Settings.from_environment({"RERANKER_RELEASE": "v4"})


def test_serve_has_the_adapter_report_the_release_unless_model_name_is_set():
    from stack.serve import adapter_environment

    v35 = Settings.from_environment({"RERANKER_RELEASE": "v3.5"})
    assert adapter_environment(v35, {}) == {"MODEL_NAME": "jina-reranker-v3.5"}
    assert adapter_environment(Settings(), {}) == {"MODEL_NAME": "jina-reranker-v3"}
    assert adapter_environment(v35, {"MODEL_NAME": "mine"}) == {}
    reported = AdapterSettings.from_environment(adapter_environment(v35, {}))
    assert reported.model_name == "jina-reranker-v3.5"


def test_an_empty_variable_counts_as_unset():
    assert AdapterSettings.from_environment({"MAX_DOCUMENTS": "", "API_KEY": ""}) == AdapterSettings()


def test_direct_construction_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("MAX_DOCUMENTS", "3")
    monkeypatch.setenv("TRITON_HTTP_PORT", "9")
    assert AdapterSettings().max_documents == 1000
    assert Settings().triton_http_port == 8000
    assert AdapterSettings.from_environment().max_documents == 3
    assert Settings.from_environment().triton_http_port == 9


@pytest.mark.parametrize(("value", "origins"), [
    ("https://chat.example", ("https://chat.example",)),
    (" https://a.example, https://b.example:8443 ,,", ("https://a.example", "https://b.example:8443")),
    (",", ()),
])
def test_cors_origins_are_comma_separated(value, origins):
    assert AdapterSettings.from_environment({"CORS_ORIGINS": value}).cors_origins == origins


@pytest.mark.parametrize(("cls", "variable", "value", "problem"), [
    (AdapterSettings, "MAX_DOCUMENTS", "many", "a valid integer"),
    (AdapterSettings, "MAX_BODY_BYTES", "0", "greater than 0"),
    (AdapterSettings, "MAX_CONCURRENT_REQUESTS", "0", "greater than 0"),
    (AdapterSettings, "MAX_BUFFERED_BYTES", "1000", "less than MAX_BODY_BYTES (8388608)"),
    (AdapterSettings, "MAX_DOCUMENT_CHARS", "1.5", "a valid integer"),
    (AdapterSettings, "MAX_QUERY_CHARS", "-1", "greater than 0"),
    (AdapterSettings, "REQUEST_TIMEOUT_S", "soon", "a valid number"),
    (AdapterSettings, "REQUEST_TIMEOUT_S", "0", "greater than 0"),
    (AdapterSettings, "RERANK_MODE", "fast", "'budgeted' or 'exact'"),
    (AdapterSettings, "TRITON_PROTOCOL", "tcp", "'grpc' or 'http'"),
    (AdapterSettings, "TRITON_URL", "http://triton:8001", "host:port without a scheme"),
    (AdapterSettings, "ADAPTER_PORT", "70000", "less than 65536"),
    (AdapterSettings, "LOG_LEVEL", "loud", "'DEBUG', 'INFO'"),
    (Settings, "TRITON_HTTP_PORT", "eighty", "a valid integer"),
    (Settings, "TRITON_GRPC_PORT", "0", "greater than 0"),
    (Settings, "TRITON_METRICS_PORT", "65536", "less than 65536"),
])
def test_a_bad_value_is_one_line_naming_the_variable(cls, variable, value, problem):
    with pytest.raises(SystemExit) as raised:
        cls.from_environment({variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}={value!r}: ")
    assert problem in message
    assert "\n" not in message


def test_every_bad_variable_is_named_on_the_one_line():
    with pytest.raises(SystemExit) as raised:
        AdapterSettings.from_environment({"MAX_DOCUMENTS": "x", "RERANK_MODE": "y\nz"})
    message = str(raised.value)
    assert "\n" not in message
    assert re.fullmatch(r"RERANK_MODE='y\\nz': .+; MAX_DOCUMENTS='x': .+", message)  # in field order


@pytest.mark.parametrize(("module", "variable"), [("adapter", "MAX_DOCUMENTS"), ("stack.serve", "ADAPTER_PORT"),
                                                  ("stack.serve", "TRITON_GRPC_PORT"),
                                                  ("stack.triton_server", "TRITON_HTTP_PORT")])
def test_programs_stop_at_start_up_with_the_one_line(module, variable):
    result = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=60,
                            env={**os.environ, variable: "x"})
    assert result.returncode == 1
    assert result.stderr.startswith(f"{variable}='x': ")
    assert result.stderr.count("\n") == 1  # no traceback


def test_missing_model_file_names_its_variable(tmp_path):
    present = tmp_path / "projector.safetensors"
    present.write_bytes(b"")
    assert missing_model_files(Settings(model=str(tmp_path / "m.gguf"), projector=str(present))) == (
        f"RERANKER_MODEL: no file at {tmp_path / 'm.gguf'}")
    assert missing_model_files(Settings(model=str(present), projector=str(tmp_path / "p"))) == (
        f"RERANKER_PROJECTOR: no file at {tmp_path / 'p'}")


def test_the_model_name_is_the_folder_and_config_name():
    assert MODEL_NAME == TRITON_MODEL == AdapterSettings().triton_model == loadgen.MODEL
    folder = REPOSITORY / TRITON_MODEL
    for config in (folder / "config.pbtxt", folder / "configs" / "cpu.pbtxt"):
        assert re.findall(r'^name:\s*"([^"]*)"', config.read_text(), re.MULTILINE) == [folder.name]


def test_a_child_process_environment_names_each_field_by_its_variable():
    assert AdapterSettings.environment(adapter_port=81, triton_url="h:1") == {"ADAPTER_PORT": "81", "TRITON_URL": "h:1"}
    assert Settings.environment(model=Path("/m.gguf")) == {"RERANKER_MODEL": "/m.gguf"}
    environ = Settings.environment(model="m", triton_grpc_port=9)
    assert Settings.from_environment(environ) == Settings(model="m", triton_grpc_port=9)
    with pytest.raises(KeyError, match="no field 'max_documents'"):
        Settings.environment(max_documents=1)
