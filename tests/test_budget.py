"""The deadline budget as pure functions: pass-time learning, fair shares, what fits, and the score mapping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerank_engine.budget import PassCost, PassTimer, affordable_count, budgeted_scores, fair_shares

pytestmark = pytest.mark.unit

TRUE = PassCost(fixed=0.02, per_token=0.004, per_token_pair=0.004 / 3000)


def test_timer_learns_all_three_terms_from_varied_passes() -> None:
    timer = PassTimer(PassCost(1.0, 1.0, 0.0))  # a prior far off in scale and shape
    for n in (200, 400, 800, 1600, 3200, 6400):
        timer.observe([n], TRUE.seconds([n]))
    for n in (300, 5000, 8000):
        assert timer.seconds([n]) == pytest.approx(TRUE.seconds([n]), rel=1e-6)


def test_timer_with_same_sized_passes_keeps_the_priors_shape_and_fits_its_scale() -> None:
    prior = PassCost(0.01, 0.001, 0.001 / 5000)
    timer = PassTimer(prior)
    for _ in range(5):
        timer.observe([1000], 3 * prior.seconds([1000]))
    assert timer.seconds([8000]) == pytest.approx(3 * prior.seconds([8000]))


def test_timer_counts_attention_per_sequence_of_a_shared_decode() -> None:
    timer = PassTimer(TRUE)
    assert timer.seconds([1000, 1000]) < timer.seconds([2000])


def test_timer_follows_a_machine_that_slows_down() -> None:
    timer = PassTimer(TRUE)
    for _ in range(40):
        timer.observe([1000], 2 * TRUE.seconds([1000]))
    assert timer.seconds([1000]) == pytest.approx(2 * TRUE.seconds([1000]))


def test_fair_shares_give_small_demands_what_they_need_and_split_the_rest() -> None:
    assert fair_shares(9.0, [1.0, 10.0, 10.0]) == pytest.approx([1.0, 4.0, 4.0])
    assert fair_shares(9.0, [1.0, 2.0]) == pytest.approx([1.0, 2.0])  # everything fits: demands, not more
    assert fair_shares(6.0, [5.0, 5.0, 5.0]) == pytest.approx([2.0, 2.0, 2.0])


def test_fair_shares_with_no_time_left_are_zero() -> None:
    assert fair_shares(-1.0, [1.0, 2.0]) == [0.0, 0.0]
    assert fair_shares(0.0, []) == []


@given(st.floats(0, 100), st.lists(st.floats(0, 50), max_size=8))
def test_fair_shares_never_exceed_demand_or_the_time(available: float, demands: list[float]) -> None:
    shares = fair_shares(available, demands)
    assert all(0 <= s <= d + 1e-9 for s, d in zip(shares, demands, strict=True))
    assert sum(shares) <= available + 1e-6
    # max-min fair: a request short of its demand gets no less than any other request
    for s, d in zip(shares, demands, strict=True):
        if s < d - 1e-9:
            assert all(s >= other - 1e-6 for other in shares)


def test_affordable_count_is_the_longest_prefix_that_fits() -> None:
    costs = [3.0, 1.0, 2.0, 5.0]
    order = [0, 1, 2, 3]

    def cost_of(indices: list[int]) -> float:
        return sum(costs[i] for i in indices)

    assert affordable_count(order, cost_of, 6.0) == 3
    assert affordable_count(order, cost_of, 11.0) == 4
    assert affordable_count(order, cost_of, 2.9) == 0  # not even the first
    assert affordable_count([], cost_of, 10.0) == 0


def test_budgeted_scores_rank_every_model_scored_document_first() -> None:
    scores = budgeted_scores(5, scored=[3, 1], model_scores=[0.2, -0.5], lexical_order=[4, 3, 0, 2, 1])
    assert scores[3] == pytest.approx(0.2)
    assert scores[1] == pytest.approx(-0.5)
    rest = [4, 0, 2]  # lexical order of the unscored
    assert all(scores[i] < -0.5 for i in rest)
    assert scores[4] > scores[0] > scores[2] > -1.0
    assert scores.dtype == np.float32


def test_budgeted_scores_with_nothing_scored_follow_the_lexical_order_below_zero() -> None:
    scores = budgeted_scores(3, scored=[], model_scores=[], lexical_order=[2, 0, 1])
    assert 0 > scores[2] > scores[0] > scores[1] > -1


def test_floors_are_granted_cheapest_first_while_they_fit() -> None:
    # 5 s: both floors (1 + 2) fit; the remaining 2 s are split evenly over what each still needs
    assert fair_shares(5.0, [10.0, 10.0], floors=[1.0, 2.0]) == pytest.approx([2.0, 3.0])
    # 2.5 s: only the cheapest floor fits; the remaining 1.5 s is split evenly over all three
    assert fair_shares(2.5, [10.0, 10.0, 10.0], floors=[2.0, 2.0, 1.0]) == pytest.approx([0.5, 0.5, 1.5])


def test_a_floor_never_exceeds_the_demand() -> None:
    assert fair_shares(10.0, [0.5, 8.0], floors=[2.0, 1.0]) == pytest.approx([0.5, 8.0])


@given(st.floats(0, 100), st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), max_size=8))
def test_shares_with_floors_stay_within_demand_and_time(available: float, pairs: list[tuple[float, float]]) -> None:
    demands = [d for d, _ in pairs]
    shares = fair_shares(available, demands, floors=[f for _, f in pairs])
    assert all(0 <= s <= d + 1e-9 for s, d in zip(shares, demands, strict=True))
    assert sum(shares) <= available + 1e-6


def test_short_passes_fit_speed_and_fixed_cost_but_keep_the_priors_attention_share() -> None:
    prior = PassCost(0.0, 0.001, 0.001 / 5000)
    timer = PassTimer(prior)
    truth = PassCost(0.05, 0.004, 0.004 / 5000)
    for n in (100, 200, 400, 800, 300):
        timer.observe([n], truth.seconds([n]))
    assert timer.cost.fixed == pytest.approx(0.05, rel=1e-6)
    assert timer.seconds([8000]) == pytest.approx(truth.seconds([8000]), rel=1e-6)
