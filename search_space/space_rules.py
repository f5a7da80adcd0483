"""The field rules: what values each Architecture field accepts, and their checks.

A :class:`_Rule` per field (``_LAYER_RULES``, ``_LNORM_RULES``, ``_READOUT_RULES``,
``_TRAIN_RULES``, ``_INPUT_SIZE_RULE``, ``_PREPROCESS_RULE``) and the checks the compiler
applies with them: to a constant (:func:`_check_const`), to a distribution's own
parameters (:func:`_check_distribution`), to the whole range a parameter can produce
(:func:`_support`, :func:`_check_range`) and across fields (:func:`_check_activation`).

Contract: a document that passes these checks resolves, at every point, to an
Architecture whose values are in range, so ``arch.validate`` can only answer feasible or
INFEASIBLE, never a malformed-value error.  Every failure is a :class:`SpaceError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .arch import PREPROCESS_KINDS, READOUT_KINDS
from .space_params import ParamInfo
from .space_schema import (
    MAX_OPTIONS,
    LayerSpec,
    LogNormal,
    LogUniform,
    QLogUniform,
    QUniform,
    RandInt,
    SpaceError,
    Uniform,
    _fmt,
)


# -- field rules -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    """What values a field of the Architecture accepts."""

    kind: Literal["int", "float", "bool", "str"]
    low: float = -math.inf
    low_open: bool = False  # True: value must be > low, else >= low
    high: float = math.inf
    high_open: bool = False
    finite: bool = True
    nullable: bool = False
    words: tuple[str, ...] = ()


_SIZE = _Rule("int", 1, high=256)
_LAYER_RULES: dict[str, _Rule] = {
    "n_filters": _Rule("int", 1, high=4096),
    "filter_size": _SIZE,
    "min_out": _Rule("float", finite=False),
    "max_out": _Rule("float", finite=False),
    "pool_size": _SIZE,
    "pool_order": _Rule("float", 0, low_open=True),
    "pool_stride": _SIZE,
    "norm_size": _SIZE,
    "norm_remove_mean": _Rule("bool"),
    "norm_stretch": _Rule("float", 0, low_open=True),
    "norm_threshold": _Rule("float", 0),
}
_LNORM_RULES: dict[str, _Rule] = {
    "size": _SIZE,
    "remove_mean": _Rule("bool"),
    "stretch": _Rule("float", 0, low_open=True),
    "threshold": _Rule("float", 0),
}
_READOUT_RULES: dict[str, _Rule] = {
    "kind": _Rule("str", words=READOUT_KINDS),
    "l2": _Rule("float", 0, nullable=True),
}
_TRAIN_RULES: dict[str, _Rule] = {
    "lr": _Rule("float", 0, low_open=True),
    "weight_decay": _Rule("float", 0),
    "dropout": _Rule("float", 0, high=1, high_open=True),
    "batch_size": _Rule("int", 1, high=65536),
    "epochs": _Rule("int", 1, high=10000),
}
_INPUT_SIZE_RULE = _Rule("int", 1, high=2048)
_PREPROCESS_RULE = _Rule("str", words=PREPROCESS_KINDS)


def _check_options(n: int, path: str) -> None:
    if n == 0:
        raise SpaceError(f"{path}.options", "must not be empty")
    if n > MAX_OPTIONS:
        raise SpaceError(f"{path}.options", f"must have at most {MAX_OPTIONS} entries, got {n}")


def _check_distribution(spec: Any, path: str) -> None:
    """The rules of the distribution itself, whatever field it describes."""
    for name in ("low", "high", "q", "mu", "sigma"):
        value = getattr(spec, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpaceError(f"{path}.{name}", f"must be finite, got {_fmt(value)}")
    if hasattr(spec, "low") and not spec.low < spec.high:
        raise SpaceError(
            f"{path}.low", f"must be < high, got {_fmt(spec.low)} >= {_fmt(spec.high)}"
        )
    if isinstance(spec, LogUniform | QLogUniform) and not spec.low > 0:
        raise SpaceError(f"{path}.low", f"must be > 0 for {spec.type}, got {_fmt(spec.low)}")
    if hasattr(spec, "q") and not spec.q > 0:
        raise SpaceError(f"{path}.q", f"must be > 0, got {_fmt(spec.q)}")
    if hasattr(spec, "sigma") and not spec.sigma > 0:
        raise SpaceError(f"{path}.sigma", f"must be > 0, got {_fmt(spec.sigma)}")


def _support(info: ParamInfo) -> tuple[float, float]:
    """Smallest and largest value a (non-choice) parameter can take."""
    spec = info.spec
    if isinstance(spec, QUniform | QLogUniform):
        k_low, k_high = info.q_range()
        return k_low * spec.q, k_high * spec.q
    if isinstance(spec, Uniform | LogUniform):
        return spec.low, spec.high
    if isinstance(spec, RandInt):
        return spec.low, spec.high - 1
    if isinstance(spec, LogNormal):
        return 0.0, math.inf  # an open end: see the caller
    return -math.inf, math.inf


def _check_range(
    low: float, high: float, path: str, rule: _Rule, exact: bool, open_low: bool = False
) -> None:
    """``[low, high]`` (``(low, high]`` with ``open_low``) must lie inside the rule's range."""

    def say(value: float) -> str:
        return f"got {_fmt(value)}" if exact else f"can produce {_fmt(value)}"

    lowest_ok = low > rule.low or (low == rule.low and (open_low or not rule.low_open))
    if not lowest_ok:
        op = ">" if rule.low_open else ">="
        raise SpaceError(path, f"must be {op} {_fmt(rule.low)}, {say(low)}")
    highest_ok = high < rule.high or (high == rule.high and not rule.high_open)
    if not highest_ok:
        op = "<" if rule.high_open else "<="
        raise SpaceError(path, f"must be {op} {_fmt(rule.high)}, {say(high)}")


