"""The reranking engine: query + documents in, jina-reranker-v3 / v3.5 relevance scores out."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import amx_check
from .budget import PassTimer, affordable_count, budgeted_scores, fair_shares
from .config import EngineConfig
from .errors import InvalidInputError, ModelLoadError, RequestCancelledError
from .lexical import lexical_order
from .llama_runner import LlamaRunner
from .projector import load_projector
from .prompt import IM_START, SYSTEM_PROMPT, TEMPLATE_TOKENS, Block, build_block, plan_blocks, template_tokens
from .recipes import SLIDING_WINDOW_KEY, Recipe, RecipeError, select
from .request import RerankRequest, RerankResult
from .scoring import cosine, merged_query

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("qwen3",)
# Tokens kept free in every block for what the length estimates cannot see exactly: the
# digits of "I will provide you with {k} passages" and BPE merges at stretch boundaries.
ESTIMATE_SLACK = 8
# A budgeted request plans its passes to end this long before its deadline (projection, scoring and the
# response's trip back to the client), and plans with this fraction of its share (estimates are noisy).
ANSWER_RESERVE_S = 0.3
PLAN_FRACTION = 0.85
# A pass still running this long before the deadline is stopped; its documents are then ranked lexically.
STOP_BEFORE_DEADLINE_S = 0.15
# Requests whose deadlines lie this close together share the time as one group (a search's requests).
SAME_DEADLINE_S = 1.0
# A budgeted request's first round of candidates uses at most this part of its share; later rounds are
# planned from the timing of the first. A later round with fewer documents than this is not worth its pass.
FIRST_ROUND_FRACTION = 0.5
MIN_ROUND_DOCUMENTS = 4


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A request's texts after truncation, with each document's token count in a prompt."""

    query: str
    instruction: str | None
    docs: list[str]
    lengths: list[int]  # tokens per document, wrapper included
    capacity: int  # tokens a pass has for documents


