"""Deadline budgeting on a real llama.cpp engine (tiny generated Q8_0 model).

Deadlines here are set from the engine's own prediction of how long the full request takes, so the
tests hold on a fast or a slow machine; the slack on "answered in time" covers one abort check.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from rerank_engine import RerankRequest, RerankResult
from rerank_engine.engine import ANSWER_RESERVE_S, PLAN_FRACTION
from rerank_engine.lexical import lexical_order
from tests.conftest import open_engine

pytestmark = [pytest.mark.integration, pytest.mark.timed]

QUERY = "which rivers flow into the sea"
WORDS = ("river", "sea", "mountain", "bread", "flows", "lake", "city", "music", "delta", "rain", "stone", "north")
SLACK_S = 0.5


def documents(count: int, words: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"passage {i}: " + " ".join(rng.choice(WORDS) for _ in range(words)) for i in range(count)]


def predicted_seconds(engine, request: RerankRequest) -> float:
    return sum(engine.pass_timer.seconds([len(p.ids)]) for p in engine.plan(request).prompts)


def slow_request(engine, seconds: float) -> list[str]:
    """Documents that this engine predicts will take at least ``seconds`` to score."""
    count = 64
    while predicted_seconds(engine, RerankRequest(QUERY, docs := documents(count, 60))) < seconds:
        count *= 2
    return docs


def assert_model_scored_rank_first(result: RerankResult) -> None:
    order = np.argsort(-result.scores, kind="stable")
    flags = result.scored[order]
    assert not np.any(flags[1:] & ~flags[:-1]), "a lexically ranked document outranks a model-scored one"
    assert np.all(result.scores >= -1)
    assert np.all(result.scores <= 1)


def test_a_deadline_long_enough_gives_the_exact_scores(engine_q8):
    docs = documents(40, 30)
    exact = engine_q8.rerank(QUERY, docs)
    [budgeted] = engine_q8.rerank_many([RerankRequest(QUERY, docs, deadline=time.monotonic() + 3600, min_scored=5)])
    np.testing.assert_array_equal(budgeted.scores, exact.scores)
    assert budgeted.scored.all()
    assert budgeted.tokens == exact.tokens


def test_a_passed_deadline_is_answered_lexically_at_once(engine_q8):
    docs = documents(50, 20)
    started = time.monotonic()
    [result] = engine_q8.rerank_many([RerankRequest(QUERY, docs, deadline=started - 1.0, min_scored=5)])
    assert time.monotonic() - started < 2.0
    assert not result.scored.any()
    assert result.tokens == 0
    assert list(np.argsort(-result.scores, kind="stable")) == lexical_order(QUERY, docs)
    assert np.all(result.scores < 0)


def test_a_tight_deadline_scores_lexical_candidates_and_answers_in_time(engine_q8):
    docs = slow_request(engine_q8, 2.0)
    # The deadline is a fraction of what the whole request takes, timed here: the engine's prediction, which
    # set it before, can run ahead of the machine (a fresh-clone run scored all 64 documents in time).
    started = time.monotonic()
    engine_q8.rerank(QUERY, docs)
    full = time.monotonic() - started
    started = time.monotonic()
    deadline = started + 0.4 * full
    [result] = engine_q8.rerank_many([RerankRequest(QUERY, docs, deadline=deadline, min_scored=5)])
    assert time.monotonic() < deadline + SLACK_S
    assert 5 <= result.n_scored < len(docs)
    assert_model_scored_rank_first(result)
    ranks = {doc: rank for rank, doc in enumerate(lexical_order(QUERY, docs))}
    scored_ranks = [ranks[i] for i in np.flatnonzero(result.scored)]
    unscored_ranks = [ranks[i] for i in np.flatnonzero(~result.scored)]
    assert np.mean(scored_ranks) < np.mean(unscored_ranks)  # candidates come from the top of the lexical order


def test_requests_due_together_share_the_time(engine_q8):
    docs = slow_request(engine_q8, 1.5)
    requests = [RerankRequest(f"{QUERY} {i}", docs, min_scored=3) for i in range(3)]
    full = sum(predicted_seconds(engine_q8, r) for r in requests)
    deadline = time.monotonic() + 0.4 * full + 0.3
    results = engine_q8.rerank_many([RerankRequest(r.query, r.documents, deadline=deadline, min_scored=3)
                                     for r in requests])
    assert time.monotonic() < deadline + SLACK_S
    counts = [r.n_scored for r in results]
    assert all(count >= 3 for count in counts), counts
    for result in results:
        assert_model_scored_rank_first(result)


def test_the_instance_learns_its_speed_from_its_passes(engine_q8):
    docs = documents(30, 40)
    engine_q8.rerank(QUERY, docs)
    [prompt] = engine_q8.plan(RerankRequest(QUERY, docs)).prompts
    predicted = engine_q8.pass_timer.seconds([len(prompt.ids)])
    started = time.perf_counter()
    engine_q8.runner.hidden_states([prompt.ids], [prompt.output_positions])
    measured = time.perf_counter() - started
    assert predicted == pytest.approx(measured, rel=3.0)  # the right order of magnitude, not a speed claim


def test_a_kept_prefix_gives_the_hidden_states_of_a_full_decode(engine_f32):
    """Budgeted rounds reuse the system turn's KV cache; what follows must not notice."""
    prompts = [engine_f32.plan(RerankRequest(q, docs)).prompts[0]
               for q, docs in ((QUERY, documents(3, 8)), ("bread", documents(5, 4, seed=2)))]
    prefix = engine_f32._fixed_prefix()
    assert len(prefix) > 20
    assert all(p.ids[:len(prefix)] == prefix for p in prompts)
    runner = engine_f32.runner
    full = [runner.hidden_states([p.ids], [p.output_positions])[0] for p in prompts]
    decoded: list[list[int]] = []
    for _ in range(2):  # the first call computes the prefix, the second finds it kept
        for prompt, expected in zip(prompts, full, strict=True):
            [states] = runner.iter_hidden_states([prompt.ids], [prompt.output_positions],
                                                 decoded=lambda lengths, _s: decoded.append(lengths), prefix=prefix)
            np.testing.assert_allclose(states, expected, rtol=0, atol=1e-5)
    assert decoded[-1] == [len(prompts[1].ids) - len(prefix)]  # only the tokens after the prefix were decoded