def _check_const(value: Any, path: str, rule: _Rule) -> Any:
    """Check a constant against a field's rule; return it in the field's Python type."""
    if value is None:
        if rule.nullable:
            return None
        raise SpaceError(path, "must not be null")
    if rule.kind == "str":
        if not isinstance(value, str) or value not in rule.words:
            raise SpaceError(
                path, f"must be one of {', '.join(map(repr, rule.words))}, got {_fmt(value)}"
            )
        return value
    if rule.kind == "bool":
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            return bool(value)
        raise SpaceError(path, f"must be true, false, 0 or 1, got {_fmt(value)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpaceError(path, f"must be a number, got {_fmt(value)}")
    if rule.finite and not math.isfinite(value):
        raise SpaceError(path, f"must be finite, got {_fmt(value)}")
    _check_range(value, value, path, rule, exact=True)
    if rule.kind == "int":
        if not float(value).is_integer():
            raise SpaceError(path, f"must be a whole number, got {_fmt(value)}")
        return int(value)
    return float(value)


def _values(template: Any) -> tuple[float, float]:
    """Range of a numeric leaf template (constant, distribution or choice)."""
    if isinstance(template, ParamInfo):
        if template.type == "choice":
            ranges = [_values(o) for o in template.options]
            return min(r[0] for r in ranges), max(r[1] for r in ranges)
        return _support(template)
    return float(template), float(template)


def _check_activation(spec: LayerSpec, layer: Mapping[str, Any], path: str) -> None:
    # arch.validate rejects min_out >= max_out as a ValueError, not as INFEASIBLE: so no
    # point of the space may produce it
    _, min_high = _values(layer["min_out"])
    max_low, _ = _values(layer["max_out"])
    if not min_high < max_low:
        raise SpaceError(
            f"{path}.max_out",
            f"must be > min_out for every point, got max_out down to {_fmt(max_low)} and "
            f"min_out up to {_fmt(min_high)}",
        )
