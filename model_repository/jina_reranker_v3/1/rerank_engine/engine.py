"""The reranking engine: query + documents in, jina-reranker-v3 relevance scores out."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import amx_check
from .errors import InvalidInputError, ModelLoadError, RequestCancelledError
from .llama_runner import LlamaRunner, RunnerOptions
from .projector import load_projector
from .prompt import TEMPLATE_TOKENS, Block, build_block, plan_blocks
from .scoring import cosine, merged_query

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("qwen3",)
# Tokens kept free in every block for what the length estimates cannot see exactly: the
# digits of "I will provide you with {k} passages" and BPE merges at stretch boundaries.
ESTIMATE_SLACK = 8


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model_path: str
    projector_path: str
    llama: RunnerOptions = dataclasses.field(default_factory=RunnerOptions)
    max_query_tokens: int = 512  # also the limit for an instruction
    max_doc_tokens: int = 2048
    max_docs_per_block: int = 125
    # Tokens one request may decode, all passes together; bounds how long one request can hold an instance.
    max_request_tokens: int = 262_144

    @classmethod
    def from_options(cls, model_path: str, projector_path: str, **options: object) -> EngineConfig:
        """Build from flat options (as Triton parameters come), split between engine and llama.cpp.

        An unknown option raises TypeError naming it.
        """
        llama_names = {f.name for f in dataclasses.fields(RunnerOptions)}
        llama = RunnerOptions(**{k: v for k, v in options.items() if k in llama_names})  # type: ignore[arg-type]
        rest = {k: v for k, v in options.items() if k not in llama_names}
        return cls(model_path, projector_path, llama, **rest)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: Sequence[str]
    instruction: str | None = None
    return_embeddings: bool = False


@dataclasses.dataclass(frozen=True)
class RerankResult:
    scores: np.ndarray  # float32 [n_documents], input order
    tokens: int  # tokens decoded for this request, all blocks together
    doc_embeddings: np.ndarray | None = None  # float32 [n_documents, projector width], when asked for


@dataclasses.dataclass(frozen=True)
class Plan:
    """A request cut into passes: document indices and the prompt of each pass."""

    blocks: list[list[int]]  # document indices per pass
    prompts: list[Block]

    @property
    def tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)


class Reranker:
    """Loads the GGUF and projector once and scores requests.

    One llama.cpp context per instance: calls are serialised by an internal lock,
    so an instance may be shared, but runs one batch at a time. Use one instance
    per device (Triton model instance) for parallelism.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        for label, path in (("model", config.model_path), ("projector", config.projector_path)):
            if not Path(path).is_file():
                raise ModelLoadError(f"{path}: {label} file not found")
        self._lock = threading.Lock()
        self._runner = LlamaRunner(config.model_path, amx_check.checked_options(config.llama, config.model_path))
        try:
            self._check_model()
            self.projector = load_projector(config.projector_path, self._runner.n_embd)
            self._runner.reserve(self.token_ids)
            self._wrapper_tokens = len(self.tokenize('\n</passage>\n<passage id="999">\n')) + 1 + ESTIMATE_SLACK
            self._check_context()
            self._runner.start()
        except BaseException:
            self._runner.close()
            raise

    def _check_model(self) -> None:
        path = self.config.model_path
        arch = self._runner.architecture()
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(f"{path}: architecture {arch!r} is not supported; jina-reranker-v3 is "
                                 f"{' or '.join(SUPPORTED_ARCHITECTURES)}")
        ids = {text: self._runner.find_token(text) for text in TEMPLATE_TOKENS}
        missing = [text for text, token_id in ids.items() if token_id is None]
        if missing:
            raise ModelLoadError(f"{path}: vocabulary lacks {', '.join(missing)}; is this a jina-reranker-v3 "
                                 "model?")
        self.token_ids: dict[str, int] = ids  # type: ignore[assignment]

    def _check_context(self) -> None:
        c = self.config
        smallest_block = len(self._build("", [], None).ids) + 3 * c.max_query_tokens + self._max_item_tokens
        if c.llama.n_ctx < smallest_block + ESTIMATE_SLACK:
            raise ModelLoadError(f"n_ctx={c.llama.n_ctx} is too small: a block with a {c.max_query_tokens}-token "
                                 f"query, instruction and one {c.max_doc_tokens}-token document needs {smallest_block} "
                                 "tokens; raise n_ctx or lower the truncation limits")

    @property
    def _max_item_tokens(self) -> int:
        return self.config.max_doc_tokens + self._wrapper_tokens

    @property
    def n_embd(self) -> int:
        return self._runner.n_embd

    @property
    def runner(self) -> LlamaRunner:
        return self._runner

    def tokenize(self, text: str) -> list[int]:
        return self._runner.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._runner.detokenize(ids)

    def close(self) -> None:
        with self._lock:
            self._runner.close()

    # -- scoring ----------------------------------------------------------------------------------

    def rerank(self, query: str, documents: Sequence[str], instruction: str | None = None,
               return_embeddings: bool = False) -> RerankResult:
        result = self.rerank_many([RerankRequest(query, documents, instruction, return_embeddings)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def rerank_many(self, requests: Sequence[RerankRequest]) -> list[RerankResult | InvalidInputError]:
        """Score several requests; a bad request yields its InvalidInputError without failing the others."""
        results: list[RerankResult | InvalidInputError] = [InvalidInputError("not scored")] * len(requests)
        for index, result in self.rerank_stream(requests):
            assert not isinstance(result, RequestCancelledError)
            results[index] = result
        return results

    def rerank_stream(self, requests: Sequence[RerankRequest], cancelled: Callable[[int], bool] | None = None
                      ) -> Iterator[tuple[int, RerankResult | InvalidInputError | RequestCancelledError]]:
        """Yield ``(index, result)`` for each request as soon as it is scored.

        Invalid requests come first, then the rest smallest first, so a large request
        delays small ones of the same batch as little as possible. ``cancelled(index)``
        is polled while decoding: a request nobody waits for any more stops early and
        yields RequestCancelledError. With ``share_decodes`` small requests share decode
        calls. Consume the iterator to the end (or close it): it holds the engine's lock.
        """
        with self._lock:
            plans: dict[int, Plan] = {}
            for index, request in enumerate(requests):
                if cancelled is not None and cancelled(index):
                    yield index, RequestCancelledError("cancelled before it was scored")
                    continue
                try:
                    plans[index] = self.plan(request)
                except InvalidInputError as exc:
                    yield index, exc
            order = sorted(plans, key=lambda i: plans[i].tokens)
            owners = [i for i in order for _ in plans[i].prompts]
            prompts = [p for i in order for p in plans[i].prompts]
            sequence_cancelled = None if cancelled is None else (lambda seq: cancelled(owners[seq]))
            states = self._runner.iter_hidden_states([p.ids for p in prompts], [p.output_positions for p in prompts],
                                                     sequence_cancelled)
            pending: dict[int, list[np.ndarray]] = {}
            dropped: set[int] = set()
            for owner, hidden in zip(owners, states, strict=True):
                if owner in dropped:
                    continue
                if hidden is None:
                    dropped.add(owner)
                    pending.pop(owner, None)
                    yield owner, RequestCancelledError("cancelled while it was being scored")
                    continue
                done = pending.setdefault(owner, [])
                done.append(hidden)
                if len(done) == len(plans[owner].prompts):
                    yield owner, self._score(requests[owner], plans[owner], pending.pop(owner))

    def plan(self, request: RerankRequest) -> Plan:
        """How a request is split into passes and the token ids of each (raises InvalidInputError)."""
        c = self.config
        query, _ = self._prepare(request.query, "query", c.max_query_tokens)
        if not query.strip():
            raise InvalidInputError("query is empty")
        instruction = None
        if request.instruction is not None:
            instruction = self._prepare(request.instruction, "instruction", c.max_query_tokens)[0] or None
        if isinstance(request.documents, str) or not isinstance(request.documents, Sequence):
            raise InvalidInputError("documents must be a list of strings")
        if not request.documents:
            raise InvalidInputError("documents is empty: give at least one")
        docs, lengths = [], []
        for i, doc in enumerate(request.documents):
            text, n_tokens = self._prepare(doc, f"document {i}", c.max_doc_tokens)
            docs.append(text)
            lengths.append(n_tokens + self._wrapper_tokens)
        capacity = c.llama.n_ctx - len(self._build(query, [], instruction).ids) - ESTIMATE_SLACK
        blocks = plan_blocks(lengths, capacity, self._max_item_tokens, c.max_docs_per_block)
        prompts = [self._build(query, [docs[i] for i in block], instruction) for block in blocks]
        for prompt in prompts:
            if len(prompt.ids) > c.llama.n_ctx:
                raise RuntimeError(f"block of {len(prompt.ids)} tokens exceeds n_ctx={c.llama.n_ctx}; "
                                   "the length estimate is wrong")
        plan = Plan(blocks, prompts)
        if plan.tokens > c.max_request_tokens:
            raise InvalidInputError(f"the request needs {plan.tokens} tokens after truncation, more than the "
                                    f"limit of {c.max_request_tokens}; send fewer or shorter documents")
        return plan

    def _prepare(self, text: object, what: str, limit: int) -> tuple[str, int]:
        """Check a text field and truncate it to ``limit`` tokens as the model's reference does."""
        if not isinstance(text, str):
            raise InvalidInputError(f"{what} must be a string, not {type(text).__name__}")
        try:
            ids = self.tokenize(text)
        except UnicodeEncodeError as exc:
            raise InvalidInputError(f"{what} is not valid Unicode text ({exc.reason} at character {exc.start})"
                                    ) from None
        if len(ids) <= limit:
            return text, len(ids)
        return self.detokenize(ids[:limit]), limit

    def _build(self, query: str, docs: Sequence[str], instruction: str | None) -> Block:
        return build_block(query, docs, instruction, self.tokenize, self.token_ids)

    def _score(self, request: RerankRequest, plan: Plan, states: list[np.ndarray]) -> RerankResult:
        n_docs = len(request.documents)
        doc_embeddings = np.empty((n_docs, self.projector.out_features), dtype=np.float32)
        query_embeddings, block_scores = [], []
        for block, hidden in zip(plan.blocks, states, strict=True):
            projected = self.projector(hidden)
            doc_embeddings[block] = projected[:-1]
            query_embeddings.append(projected[-1])
            block_scores.append(cosine(projected[-1], projected[:-1]))
        scores = cosine(merged_query(query_embeddings, block_scores), doc_embeddings.astype(np.float64))
        return RerankResult(scores=scores.astype(np.float32), tokens=sum(len(p.ids) for p in plan.prompts),
                            doc_embeddings=doc_embeddings if request.return_embeddings else None)
