"""The environment variables `make triton` and `make serve` read for Triton and the model files.

RERANKER_RELEASE (v3 or v3.5) picks the files `make serve` downloads and serves when RERANKER_MODEL and
RERANKER_PROJECTOR are not set; with them set, the engine recognises the release from the GGUF itself.

The adapter's variables (ADAPTER_PORT, ADAPTER_HOST, API_KEY, ...) are adapter.settings.AdapterSettings'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from adapter.settings import EnvironmentSettings, Port
from stack.download import PROJECTOR_FILE, RELEASES


class Settings(EnvironmentSettings):
    release: Literal["v3", "v3.5"] = Field("v3", validation_alias="RERANKER_RELEASE")
    model: str | None = Field(None, validation_alias="RERANKER_MODEL")  # None: the release's file under models/
    projector: str | None = Field(None, validation_alias="RERANKER_PROJECTOR")
    triton_http_port: Port = 8000
    triton_grpc_port: Port = 8001
    triton_metrics_port: Port = 8002

    @property
    def model_path(self) -> str:
        release = RELEASES[self.release]
        return self.model or str(release.directory / release.model_file)

    @property
    def projector_path(self) -> str:
        return self.projector or str(RELEASES[self.release].directory / PROJECTOR_FILE)


def missing_model_files(settings: Settings) -> str | None:
    """A one-line message naming the variable and the path of the first missing file, or None."""
    for field in ("model", "projector"):
        path = getattr(settings, f"{field}_path")
        if not Path(path).is_file():
            return f"{Settings.variable(field)}: no file at {path}"
    return None
