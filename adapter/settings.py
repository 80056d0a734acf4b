"""Adapter settings, read once from the environment. Every limit has a documented default."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class AdapterSettings:
    triton_url: str = "127.0.0.1:8001"  # host:port, no scheme
    triton_protocol: str = "grpc"  # "grpc" or "http"
    triton_model: str = "jina_reranker_v3"
    model_name: str = "jina-reranker-v3"  # reported in responses, whatever model name a client sends
    api_key: str = ""  # empty: any bearer token (or none) is accepted
    request_timeout_s: float = 10.0  # per-request deadline for Triton's answer -> 504
    max_body_bytes: int = 8 * 1024 * 1024  # -> 413
    max_documents: int = 1000  # -> 422
    max_document_chars: int = 100_000  # -> 422; documents are truncated to 2,048 tokens by the model anyway
    max_query_chars: int = 20_000  # -> 422; the query is truncated to 512 tokens by the model anyway
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are configured

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> AdapterSettings:
        """Each field from its upper-case name (e.g. MAX_DOCUMENTS); CORS_ORIGINS is comma-separated."""
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(field.name.upper())
            if raw is None or raw == "":
                continue
            try:
                if field.type == "int":
                    values[field.name] = int(raw)
                elif field.type == "float":
                    values[field.name] = float(raw)
                elif field.name == "cors_origins":
                    values[field.name] = tuple(o.strip() for o in raw.split(",") if o.strip())
                else:
                    values[field.name] = raw
            except ValueError:
                raise SystemExit(f"{field.name.upper()}={raw!r} is not a valid {field.type}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.triton_protocol not in ("grpc", "http"):
            raise SystemExit(f"TRITON_PROTOCOL must be grpc or http, not {settings.triton_protocol!r}")
        if "://" in settings.triton_url:
            raise SystemExit(f"TRITON_URL is host:port without a scheme, not {settings.triton_url!r}")
        return settings

    def public_limits(self) -> dict[str, object]:
        return {"max_body_bytes": self.max_body_bytes, "max_documents": self.max_documents,
                "max_document_chars": self.max_document_chars, "max_query_chars": self.max_query_chars,
                "request_timeout_s": self.request_timeout_s}
