"""The Pareto front of (cost, value) points: dominance, ties, equal costs, the empty set,
and agreement with a brute-force definition on random points."""

from __future__ import annotations

import math
import random

import pytest

from search_space.pareto import dominates, pareto_front


def brute_force(points: list[tuple[float, float]]) -> set[int]:
    """The definition itself: the points no other point dominates (O(n^2))."""
    return {
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p) for j, q in enumerate(points) if j != i)
    }


def test_dominance_needs_one_strictly_better_coordinate():
    assert dominates((1.0, 0.9), (2.0, 0.8))  # cheaper and better
    assert dominates((1.0, 0.9), (1.0, 0.8))  # same cost, better
    assert dominates((1.0, 0.9), (2.0, 0.9))  # same value, cheaper
    assert not dominates((1.0, 0.9), (1.0, 0.9))  # equal: neither
    assert not dominates((1.0, 0.5), (2.0, 0.9))  # a trade-off: neither
    assert not dominates((2.0, 0.9), (1.0, 0.5))


def test_empty_and_single():
    assert pareto_front([]) == []
    assert pareto_front([(3.0, 0.1)]) == [0]


def test_a_staircase_in_cost_order():
    points = [(4.0, 0.9), (1.0, 0.5), (2.0, 0.4), (3.0, 0.7), (0.5, 0.2), (5.0, 0.85)]
    # (2, 0.4) is beaten by (1, 0.5); (5, 0.85) by (4, 0.9).
    assert pareto_front(points) == [4, 1, 3, 0]
    values = [points[i][1] for i in pareto_front(points)]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_equal_costs_keep_only_the_best_value():
    points = [(2.0, 0.6), (2.0, 0.8), (2.0, 0.7), (1.0, 0.5)]
    assert pareto_front(points) == [3, 1]


def test_equal_values_keep_only_the_cheapest():
    points = [(3.0, 0.8), (1.0, 0.8), (2.0, 0.8)]
    assert pareto_front(points) == [1]


def test_exact_duplicates_are_all_on_the_front():
    points = [(2.0, 0.8), (1.0, 0.5), (2.0, 0.8), (3.0, 0.8)]
    assert pareto_front(points) == [1, 0, 2]


def test_a_dominated_duplicate_stays_off():
    points = [(2.0, 0.5), (2.0, 0.5), (1.0, 0.9)]
    assert pareto_front(points) == [2]


def test_nan_is_refused_with_the_point():
    with pytest.raises(ValueError, match="point 1 has a NaN"):
        pareto_front([(1.0, 0.5), (math.nan, 0.3)])


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_the_definition_on_random_points(seed):
    rng = random.Random(seed)
    # Few distinct costs and values, so ties and duplicates are common.
    n = rng.randint(1, 60)
    points = [(float(rng.randint(0, 8)), rng.randint(0, 10) / 10) for _ in range(n)]
    front = pareto_front(points)
    assert set(front) == brute_force(points)
    assert len(front) == len(set(front))
    ordered = [points[i] for i in front]
    assert ordered == sorted(ordered, key=lambda p: (p[0], -p[1]))
