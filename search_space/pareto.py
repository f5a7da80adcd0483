"""The Pareto front of scores against costs: pure code, no database.

A point is ``(cost, value)``: a lower cost is better (GFLOP per image, seconds per
image, ...) and a higher value is better (a validation score). Point ``a`` dominates
point ``b`` when ``a`` is no worse in both (``a.cost <= b.cost`` and ``a.value >=
b.value``) and strictly better in one. The front is the set of points no other point
dominates. Ties: points with the same cost and the same value do not dominate each other,
so all of them are on the front; of points with the same cost only those with the
highest value are.

Called by the coordinator's results queries (``service.dashboard.cost_queries``) over a
study's COMPLETE configurations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["dominates", "pareto_front"]


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether ``a = (cost, value)`` dominates ``b`` (see the module doc)."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the points on the front, in order of increasing cost (then
    decreasing value, then index): along that order the values strictly increase, except
    for exact duplicates, which sit next to each other.

    ``O(n log n)``: one sort and one sweep. Raises ``ValueError`` when a cost or a value
    is NaN (a point with no order cannot be placed); infinities are ordered as usual.
    """
    for i, (cost, value) in enumerate(points):
        if math.isnan(cost) or math.isnan(value):
            raise ValueError(f"point {i} has a NaN: cost={cost}, value={value}")
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best: tuple[float, float] | None = None  # the last point that raised the best value
    for i in order:
        cost, value = points[i]
        # Sorted by cost, so only a higher value than every cheaper-or-equal point keeps
        # a point on the front; the one exception is an exact duplicate of that point.
        if best is None or value > best[1] or (cost, value) == best:
            front.append(i)
            best = (cost, value)
    return front
