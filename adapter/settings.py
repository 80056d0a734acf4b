"""Typed settings from the environment (pydantic-settings), each variable named once, by its field.

A field is read from its upper-case name (MAX_DOCUMENTS for ``max_documents``) or from its alias; an empty
variable counts as unset. ``from_environment()`` is what the programs call: a bad value stops them at start-up
with one line naming the variable and the problem. Constructed directly (as tests do), settings take only
their keyword arguments and defaults, never the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

# The Triton model's name, defined here once: the model's folder in model_repository/ and the `name:` of its
# configs must be the same (tests check it); the stack and the tests read this constant.
TRITON_MODEL = "jina_reranker_v3"

Port = Annotated[int, Field(gt=0, lt=65536)]
Positive = Annotated[int, Field(gt=0)]
SettingsT = TypeVar("SettingsT", bound="EnvironmentSettings")


class EnvironmentSettings(BaseSettings):
    """Base of the adapter's and the local stack's settings: frozen, read from the environment on request."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, populate_by_name=True,
                                      protected_namespaces=())

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment only through from_environment()

    @classmethod
    def from_environment(cls: type[SettingsT], environ: Mapping[str, str] = os.environ) -> SettingsT:
        """Settings from ``environ``, or SystemExit with one line: ``NAME='value': problem`` per bad variable."""
        source = EnvSettingsSource(cls)
        source.env_vars = {name.lower(): value for name, value in environ.items() if value}  # case-insensitive
        try:
            return cls(**source())
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                variable = cls.variable(str(error["loc"][0]))
                raw = source.env_vars.get(variable.lower(), error["input"])
                problems.append(f"{variable}={raw!r}: {error['msg'].removeprefix('Value error, ')}")
            raise SystemExit("; ".join(problems)) from None

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of a field, given by name or by alias."""
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            if name in (field_name, alias):
                return (alias or field_name).upper()
        raise KeyError(f"{cls.__name__} has no field {name!r}")

    @classmethod
    def environment(cls, **values: object) -> dict[str, str]:
        """The environment variables that set these fields, for a child process."""
        return {cls.variable(name): str(value) for name, value in values.items()}


class AdapterSettings(EnvironmentSettings):
    """The adapter's settings; every limit has a documented default."""

    triton_url: str = "127.0.0.1:8001"  # host:port, no scheme
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_model: str = TRITON_MODEL
    model_name: str = "jina-reranker-v3"  # reported in responses, whatever model name a client sends
    api_key: str = ""  # empty: any bearer token (or none) is accepted
    # Per-request deadline for Triton's answer: 9 s leaves room to answer inside LibreChat's 10 s client timeout.
    request_timeout_s: Annotated[float, Field(gt=0)] = 9.0
    # At the deadline: "budgeted" answers with a partial ranking, the documents not scored yet completed by
    # lexical overlap with the query; "exact" answers 504.
    rerank_mode: Literal["budgeted", "exact"] = "budgeted"
    max_body_bytes: Positive = 8 * 1024 * 1024  # -> 413
    # Rerank requests held at once, and the bytes of their bodies (declared, or MAX_BODY_BYTES when chunked)
    # -> 503. A body costs the adapter several times its size while parsed (8 concurrent 8 MiB bodies: ~500 MiB
    # peak), so the default keeps it well inside the manifests' 1 GiB.
    max_concurrent_requests: Positive = 64
    max_buffered_bytes: Positive = 64 * 1024 * 1024
    max_documents: Positive = 1000  # -> 422
    max_document_chars: Positive = 100_000  # -> 422; documents are truncated to 2,048 tokens by the model anyway
    max_query_chars: Positive = 20_000  # -> 422; the query is truncated to 512 tokens by the model anyway
    # Comma-separated in CORS_ORIGINS; CORS is off unless origins are configured.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    adapter_host: str = "127.0.0.1"  # 0.0.0.0 to accept other hosts (the Docker image sets it)
    adapter_port: Port = 8080
    # How long an idle client connection is kept open. Longer than the idle timeout of the clients' connection
    # pools (Node's global agent and httpx: 5 s), so that the client, not the server, closes an idle connection:
    # with uvicorn's default of 5 s both did at once, and a LibreChat request sent on the closing connection
    # failed with "socket hang up" (ECONNRESET) and fell back to page order.
    keep_alive_s: Positive = 75
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @field_validator("triton_url")
    @classmethod
    def _no_scheme(cls, value: str) -> str:
        if "://" in value:
            raise ValueError("host:port without a scheme")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("max_buffered_bytes")
    @classmethod
    def _a_whole_body_fits(cls, value: int, info: ValidationInfo) -> int:
        body = info.data.get("max_body_bytes")
        if body is not None and value < body:
            raise ValueError(f"less than MAX_BODY_BYTES ({body}): a body at that limit could never be admitted")
        return value

    def public_limits(self) -> dict[str, object]:
        return {"max_body_bytes": self.max_body_bytes, "max_concurrent_requests": self.max_concurrent_requests,
                "max_buffered_bytes": self.max_buffered_bytes, "max_documents": self.max_documents,
                "max_document_chars": self.max_document_chars, "max_query_chars": self.max_query_chars,
                "request_timeout_s": self.request_timeout_s, "rerank_mode": self.rerank_mode}
