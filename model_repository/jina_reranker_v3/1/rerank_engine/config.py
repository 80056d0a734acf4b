"""Engine and llama.cpp settings: plain data, importable without llama.cpp."""

from __future__ import annotations

import dataclasses

from .recipes import Recipe


@dataclasses.dataclass(frozen=True)
class RunnerOptions:
    """llama.cpp model and context settings."""

    n_ctx: int = 8192
    n_batch: int = 2048
    n_ubatch: int = 512
    n_seq_max: int = 16
    n_threads: int = 0  # 0: one per available core
    n_gpu_layers: int = 0  # -1: all
    main_gpu: int = 0
    # Off by default: it rounds K and V through F16 whatever the cache type (llama.cpp casts an F32 cache for
    # it), which exact comparisons avoid. Both Triton configs turn it on, over an F16 cache.
    flash_attn: bool = False
    kv_cache_type: str = "f16"  # "f32" (without flash attention) for exact comparisons; "q8_0" 3x slower on CPU
    # Several requests' passes in one llama.cpp decode. Measured 0.8x on CPU (attention then spans
    # every sequence's cells); meant for GPUs, where small decodes leave the device idle.
    share_decodes: bool = False
    # llama.cpp's extra CPU buffer types: weights repacked for AVX-512, or for AMX where built and present.
    # Turned off only when the AMX self-check fails (rerank_engine.amx_check).
    extra_buffers: bool = True


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model_path: str
    projector_path: str
    llama: RunnerOptions = dataclasses.field(default_factory=RunnerOptions)
    # None: the model's recipe decides (rerank_engine.recipes: v3 512 / 2048 / 125, v3.5 2048 / 8192 / 125).
    max_query_tokens: int | None = None  # also the limit for an instruction
    max_doc_tokens: int | None = None
    max_docs_per_block: int | None = None
    # Tokens one request may decode, all passes together; bounds how long one request can hold an instance.
    max_request_tokens: int = 262_144
    # Tokens of one timed pass at start, so deadline budgets use this machine's speed from the first request.
    calibration_tokens: int = 256

    def with_recipe(self, recipe: Recipe) -> EngineConfig:
        """This configuration with the limits it leaves open (None) taken from ``recipe``."""
        limits = ("max_query_tokens", "max_doc_tokens", "max_docs_per_block")
        return dataclasses.replace(self, **{name: getattr(recipe, name) for name in limits
                                            if getattr(self, name) is None})

    @classmethod
    def from_options(cls, model_path: str, projector_path: str, **options: object) -> EngineConfig:
        """Build from flat options (as Triton parameters come), split between engine and llama.cpp.

        An unknown option raises TypeError naming it.
        """
        llama_names = {f.name for f in dataclasses.fields(RunnerOptions)}
        llama = RunnerOptions(**{k: v for k, v in options.items() if k in llama_names})  # type: ignore[arg-type]
        rest = {k: v for k, v in options.items() if k not in llama_names}
        return cls(model_path, projector_path, llama, **rest)  # type: ignore[arg-type]
