"""Grid walkers: counting and enumerating the points of a discrete space.

A space is discrete when every parameter takes finitely many values (choice, randint,
quniform, qloguniform).  Its points are numbered in mixed radix over the template: the
first parameter varies fastest, and a choice's options are laid end to end.

Contract: :func:`_count` is None for a continuous template; for a discrete one,
``_rank(template, p) == i`` exactly when :func:`_unrank` writes ``p`` for index ``i``
(``0 <= i < _count(template)``).  ``memo`` is keyed by node id: the template must outlive
it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .space_compile import _children
from .space_params import ParamInfo
from .space_schema import QLogUniform, QUniform, RandInt


def _count(template: Any, memo: dict[int, int | None] | None = None) -> int | None:
    """Number of distinct raw points below ``template``; None if any part is continuous.

    ``memo`` (keyed by node id; the template must stay alive) makes repeated calls O(1).
    """
    if memo is not None and id(template) in memo:
        return memo[id(template)]
    result: int | None
    if isinstance(template, ParamInfo):
        spec = template.spec
        if template.options:
            counts = [_count(o, memo) for o in template.options]
            result = None if None in counts else sum(counts)  # type: ignore[arg-type]
        elif isinstance(spec, RandInt):
            result = spec.high - spec.low
        elif isinstance(spec, QUniform | QLogUniform):
            k_low, k_high = template.q_range()
            result = k_high - k_low + 1
        else:
            result = None
    else:
        result = 1
        for child in _children(template):
            c = _count(child, memo)
            if c is None:
                result = None
                break
            result *= c
    if memo is not None and isinstance(template, ParamInfo | dict | list):
        memo[id(template)] = result
    return result


def _unrank(template: Any, index: int, raw: dict[str, Any], memo: dict[int, int | None]) -> None:
    """Write the ``index``-th point below ``template`` into ``raw`` (mixed radix: the
    first parameter varies fastest; a choice's options are laid end to end)."""
    if isinstance(template, ParamInfo):
        spec = template.spec
        if template.options:
            for i, option in enumerate(template.options):
                c = _count(option, memo)
                assert c is not None
                if index < c:
                    raw[template.label] = i
                    _unrank(option, index, raw, memo)
                    return
                index -= c
            raise AssertionError("grid index out of range")
        if isinstance(spec, RandInt):
            raw[template.label] = spec.low + index
        else:
            k_low, _ = template.q_range()
            raw[template.label] = float(k_low + index) * spec.q  # type: ignore[union-attr]
        return
    for child in _children(template):
        c = _count(child, memo)
        assert c is not None
        _unrank(child, index % c, raw, memo)
        index //= c


def _rank(template: Any, point: Mapping[str, Any], memo: dict[int, int | None]) -> int:
    """The inverse of :func:`_unrank` for a normalized point of a discrete space."""
    if isinstance(template, ParamInfo):
        spec = template.spec
        value = point[template.label]
        if template.options:
            offset = sum(_count(o, memo) or 0 for o in template.options[:value])
            return offset + _rank(template.options[value], point, memo)
        if isinstance(spec, RandInt):
            return value - spec.low
        k_low, _ = template.q_range()
        return round(value / spec.q) - k_low  # type: ignore[union-attr]
    index, radix = 0, 1
    for child in _children(template):
        index += _rank(child, point, memo) * radix
        radix *= _count(child, memo) or 1
    return index
