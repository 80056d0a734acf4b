"""Deadline budgeting: how long passes take, how a batch shares the time left, which documents fit.

Pure functions and one small learner, no llama.cpp. The engine asks three questions:

* how long will a pass of these lengths take here? ``PassTimer`` learns
  ``seconds = fixed + per_token * sum(n) + per_token_pair * sum(n**2)`` from the instance's own
  recent passes. The squared term is attention, which grows with the pass: on CPU a pass of 8k
  tokens runs at half the tokens/s of a 1k pass, so a linear model would over-promise long passes.
* how much of the time left may each request of a batch use? ``fair_shares``: each request's floor
  (its top_n scored by the model) where the time allows, then max-min fairness, so a request that
  needs little gets all it needs and the rest is split evenly among the others.
* how many documents fit a share? ``affordable_count``: the longest prefix of the lexical ranking
  whose passes are predicted to fit.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# Observations the learner keeps: enough to smooth noise, few enough to follow a machine whose speed
# changes (another instance on the same cores, thermal limits).
WINDOW = 32
# Passes whose lengths differ by less than this factor cannot separate the per-token and attention terms.
SPREAD_FOR_FIT = 3.0
# Below this many tokens per pass attention costs too little next to the rest to be measured apart from it.
ATTENTION_VISIBLE_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class PassCost:
    """Coefficients of ``seconds = fixed + per_token * sum(n) + per_token_pair * sum(n**2)``."""

    fixed: float
    per_token: float
    per_token_pair: float

    def seconds(self, lengths: Sequence[int]) -> float:
        return self.seconds_from_sums(float(sum(lengths)), float(sum(n * n for n in lengths)))

    def seconds_from_sums(self, total: float, squares: float) -> float:
        return self.fixed + self.per_token * total + self.per_token_pair * squares


# Where the learner starts before it has seen a pass: Qwen3-0.6B Q8_0 on two CPU cores, ~95 tokens/s at 1k
# tokens and half that at 8.5k. Deliberately slow: a new instance under-promises until it has measured itself
# (the engine calibrates once at start, so this prior is replaced within the first seconds).
CPU_PRIOR = PassCost(fixed=0.01, per_token=1 / 110, per_token_pair=1 / 110 / 5600)


class PassTimer:
    """Predicts pass times from the last ``WINDOW`` passes this instance decoded.

    With passes of varied lengths it fits all three coefficients (least squares, none negative);
    otherwise it keeps the prior's shape and fits only its scale, which is what a handful of
    same-sized passes can tell.
    """

    def __init__(self, prior: PassCost = CPU_PRIOR) -> None:
        self.prior = prior
        self._seen: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=WINDOW)
        self._cost = prior

    @property
    def cost(self) -> PassCost:
        return self._cost

    def observe(self, lengths: Sequence[int], seconds: float) -> None:
        """Record one decode of sequences of ``lengths`` tokens that took ``seconds``."""
        if not lengths or seconds <= 0:
            return
        self._seen.append((float(sum(lengths)), float(sum(n * n for n in lengths)), seconds))
        self._cost = fit(list(self._seen), self.prior)

    def seconds(self, lengths: Sequence[int]) -> float:
        return self._cost.seconds(lengths)

    def tokens_per_second(self, length: int) -> float:
        return length / self.seconds([length])


def fit(observations: Sequence[tuple[float, float, float]], prior: PassCost) -> PassCost:
    """Coefficients from ``(sum n, sum n**2, seconds)`` observations, shaped by ``prior`` when they are few.

    Least squares on relative errors, none negative: terms whose fitted coefficient would be negative
    are dropped in turn (a fixed cost, then attention), the per-token term always stays.
    """
    sums = np.array([o[0] for o in observations])
    squares = np.array([o[1] for o in observations])
    seconds = np.array([o[2] for o in observations])
    if len(observations) >= 4 and sums.max() >= SPREAD_FOR_FIT * sums.min():
        if sums.max() >= ATTENTION_VISIBLE_TOKENS:
            features, attention = np.stack([np.ones_like(sums), sums, squares], axis=1), None
        else:  # short passes only: attention keeps the prior's weight relative to the per-token term
            attention = prior.per_token_pair / prior.per_token
            features = np.stack([np.ones_like(sums), sums + attention * squares], axis=1)
        features = features / seconds[:, None]
        for terms in ((0, 1, 2), (1, 2), (0, 1), (1,)):
            terms = tuple(t for t in terms if t < features.shape[1])
            solution, *_ = np.linalg.lstsq(features[:, terms], np.ones_like(seconds), rcond=None)
            if np.all(solution >= 0) and solution[terms.index(1)] > 0:
                coefficients = np.zeros(3)
                coefficients[list(terms)] = solution
                if attention is not None:
                    coefficients[2] = coefficients[1] * attention
                return PassCost(*(float(c) for c in coefficients))
    predicted = np.array([prior.seconds_from_sums(s, q) for s, q in zip(sums, squares, strict=True)])
    scale = float(np.median(seconds / predicted))
    return PassCost(prior.fixed * scale, prior.per_token * scale, prior.per_token_pair * scale)


def fair_shares(available: float, demands: Sequence[float], floors: Sequence[float] | None = None) -> list[float]:
    """Split ``available`` seconds among requests needing ``demands`` seconds, max-min fairly.

    ``floors`` are minimum useful amounts (the time to model-score a request's top_n): they are granted
    first, cheapest first, to as many requests as they fit, since a share below its floor buys less
    than the caller asked for. The rest is water-filled: requests that need less than an even split
    get what they need; what they leave is split evenly among the others. Shares never exceed
    demands and add up to at most ``available``.
    """
    count = len(demands)
    floors = [0.0] * count if floors is None else [min(f, d) for f, d in zip(floors, demands, strict=True)]
    base = [0.0] * count
    left = max(0.0, available)
    for i in sorted(range(count), key=lambda i: floors[i]):
        if floors[i] > left:
            break
        base[i] = floors[i]
        left -= floors[i]
    extra = [max(0.0, d - b) for d, b in zip(demands, base, strict=True)]
    shares = [0.0] * count
    pending = sorted(range(count), key=lambda i: extra[i])
    while pending:
        even = left / len(pending)
        first = pending[0]
        if extra[first] <= even:
            shares[first] = extra[first]
            left -= extra[first]
            pending.pop(0)
            continue
        for i in pending:
            shares[i] = even
        break
    return [b + s for b, s in zip(base, shares, strict=True)]


def affordable_count(order: Sequence[int], cost_of: Callable[[Sequence[int]], float], seconds: float) -> int:
    """How many documents, taken in ``order``, can be scored within ``seconds``.

    ``cost_of(indices)`` predicts the time to score that set and grows with the set, so the answer,
    the longest prefix that fits, is found by bisection; 0 when not even one document fits.
    """
    if not order or cost_of(order[:1]) > seconds:
        return 0
    low, high = 1, len(order)  # low always fits
    while low < high:
        middle = (low + high + 1) // 2
        if cost_of(order[:middle]) <= seconds:
            low = middle
        else:
            high = middle - 1
    return low


def budgeted_scores(n_documents: int, scored: Sequence[int], model_scores: Sequence[float],
                    lexical_order: Sequence[int]) -> np.ndarray:
    """Scores for every document when only ``scored`` got model scores (cosines in [-1, 1]).

    The others follow in ``lexical_order``, spaced evenly in the gap between -1 and the lowest
    model score, so every one ranks below every model-scored document and the scores stay
    monotonic with rank. With nothing model-scored the gap is (-1, 0).
    """
    scores = np.empty(n_documents, dtype=np.float64)
    scores[list(scored)] = model_scores
    floor = float(min(model_scores)) if len(scored) else 0.0
    chosen = set(scored)
    rest = [i for i in lexical_order if i not in chosen]
    step = (floor + 1.0) / (len(rest) + 1)
    for rank, index in enumerate(rest, start=1):
        scores[index] = floor - step * rank
    return scores.astype(np.float32)