@dataclasses.dataclass(frozen=True)
class Plan:
    """A request cut into passes: document indices and the prompt of each pass."""

    blocks: list[list[int]]  # document indices per pass
    prompts: list[Block]
    prepared: Prepared

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
            self.recipe = self._recipe()
            self.config = config = config.with_recipe(self.recipe)
            log.info("%s: %s recipe, sliding window %s, query/document limits %d/%d tokens", config.model_path,
                     self.recipe.name, self._runner.sliding_window or "none", config.max_query_tokens,
                     config.max_doc_tokens)
            self.projector = load_projector(config.projector_path, self._runner.n_embd)
            self._runner.reserve(self.token_ids)
            self._wrapper_tokens = len(self.tokenize('\n</passage>\n<passage id="999">\n')) + 1 + ESTIMATE_SLACK
            self._check_context()
            self._runner.start()
            self._timer = PassTimer()
            self._prefix = self._fixed_prefix()
            self._calibrate()
        except BaseException:
            self._runner.close()
            raise

    def _fixed_prefix(self) -> list[int]:
        """The token ids every prompt starts with (the system turn), whose KV cache budgeted rounds reuse."""
        first = self._build("a", ["b"], None).ids
        second = self._build("c d", ["e", "f", "g"], "h").ids
        length = next((i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y), 0)
        return first[:length]

    def _calibrate(self) -> None:
        """Time one pass of ``calibration_tokens`` tokens, after a short untimed one that pays for lazy set-up."""
        size = min(self.config.calibration_tokens, self.config.llama.n_ctx)
        if size <= 0:
            return
        filler = self.tokenize(SYSTEM_PROMPT) or [self.token_ids[IM_START]]
        ids = (filler * (size // len(filler) + 1))[:size]
        self._runner.hidden_states([ids[:16]], [[len(ids[:16]) - 1]])
        list(self._runner.iter_hidden_states([ids], [[size - 1]], None, self._timer.observe))
        log.info("calibrated: %.0f tokens/s at %d tokens", self._timer.tokens_per_second(size), size)

    @property
    def pass_timer(self) -> PassTimer:
        """What the instance has learnt of its own speed (read-only use: benches and logs)."""
        return self._timer

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

    def _recipe(self) -> Recipe:
        """The release's recipe, from the GGUF's metadata (``recipes.select``)."""
        declared = self._runner.metadata(f"{self._runner.architecture()}.{SLIDING_WINDOW_KEY}")
        try:
            return select(self._runner.metadata("general.name"), int(declared or 0), self._runner.sliding_window)
        except RecipeError as exc:
            raise ModelLoadError(f"{self.config.model_path}: {exc}") from None

    def _check_context(self) -> None:
        """Refuse an ``n_ctx`` in which a query and an instruction at their limit leave no room for a document
        at its limit (``prepare`` keeps ``ESTIMATE_SLACK`` free, and packing needs more than one item left)."""
        c = self.config
        template = template_tokens(self.tokenize, self.token_ids, self.recipe.opening_query_marker)
        smallest_block = template + 3 * c.max_query_tokens + ESTIMATE_SLACK + self._max_item_tokens + 1
        if c.llama.n_ctx < smallest_block:
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

    def rerank_many(self, requests: Sequence[RerankRequest]) -> list[RerankResult | Exception]:
        """Score several requests; a request that fails (InvalidInputError for a bad one) yields its exception
        without failing the others."""
        results: list[RerankResult | Exception] = [InvalidInputError("not scored")] * len(requests)
        for index, result in self.rerank_stream(requests):
            assert not isinstance(result, RequestCancelledError)
            results[index] = result
        return results

    def rerank_stream(self, requests: Sequence[RerankRequest], cancelled: Callable[[int], bool] | None = None
                      ) -> Iterator[tuple[int, RerankResult | Exception]]:
        """Yield ``(index, result)`` for each request as soon as it is scored, or the exception it failed with.

        A request's failure is its own: InvalidInputError for a bad request, any other exception (logged) for
        a fault met while scoring it; the other requests of the batch are scored all the same.
        Invalid requests come first, then the rest smallest first, so a large request
        delays small ones of the same batch as little as possible. ``cancelled(index)``
        is polled while decoding: a request nobody waits for any more stops early and
        yields RequestCancelledError. With ``share_decodes`` small requests share decode
        calls. Consume the iterator to the end (or close it): it holds the engine's lock.

        Requests with a ``deadline`` are budgeted when the batch is not predicted to be
        scored whole in time (``_stream_budgeted``); otherwise every request is scored exactly.
        """
        with self._lock:
            prepared: dict[int, Prepared] = {}
            for index, request in enumerate(requests):
                if cancelled is not None and cancelled(index):
                    yield index, RequestCancelledError("cancelled before it was scored")
                    continue
                try:
                    prepared[index] = self._checked(self.prepare(request))
                except Exception as exc:
                    yield index, failure(index, exc)
            if self._fits_whole(requests, prepared):
                plans: dict[int, Plan] = {}
                for index, request_prepared in prepared.items():
                    try:
                        plans[index] = self._pack(request_prepared, range(len(request_prepared.docs)))
                    except Exception as exc:
                        yield index, failure(index, exc)
                yield from self._stream_exact(requests, plans, cancelled)
            else:
                yield from self._stream_budgeted(requests, prepared, cancelled)

    def _whole_seconds(self, prepared: Prepared) -> float:
        return self._subset_seconds(prepared, reuse_prefix=False)(range(len(prepared.docs)))

    def _fits_whole(self, requests: Sequence[RerankRequest], prepared: dict[int, Prepared]) -> bool:
        """Whether every request, scored whole smallest first, is predicted to finish before its deadline."""
        order = sorted(prepared, key=lambda i: sum(prepared[i].lengths))
        return self._in_time(requests, [(i, self._whole_seconds(prepared[i])) for i in order])

    def _in_time(self, requests: Sequence[RerankRequest], work: Iterable[tuple[int | None, float]]) -> bool:
        """Whether ``work``, ``(request index, predicted seconds)`` done in this order from now, is predicted to
        leave each request done within the part of its time to its deadline that plans may use. Work of index
        None takes time but is not judged."""
        finish = now = time.monotonic()
        for index, seconds in work:
            finish += seconds
            deadline = None if index is None else requests[index].deadline
            if deadline is not None and finish - now > (deadline - ANSWER_RESERVE_S - now) * PLAN_FRACTION:
                return False
        return True

    def _stream_exact(self, requests: Sequence[RerankRequest], plans: dict[int, Plan],
                      cancelled: Callable[[int], bool] | None
                      ) -> Iterator[tuple[int, RerankResult | Exception]]:
        """Every request scored whole, smallest first; a pass that would end past a deadline is stopped.

        The batch was predicted to fit; with deadlines that prediction is made again after each pass, from
        the time left and what the instance has learnt since. When a request not started yet would no longer
        be done in time (passes ran slower than predicted: a busy machine, another instance on the same
        cores), the requests not started are budgeted (``_stream_budgeted``) and one part-way through is
        answered with the passes it has, instead of decoding on smallest first until the last requests'
        deadlines pass unscored. A request part-way through with none after it runs on to its hard stop.
        """
        order = sorted(plans, key=lambda i: plans[i].tokens)
        owners = [i for i in order for _ in plans[i].prompts]
        blocks = [b for i in order for b in plans[i].blocks]
        prompts = [p for i in order for p in plans[i].prompts]
        stops = {i: self._stop_check(requests[i], None if cancelled is None else functools.partial(cancelled, i))
                 for i in order}
        passes: dict[int, list[tuple[list[int], Block, np.ndarray | None]]] = {}
        dropped: set[int] = set()
        states = self._isolated_states(prompts, lambda seq: owners[seq] in dropped or stops[owners[seq]]())
        replan = any(requests[i].deadline is not None for i in order)
        for position, hidden in enumerate(states):
            owner = owners[position]
            if owner in dropped:
                pass
            elif isinstance(hidden, Exception) or (hidden is None and cancelled is not None and cancelled(owner)):
                dropped.add(owner)
                passes.pop(owner, None)
                yield owner, (failure(owner, hidden) if isinstance(hidden, Exception)
                              else RequestCancelledError("cancelled while it was being scored"))
            else:
                done = passes.setdefault(owner, [])
                done.append((blocks[position], prompts[position], hidden))
                if len(done) == len(plans[owner].prompts):
                    try:
                        yield owner, self._finish(requests[owner], plans[owner], passes.pop(owner), None)
                    except Exception as exc:
                        yield owner, failure(owner, exc)
            later = [p for p in range(position + 1, len(prompts)) if replan and owners[p] not in dropped]
            if any(owners[p] not in passes for p in later) and not self._in_time(requests, [
                    (None if owners[p] in passes else owners[p], self._timer.seconds([len(prompts[p].ids)]))
                    for p in later]):
                states.close()
                yield from self._replanned(requests, plans, passes, [owners[p] for p in later], cancelled)
                return

    def _replanned(self, requests: Sequence[RerankRequest], plans: dict[int, Plan],
                   passes: dict[int, list[tuple[list[int], Block, np.ndarray | None]]], unfinished: Sequence[int],
                   cancelled: Callable[[int], bool] | None) -> Iterator[tuple[int, RerankResult | Exception]]:
        """The rest of an exact stream that fell behind: requests part-way through answered with the passes they
        have (the rest of their documents ranked lexically), the others budgeted in the time left."""
        for index in passes:
            try:
                yield index, self._finish(requests[index], plans[index], passes[index], None)
            except Exception as exc:
                yield index, failure(index, exc)
        rest = {i: plans[i].prepared for i in dict.fromkeys(unfinished) if i not in passes}
        yield from self._stream_budgeted(requests, rest, cancelled)

    def _isolated_states(self, prompts: Sequence[Block], stop: Callable[[int], bool]
                         ) -> Iterator[np.ndarray | Exception | None]:
        """Hidden states of each prompt in order (None: stopped by ``stop(index)``), or the exception its decode
        raised, so that a decode failure stays with the request whose pass it was.

        A decode that raises ends llama.cpp's stream; the prompts not yet yielded are decoded again in a new
        one. With ``share_decodes`` a decode holds the passes of several requests: the first pass not yet
        yielded is then tried alone first, and the error is charged to it only when it fails alone.
        """
        start, alone = 0, False
        while start < len(prompts):
            chunk = prompts[start:start + 1] if alone else prompts[start:]
            first, alone_before, alone = start, alone, False
            try:
                for hidden in self._runner.iter_hidden_states(
                        [p.ids for p in chunk], [p.output_positions for p in chunk],
                        lambda seq, first=first: stop(first + seq), self._timer.observe):
                    start += 1
                    yield hidden
            except Exception as exc:
                if self.config.llama.share_decodes and not alone_before and len(prompts) - start > 1:
                    alone = True
                    continue
                start += 1
                yield exc

    def _stop_check(self, request: RerankRequest, cancelled: Callable[[], bool] | None) -> Callable[[], bool]:
        """Whether to stop decoding ``request``: its client left, or its deadline is about to pass."""
        hard_stop = float("inf") if request.deadline is None else request.deadline - STOP_BEFORE_DEADLINE_S

        def stop() -> bool:
            return time.monotonic() > hard_stop or (cancelled is not None and cancelled())

        return stop

    def _finish(self, request: RerankRequest, plan: Plan, passes: Sequence[tuple[list[int], Block,
                np.ndarray | None]], lexical: list[int] | None) -> RerankResult:
        """The result from a plan's passes: exact when every document's pass finished, else partial."""
        finished = [(block, prompt, hidden) for block, prompt, hidden in passes if hidden is not None]
        prepared = plan.prepared
        if len(finished) == len(passes) and sum(len(block) for block, _, _ in finished) == len(prepared.docs):
            return self._score(request, plan, [hidden for _, _, hidden in finished])
        return self._score_partial(request, finished, lexical or lexical_order(prepared.query, prepared.docs))

    def _stream_budgeted(self, requests: Sequence[RerankRequest], prepared: dict[int, Prepared],
                         cancelled: Callable[[int], bool] | None
                         ) -> Iterator[tuple[int, RerankResult | RequestCancelledError]]:
        """Score requests one at a time, earliest deadline first, each within a fair share of the time left.

        Requests whose deadlines lie together (a search's requests arrive together) split the time to
        their deadline: first each one's floor, the time to model-score its top_n, for as many as fit,
        then max-min fairly by predicted need. The one needing least among those whose floor fits goes
        first, and time it leaves unused goes to the others, since shares are recomputed after each
        request.
        """
        orders = {i: lexical_order(p.query, p.docs) for i, p in prepared.items()}
        remaining = set(prepared)
        while remaining:
            now = time.monotonic()
            deadline = min(requests[i].deadline or math.inf for i in remaining)
            need = {i: self._whole_seconds(prepared[i]) for i in remaining
                    if (requests[i].deadline or math.inf) <= deadline + SAME_DEADLINE_S}
            group = sorted(need, key=lambda i: (need[i], i))
            demands = [need[i] for i in group]
            floors = [self._subset_seconds(prepared[i])(orders[i][:requests[i].min_scored]) for i in group]
            shares = fair_shares(deadline - now - ANSWER_RESERVE_S, demands, floors)
            # Requests whose top_n fits go first; one whose top_n does not fit goes last, where it gets whatever
            # the others leave (passes often take less than predicted).
            pick = next((k for k in range(len(group)) if shares[k] >= floors[k]), 0)
            index, share = group[pick], shares[pick]
            remaining.discard(index)
            log.debug("request %d: share %.2f s of %.2f s left, needs %.2f s (top_n %.2f s)", index, share,
                      deadline - now, demands[pick], floors[pick])
            stop = None if cancelled is None else functools.partial(cancelled, index)
            try:
                yield index, self._score_within(requests[index], prepared[index], orders[index], share, need[index],
                                                stop)
            except Exception as exc:
                yield index, failure(index, exc)

    def _score_within(self, request: RerankRequest, prepared: Prepared, order: list[int], share: float,
                      whole_seconds: float, cancelled: Callable[[], bool] | None
                      ) -> RerankResult | RequestCancelledError:
        """Score ``request`` within ``share`` seconds: whole if predicted to fit, else in rounds of candidates.

        Candidates are taken from the top of the lexical ranking ``order``. The first round is planned
        to use at most ``FIRST_ROUND_FRACTION`` of the share (or what its top_n needs), so that a wrong
        estimate (a new instance, a busy machine) is corrected by the round's own timing before the
        rest of the share is planned.
        """
        stop = self._stop_check(request, cancelled)
        whole = request.deadline is None or whole_seconds <= share * PLAN_FRACTION
        plan = self._pack(prepared, range(len(prepared.docs))) if whole else None
        passes = self._decode_passes(plan, stop, ()) if plan else self._rounds(request, prepared, order, share, stop)
        if cancelled is not None and cancelled():
            return RequestCancelledError("cancelled while it was being scored")
        if plan:
            return self._finish(request, plan, passes, order)
        return self._score_partial(request, [p for p in passes if p[2] is not None], order)

    def _rounds(self, request: RerankRequest, prepared: Prepared, order: list[int], share: float,
                stop: Callable[[], bool]) -> list[tuple[list[int], Block, np.ndarray | None]]:
        """The passes of the rounds that fit ``share``, best lexical candidates first (see ``_score_within``)."""
        cost_of = self._subset_seconds(prepared)
        share_ends = time.monotonic() + share
        passes, taken = [], 0
        while taken < len(order) and not stop():
            available = (share_ends - time.monotonic()) * PLAN_FRACTION
            rest = order[taken:]
            count = affordable_count(rest, cost_of, available * (FIRST_ROUND_FRACTION if taken == 0 else 1.0))
            if taken < request.min_scored:  # top_n by the model, when the share allows it
                count = max(count, affordable_count(rest[:request.min_scored - taken], cost_of, available))
            if count == 0 or (taken and count < MIN_ROUND_DOCUMENTS and count < len(rest)):
                break
            candidates = self._pack(prepared, sorted(rest[:count]))
            started = time.monotonic()
            passes += self._decode_passes(candidates, stop, self._prefix)
            log.debug("budget round: %d documents, %d tokens, predicted %.2f s of %.2f s, took %.2f s", count,
                      candidates.tokens - len(self._prefix), cost_of(rest[:count]), available,
                      time.monotonic() - started)
            taken += count
        return passes

    def _decode_passes(self, plan: Plan, stop: Callable[[], bool], prefix: Sequence[int]
                       ) -> list[tuple[list[int], Block, np.ndarray | None]]:
        """Each pass of ``plan`` with its hidden states (None for a pass stopped by ``stop``)."""
        prompts = plan.prompts
        states = self._runner.iter_hidden_states([p.ids for p in prompts], [p.output_positions for p in prompts],
                                                 lambda _sequence: stop(), self._timer.observe, prefix)
        return list(zip(plan.blocks, prompts, states, strict=True))

    def _subset_seconds(self, prepared: Prepared, reuse_prefix: bool = True) -> Callable[[Iterable[int]], float]:
        """Predicted seconds to score a subset of the documents (indices in any order).

        Counts tokens as decoded, without the slack that packing keeps free in each block. With
        ``reuse_prefix`` the passes skip the kept prefix, which costs a decode of its own when the cache does
        not hold it when the prediction is made (a whole decode clears it).
        """
        base = self._base_tokens(prepared) - (len(self._prefix) if reuse_prefix else 0)
        slack = ESTIMATE_SLACK

        def seconds(indices: Iterable[int]) -> float:
            lengths = [prepared.lengths[i] for i in sorted(indices)]
            blocks = plan_blocks(lengths, prepared.capacity, self._max_item_tokens, self.config.max_docs_per_block)
            passes = sum(self._timer.seconds([base + sum(lengths[j] - slack for j in block)]) for block in blocks)
            cold = reuse_prefix and self._prefix and not self._runner.holds_prefix(self._prefix)
            return passes + (self._timer.seconds([len(self._prefix)]) if cold else 0.0)

        return seconds

    def _checked(self, prepared: Prepared) -> Prepared:
        """``prepared``, or InvalidInputError when scoring it whole would pass ``max_request_tokens``."""
        blocks = plan_blocks(prepared.lengths, prepared.capacity, self._max_item_tokens, self.config.max_docs_per_block)
        tokens = sum(self._base_tokens(prepared) + sum(prepared.lengths[j] - ESTIMATE_SLACK for j in block)
                     for block in blocks)
        if tokens > self.config.max_request_tokens:
            raise InvalidInputError(f"the request needs about {tokens} tokens after truncation, more than the "
                                    f"limit of {self.config.max_request_tokens}; send fewer or shorter documents")
        return prepared

    def _base_tokens(self, prepared: Prepared) -> int:
        return self.config.llama.n_ctx - prepared.capacity

    def plan(self, request: RerankRequest) -> Plan:
        """How a request is split into passes and the token ids of each (raises InvalidInputError)."""
        prepared = self._checked(self.prepare(request))
        return self._pack(prepared, range(len(prepared.docs)))

    def prepare(self, request: RerankRequest) -> Prepared:
        """Check and truncate a request's texts, and count each document's tokens (raises InvalidInputError)."""
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
        doc_limit = min(c.max_doc_tokens, request.max_doc_tokens or c.max_doc_tokens)
        docs, lengths = [], []
        for i, doc in enumerate(request.documents):
            text, n_tokens = self._prepare(doc, f"document {i}", doc_limit)
            docs.append(text)
            lengths.append(n_tokens + self._wrapper_tokens)
        capacity = c.llama.n_ctx - len(self._build(query, [], instruction).ids) - ESTIMATE_SLACK
        return Prepared(query, instruction, docs, lengths, capacity)

    def _pack(self, prepared: Prepared, indices: Iterable[int]) -> Plan:
        """Passes over the documents ``indices`` (ascending), packed as the model's reference packs them."""
        chosen = list(indices)
        if not chosen:
            return Plan([], [], prepared)
        packed = plan_blocks([prepared.lengths[i] for i in chosen], prepared.capacity, self._max_item_tokens,
                             self.config.max_docs_per_block)
        blocks = [[chosen[j] for j in block] for block in packed]
        prompts = [self._build(prepared.query, [prepared.docs[i] for i in block], prepared.instruction)
                   for block in blocks]
        for prompt in prompts:
            if len(prompt.ids) > self.config.llama.n_ctx:
                raise RuntimeError(f"block of {len(prompt.ids)} tokens exceeds n_ctx={self.config.llama.n_ctx}; "
                                   "the length estimate is wrong")
        return Plan(blocks, prompts, prepared)

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
        return build_block(query, docs, instruction, self.tokenize, self.token_ids, self.recipe.opening_query_marker)

    def _project(self, blocks: Sequence[Sequence[int]], states: Sequence[np.ndarray], n_docs: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Merged query embedding and every document's embedding (zeros for documents in no block)."""
        doc_embeddings = np.zeros((n_docs, self.projector.out_features), dtype=np.float32)
        query_embeddings, block_scores = [], []
        for block, hidden in zip(blocks, states, strict=True):
            projected = self.projector(hidden)
            doc_embeddings[list(block)] = projected[:-1]
            query_embeddings.append(projected[-1])
            block_scores.append(cosine(projected[-1], projected[:-1]))
        return merged_query(query_embeddings, block_scores), doc_embeddings

    def _score(self, request: RerankRequest, plan: Plan, states: list[np.ndarray]) -> RerankResult:
        n_docs = len(request.documents)
        query, doc_embeddings = self._project(plan.blocks, states, n_docs)
        scores = cosine(query, doc_embeddings.astype(np.float64))
        return RerankResult(scores=scores.astype(np.float32), tokens=plan.tokens,
                            doc_embeddings=doc_embeddings if request.return_embeddings else None,
                            scored=np.ones(n_docs, dtype=bool))

    def _score_partial(self, request: RerankRequest, finished: Sequence[tuple[list[int], Block, np.ndarray | None]],
                       lexical: Sequence[int]) -> RerankResult:
        """Model scores for the documents of the finished passes; the rest ranked below them lexically."""
        n_docs = len(request.documents)
        scored = [i for block, _, _ in finished for i in block]
        model_scores: np.ndarray = np.empty(0)
        doc_embeddings = np.zeros((n_docs, self.projector.out_features), dtype=np.float32)
        if finished:
            query, doc_embeddings = self._project([b for b, _, _ in finished], [h for _, _, h in finished], n_docs)
            model_scores = cosine(query, doc_embeddings[scored].astype(np.float64))
        mask = np.zeros(n_docs, dtype=bool)
        mask[scored] = True
        return RerankResult(scores=budgeted_scores(n_docs, scored, model_scores, lexical),
                            tokens=sum(len(prompt.ids) for _, prompt, _ in finished),
                            doc_embeddings=doc_embeddings if request.return_embeddings else None, scored=mask)


def failure(index: int, error: Exception) -> Exception:
    """``error`` as request ``index``'s result; logged with its traceback unless it is the caller's mistake."""
    if not isinstance(error, InvalidInputError | RequestCancelledError):
        log.error("request %d of the batch failed", index, exc_info=error)
    return error