def test_a_round_after_a_whole_decode_is_budgeted_with_the_prefix(engine_q8):
    """A whole decode clears the kept system-prompt prefix: the next budgeted round decodes it again, and its
    prediction must say so (it was budgeted as cached, ~100 tokens short)."""
    docs = documents(20, 20)
    prepared = engine_q8.prepare(RerankRequest(QUERY, docs))
    prefix = engine_q8._fixed_prefix()
    engine_q8.rerank(QUERY, docs)  # a whole decode
    cold = engine_q8._subset_seconds(prepared)(range(5))
    [prompt] = engine_q8.plan(RerankRequest(QUERY, docs[:5])).prompts
    list(engine_q8.runner.iter_hidden_states([prompt.ids], [prompt.output_positions], prefix=prefix))  # untimed
    warm = engine_q8._subset_seconds(prepared)(range(5))
    assert cold == pytest.approx(warm + engine_q8.pass_timer.seconds([len(prefix)]))
    assert cold > warm


def test_every_request_gets_model_scores_when_passes_run_slower_than_learnt(tiny_q8):
    """Four equal requests due together, predicted to be scored whole in time; then every decode takes twice
    as long as the instance has learnt (a hook that sleeps as long as llama.cpp decoded, inside the runner).
    The batch must be planned again as passes come in slow: each request still gets its top_n model-scored."""
    engine = open_engine(tiny_q8, n_ctx=8192)
    try:
        docs = documents(40, 30)
        requests = [RerankRequest(f"{QUERY} {i}", docs, min_scored=5) for i in range(4)]
        engine.rerank_many(requests)  # learn this size of pass at full speed
        full = sum(predicted_seconds(engine, r) for r in requests)
        decode = engine.runner._decode

        def slow_decode(*args):
            started = time.perf_counter()
            decode(*args)
            time.sleep(time.perf_counter() - started)

        engine.runner._decode = slow_decode
        deadline = time.monotonic() + ANSWER_RESERVE_S + 1.1 * full / PLAN_FRACTION  # predicted to fit whole
        results = engine.rerank_many([RerankRequest(r.query, r.documents, deadline=deadline, min_scored=5)
                                      for r in requests])
    finally:
        engine.close()
    assert time.monotonic() < deadline + SLACK_S
    assert all(result.n_scored >= 5 for result in results), [result.n_scored for result in results]
    for result in results:
        assert_model_scored_rank_first(result)


def test_a_budgeted_request_whose_decode_fails_fails_alone(engine_q8, monkeypatch):
    """In a budgeted batch (rounds of lexical candidates) llama.cpp failing on one request's passes (here: made
    to) answers that request with the error; the others are still scored within the time."""
    docs = slow_request(engine_q8, 1.5)
    queries = [f"{QUERY} {i}" for i in range(2)] + ["poisoned rivers"]
    poison = engine_q8.tokenize(" poisoned")
    decode_group = engine_q8.runner._decode_group

    def failing_decode_group(sequences, *args):
        if any(poison == list(s[i:i + len(poison)]) for s in sequences for i in range(len(s))):
            raise RuntimeError("llama_decode failed with status -1")
        return decode_group(sequences, *args)

    monkeypatch.setattr(engine_q8.runner, "_decode_group", failing_decode_group)
    full = sum(predicted_seconds(engine_q8, RerankRequest(q, docs)) for q in queries)
    deadline = time.monotonic() + 0.4 * full + 0.3
    results = engine_q8.rerank_many([RerankRequest(q, docs, deadline=deadline, min_scored=3) for q in queries])
    assert time.monotonic() < deadline + SLACK_S
    assert isinstance(results[2], RuntimeError)
    assert all(result.n_scored >= 3 for result in results[:2]), [result.n_scored for result in results[:2]]
