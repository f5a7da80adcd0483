"""One compiled parameter (:class:`ParamInfo`) and the check of raw values against it.

A compiled space is a *template*: plain dicts, lists and constants with a
:class:`ParamInfo` wherever the document has a parameter.  :func:`_normalize_value` checks
one raw value (as hyperopt writes it, or as a client sends it) against its parameter.

Contract: :func:`_normalize_value` accepts exactly the values in the parameter's support
and returns them canonical (``int`` for option indices and randint values, ``float``
otherwise); anything else raises :class:`SpaceError` with the label as its path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .space_schema import (
    Choice,
    DepthChoice,
    LogNormal,
    LogUniform,
    Normal,
    ParamSpec,
    QLogUniform,
    QUniform,
    RandInt,
    SpaceError,
    Uniform,
    _fmt,
)


# -- compiled form ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ParamInfo:
    """One hyperopt label: where it is in the document and how it is distributed.

    ``options`` holds the compiled templates of a choice's options (constants, nested
    ``ParamInfo`` or, for ``depth``, dicts); it is empty for the other types.
    """

    label: str
    path: str
    spec: ParamSpec | DepthChoice
    options: tuple[Any, ...] = ()
    kind: str = "float"

    @property
    def type(self) -> str:
        return self.spec.type

    def q_range(self) -> tuple[int, int]:
        """For quniform / qloguniform: the k of the values ``k * q`` that have mass.

        ``round(x / q) == k`` for some x in (low, high) iff
        ``low/q - 0.5 < k < high/q + 0.5``.
        """
        spec = self.spec
        assert isinstance(spec, QUniform | QLogUniform)
        return (
            math.floor(spec.low / spec.q - 0.5) + 1,
            math.ceil(spec.high / spec.q + 0.5) - 1,
        )

    @cached_property
    def q_bounds(self) -> tuple[int, int]:
        return self.q_range()

    def describe(self) -> str:
        spec = self.spec
        if isinstance(spec, DepthChoice):
            shown = " | ".join(f"{len(o['layers'])} layers" for o in self.options)
            return f"choice of {len(self.options)}: {shown}"
        if isinstance(spec, Choice):
            shown = " | ".join(
                f"<{o.label}>" if isinstance(o, ParamInfo) else _fmt(o) for o in self.options
            )
            return f"choice of {len(self.options)}: {shown}"
        if isinstance(spec, RandInt):
            return f"randint [{spec.low}, {spec.high})"
        if isinstance(spec, Normal | LogNormal):
            of = " of log x" if isinstance(spec, LogNormal) else ""
            return f"{spec.type}(mu={_fmt(spec.mu)}, sigma={_fmt(spec.sigma)}){of}"
        step = f" step {_fmt(spec.q)}" if isinstance(spec, QUniform | QLogUniform) else ""
        return f"{spec.type} [{_fmt(spec.low)}, {_fmt(spec.high)}]{step}"


def _normalize_value(info: ParamInfo, value: Any) -> Any:
    """Check one raw value against its parameter; return it as int (index / randint)
    or float.  Accepts numpy scalars (hyperopt's) and JSON numbers."""
    label, spec = info.label, info.spec
    if info.options and type(value) is int and 0 <= value < len(info.options):
        return value  # the common case, a valid option index: skip the general checks
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise SpaceError(label, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise SpaceError(label, f"must be finite, got {_fmt(number)}")
    if isinstance(spec, Choice | DepthChoice | RandInt):
        if not number.is_integer():
            raise SpaceError(label, f"must be a whole number, got {_fmt(number)}")
        low, high = (0, len(info.options)) if info.options else (spec.low, spec.high)  # type: ignore[union-attr]
        if not low <= number < high:
            what = "an option index" if info.options else "a randint value"
            raise SpaceError(label, f"must be {what} in [{low}, {high}), got {_fmt(number)}")
        return int(number)
    if isinstance(spec, QUniform | QLogUniform):
        k = number / spec.q
        k_low, k_high = info.q_bounds
        if abs(k - round(k)) > 1e-6 * max(1.0, abs(k)) or not k_low <= round(k) <= k_high:
            raise SpaceError(
                label,
                f"must be a multiple of {_fmt(spec.q)} in "
                f"[{_fmt(k_low * spec.q)}, {_fmt(k_high * spec.q)}], got {_fmt(number)}",
            )
        return number
    if isinstance(spec, Uniform | LogUniform) and not spec.low <= number <= spec.high:
        raise SpaceError(
            label, f"must be in [{_fmt(spec.low)}, {_fmt(spec.high)}], got {_fmt(number)}"
        )
    if isinstance(spec, LogNormal) and not number > 0:
        raise SpaceError(label, f"must be > 0, got {_fmt(number)}")
    return number
