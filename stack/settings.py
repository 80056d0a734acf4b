"""The environment variables `make triton` and `make serve` read, in one place."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str = str(MODELS_DIR / "jina-reranker-v3-Q8_0.gguf")
    projector: str = str(MODELS_DIR / "projector.safetensors")
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    adapter_port: int = 8080
    api_key: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Variables are the field names in upper case, except RERANKER_MODEL / RERANKER_PROJECTOR."""
        names = {"model": "RERANKER_MODEL", "projector": "RERANKER_PROJECTOR"}
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            variable = names.get(field.name, field.name.upper())
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            if field.type == "int":
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise SystemExit(f"{variable}={raw!r} is not a port number")
                values[field.name] = int(raw)
            else:
                values[field.name] = raw
        return cls(**values)  # type: ignore[arg-type]


def missing_model_files(settings: Settings) -> str | None:
    """A one-line message naming the variable and the path of the first missing file, or None."""
    for variable, path in (("RERANKER_MODEL", settings.model), ("RERANKER_PROJECTOR", settings.projector)):
        if not Path(path).is_file():
            return f"{variable}: no file at {path}"
    return None
