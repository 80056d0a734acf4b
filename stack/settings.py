"""The environment variables `make triton` and `make serve` read for Triton and the model files.

The adapter's variables (ADAPTER_PORT, ADAPTER_HOST, API_KEY, ...) are adapter.settings.AdapterSettings'.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from adapter.settings import EnvironmentSettings, Port
from stack.download import MODEL_FILE, MODELS_DIR, PROJECTOR_FILE


class Settings(EnvironmentSettings):
    model: str = Field(str(MODELS_DIR / MODEL_FILE), validation_alias="RERANKER_MODEL")
    projector: str = Field(str(MODELS_DIR / PROJECTOR_FILE), validation_alias="RERANKER_PROJECTOR")
    triton_http_port: Port = 8000
    triton_grpc_port: Port = 8001
    triton_metrics_port: Port = 8002


def missing_model_files(settings: Settings) -> str | None:
    """A one-line message naming the variable and the path of the first missing file, or None."""
    for field in ("model", "projector"):
        path = getattr(settings, field)
        if not Path(path).is_file():
            return f"{Settings.variable(field)}: no file at {path}"
    return None
