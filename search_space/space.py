"""Search-space documents: the JSON schema, its validation, and its compilation to hyperopt.

A space is data (docs/design.md section 3): a JSON document of typed parameters that is checked
here and compiled to a hyperopt expression.  Nothing a client sends is ever evaluated or
unpickled: a document is parsed with ``json`` and validated with pydantic, and every number
in it is checked against an explicit rule before it reaches hyperopt.

Document shape (every leaf is either a constant or a parameter object)::

    {
      "name": "my-space", "description": "...",
      "input_size": 200 | <param>,               # may instead be set per depth option
      "preprocess": "minmax" | <param>,           # optional, default "minmax"
      "lnorm0": {"size": <leaf>, "remove_mean": <leaf>, "stretch": <leaf>,
                 "threshold": <leaf>} | null,     # optional, default null (no layer 0)
      "layers": [ <layer>, ... ],                 # a fixed depth, OR
      "depth": {"type": "choice", "options": [    # a depth choice: one option per depth
          {"input_size": <leaf>?, "layers": [<layer>, ...]}, ...]},
      "readout": {"kind": <leaf>, "l2": <leaf>},  # optional, default ridge / l2 null
      "train": {"lr": <leaf>, "weight_decay": <leaf>, "dropout": <leaf>,
                "batch_size": <leaf>, "epochs": <leaf>}   # optional
    }
    <layer> = {"n_filters", "filter_size", "min_out", "max_out", "pool_size", "pool_order",
               "pool_stride", "norm_size", "norm_remove_mean", "norm_stretch",
               "norm_threshold"}  (n_filters, filter_size, pool_size, norm_size required;
               the others default to the Architecture defaults)

Parameters (a discriminated union on ``type``):

* ``{"type": "choice", "options": [...]}``: options are constants or parameter objects.
* ``uniform`` / ``quniform`` (``low``, ``high``[, ``q``]): as hyperopt.
* ``loguniform`` / ``qloguniform`` (``low``, ``high``[, ``q``]): bounds in VALUE space
  (unlike ``hp.loguniform``, whose bounds are logs): ``{"low": 1e-5, "high": 1e-1}``.
* ``normal`` / ``lognormal`` (``mu``, ``sigma``): for ``lognormal``, mu and sigma are those
  of ``log(x)``, as in hyperopt and numpy.
* ``randint`` (``low``, ``high``): integers in ``[low, high)``.

JSON has no infinity: the strings ``"inf"`` and ``"-inf"`` stand for them (``min_out`` /
``max_out``), and :meth:`Space.to_dict` writes them back the same way.

Labels (hyperopt needs them unique; STYLE.md: every trial record carries every label):

* ``input_size``, ``preprocess``, ``lnorm0_<field>``, ``readout_<field>``,
  ``train_<field>``;
* a fixed depth: ``l<i>_<field>`` for layer i = 1..d;
* a depth choice: ``depth`` (its raw value is the option INDEX), and per option with d
  layers ``d<d>_input_size`` and ``d<d>_l<i>_<field>`` (so options need distinct depths);
* a parameter nested in option j of a choice labelled L: ``L_o<j>``.

A *raw* point is a dict label -> scalar for the ACTIVE labels only, as hyperopt writes
``misc.vals`` (choices as option indices).  :meth:`Space.trial_vals` gives the full
hyperopt form, every label with ``[]`` when inactive.

Every point of a valid space resolves to an Architecture whose values are in range, so
``arch.validate`` can only answer "feasible" or INFEASIBLE (a shape or size problem), never
a malformed-value error.  The value rules per field: input_size integer in [1, 2048];
n_filters integer in [1, 4096]; filter / pool / norm sizes and pool_stride integers in
[1, 256]; pool_order > 0; norm stretch > 0, threshold >= 0; max_out > min_out for every
combination; remove_mean a boolean (or 0 / 1); readout kind in READOUT_KINDS and l2 null
or >= 0; train lr > 0, weight_decay >= 0, dropout in [0, 1), batch_size and epochs
positive integers.  An integer field takes constants, ``choice``, ``randint`` or a
q-distribution with a whole ``q``; a string or boolean field only constants or choices.
Limits: 64 KiB of JSON, 32 nested containers, choices nested 4 deep, 1000 options per
choice, 512 parameters, 16 layers per depth.

Error paths are JSON paths into the document with 0-based list indices:
``depth.options[1].layers[0].n_filters.low must be < high, got 64 >= 32``.

Where the parts live (this module holds :class:`Space` and :func:`parse_space`, and
re-exports the public names of the others):

* :mod:`search_space.space_schema`: limits, :class:`SpaceError`, the pydantic models;
* :mod:`search_space.space_json`: JSON text in (size / nesting limits, ``"inf"``) and
  pydantic errors out as SpaceErrors;
* :mod:`search_space.space_rules`: the value rules per field and their checks;
* :mod:`search_space.space_params`: :class:`ParamInfo` and raw-value checks;
* :mod:`search_space.space_compile`: document -> template -> hyperopt expression;
* :mod:`search_space.space_grid`: counting / enumerating discrete spaces;
* :mod:`search_space.space_resolve`: raw point -> Architecture and back.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from .arch import Architecture
from .space_compile import _activation_plan, _Builder, _compile, _in_document_order
from .space_grid import _count, _rank, _unrank
from .space_json import _encode_inf, _from_validation_error, _prepare
from .space_params import ParamInfo, _normalize_value
from .space_resolve import _arch_target, _match, _resolve, build_architecture
from .space_schema import (
    MAX_CHOICE_NESTING,
    MAX_DOCUMENT_BYTES,
    MAX_GRID_POINTS,
    MAX_JSON_DEPTH,
    MAX_LAYERS,
    MAX_OPTIONS,
    MAX_PARAMETERS,
    PARAM_TYPES,
    Choice,
    Const,
    DepthChoice,
    DepthOption,
    LayerSpec,
    Leaf,
    LNormSpec,
    LogNormal,
    LogUniform,
    Normal,
    Param,
    ParamSpec,
    QLogUniform,
    QUniform,
    RandInt,
    ReadoutSpec,
    SpaceDoc,
    SpaceError,
    TrainSpec,
    Uniform,
)

if TYPE_CHECKING:  # hyperopt pulls in scipy (~1 s): imported lazily, where it is used
    from hyperopt.base import Domain

__all__ = [
    "MAX_CHOICE_NESTING",
    "MAX_DOCUMENT_BYTES",
    "MAX_GRID_POINTS",
    "MAX_JSON_DEPTH",
    "MAX_LAYERS",
    "MAX_OPTIONS",
    "MAX_PARAMETERS",
    "PARAM_TYPES",
    "Choice",
    "Const",
    "DepthChoice",
    "DepthOption",
    "LNormSpec",
    "LayerSpec",
    "Leaf",
    "LogNormal",
    "LogUniform",
    "Normal",
    "Param",
    "ParamInfo",
    "ParamSpec",
    "QLogUniform",
    "QUniform",
    "RandInt",
    "ReadoutSpec",
    "Space",
    "SpaceDoc",
    "SpaceError",
    "TrainSpec",
    "Uniform",
    "build_architecture",
    "parse_space",
]


def parse_space(doc: Mapping[str, Any] | str) -> Space:
    """Validate a space document (dict or JSON text) and compile it.

    Args:
        doc: the document; see the module docstring for its shape.

    Returns:
        The compiled :class:`Space`.

    Raises:
        SpaceError: the first broken rule, with the JSON path of the offending item.
    """
    data = _prepare(doc)
    try:
        model = SpaceDoc.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    return Space(model)


# -- the Space -------------------------------------------------------------------------
def _zero(_: Any) -> float:
    return 0.0


class Space:
    """A validated, compiled search space.

    Build it with :func:`parse_space` (or :func:`search_space.get_space`).  A Space is
    immutable and safe to share between threads.

    Attributes:
        name, description: from the document.
        labels: every hyperopt label, in document order.
        params: label -> :class:`ParamInfo`.
    """

    def __init__(self, doc: SpaceDoc) -> None:
        builder = _Builder()
        self.doc = doc
        self.name = doc.name
        self.description = doc.description
        self._template = builder.space(doc)
        self.params: dict[str, ParamInfo] = _in_document_order(self._template, builder.params)
        self.labels: tuple[str, ...] = tuple(self.params)
        self._plan = _activation_plan(self._template)
        # a choice's contribution to point_key: the constant it picks, or "#i" for an
        # option with structure (a nested parameter, a depth option)
        self._option_keys = {
            label: tuple(
                f"#{i}" if isinstance(o, ParamInfo | dict | list) else o
                for i, o in enumerate(info.options)
            )
            for label, info in self.params.items()
            if info.options
        }
        self._counts: dict[int, int | None] = {}
        self._grid_size = _count(self._template, self._counts)
        self._lock = threading.Lock()
        self._expr: Any = None
        self._domain: Domain | None = None

    # -- identity ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The document as JSON-safe data (infinities as ``"inf"``); parses back equal."""
        return _encode_inf(self.doc.model_dump(mode="python"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 of the canonical JSON document."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"Space({self.name!r}, {len(self.labels)} parameters)"

    def describe(self) -> str:
        """A readable listing: one line per label with its distribution and path."""
        size = self._grid_size
        lines = [
            f"{self.name}: {self.description}" if self.description else self.name,
            f"{len(self.labels)} parameters; "
            + (f"{size:,} points (discrete)" if size is not None else "continuous"),
        ]
        width = max((len(label) for label in self.labels), default=0)
        for label, info in self.params.items():
            lines.append(f"  {label:<{width}}  {info.describe()}   [{info.path}]")
        return "\n".join(lines)

    # -- hyperopt ---------------------------------------------------------------------
    @property
    def expr(self) -> Any:
        """The hyperopt expression (a pyll graph; ``hyperopt.space_eval`` resolves it)."""
        with self._lock:
            if self._expr is None:
                self._expr = _compile(self._template)
            return self._expr

    @property
    def domain(self) -> Domain:
        """A hyperopt ``Domain`` over :attr:`expr` (what ``tpe.suggest`` needs); cached."""
        expr = self.expr
        with self._lock:
            if self._domain is None:
                from hyperopt.base import Domain

                self._domain = Domain(_zero, expr)
            return self._domain

    def sample(self, seed: int) -> dict[str, Any]:
        """One point drawn from the prior by hyperopt's sampler (as ``rand.suggest``).

        Returns:
            The raw point: label -> value for the active labels, choices as indices.
        """
        return self.sample_many(1, seed)[0]

    def sample_many(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` prior draws in one vectorised pass (fast; not equal to n ``sample`` calls)."""
        from hyperopt import pyll

        if n <= 0:
            return []
        domain = self.domain
        ids = list(range(n))
        idxs, vals = pyll.rec_eval(
            domain.s_idxs_vals,
            memo={domain.s_new_ids: ids, domain.s_rng: np.random.default_rng(_seed(seed))},
        )
        raws: list[dict[str, Any]] = [{} for _ in ids]
        for label in self.labels:  # document order: raw dicts list labels alike
            info = self.params[label]
            for tid, value in zip(idxs[label], vals[label], strict=True):
                raws[tid][label] = _normalize_value(info, value)
        return raws

    def trial_vals(self, raw: Mapping[str, Any]) -> dict[str, list[Any]]:
        """hyperopt's ``misc.vals`` form: EVERY label, ``[value]`` if active else ``[]``.

        Raises:
            SpaceError: ``raw`` is not a point of the space.
        """
        point = self.normalize(raw)
        return {label: [point[label]] if label in point else [] for label in self.labels}

    # -- raw points -------------------------------------------------------------------
    def normalize(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Check a raw point and return it canonical: active labels only, document order,
        choice indices and randint values as ``int``, the rest as ``float``.

        Labels of the space that are inactive under ``raw`` are dropped.

        Raises:
            SpaceError: unknown label, missing active label, or a value outside its
                parameter's support (``path`` is the label).
        """
        if not isinstance(raw, Mapping):
            raise SpaceError("", f"a raw point must be an object, got {type(raw).__name__}")
        for label in raw:
            if label not in self.params:
                raise SpaceError(str(label), "is not a parameter of this space")
        out: dict[str, Any] = {}
        for label, info, parent, option in self._plan:
            if parent is not None and out.get(parent) != option:
                continue  # inactive: its choice is unset or picks another option
            if label not in raw:
                raise SpaceError(label, "is missing (the parameter is active)")
            out[label] = _normalize_value(info, raw[label])
        return out

    def to_arch(
        self, raw: Mapping[str, Any], input_channels: int = 1, seed: int = 42
    ) -> Architecture:
        """Resolve a raw point (choices as indices) into an :class:`Architecture`.

        Args:
            raw: label -> value, as :meth:`sample` or a suggester returns it.
            input_channels: 1 (gray) or 3 (RGB): a property of the study, not the space.
            seed: the filter seed stored with the trial.

        Returns:
            The architecture.  It may still be infeasible: see ``arch.validate``.

        Raises:
            SpaceError: ``raw`` is not a point of this space.
        """
        point = self.normalize(raw)
        return build_architecture(_resolve(self._template, point), input_channels, seed)

    def config_key(self, raw: Mapping[str, Any]) -> str:
        """A hash of the resolved configuration: equal architectures (for one channel
        count and filter seed) give equal keys, whatever raw values led there (duplicate
        options, ``16`` vs ``16.0``).

        Raises:
            SpaceError: ``raw`` is not a point of the space.
        """
        return hashlib.sha256(repr(self.point_key(self.normalize(raw))).encode()).hexdigest()

    def point_key(self, point: Mapping[str, Any]) -> tuple[Any, ...]:
        """The de-duplication key of a NORMALIZED point (cheap: no resolution).

        A choice that picks a constant contributes the constant, not its index, and every
        other value is typed by its field; equal keys therefore mean equal architectures,
        and different keys different ones, except when a nested parameter happens to hit
        exactly the constant of a sibling option (a measure-zero coincidence).
        """
        key = []
        for label, info, _, _ in self._plan:
            if label in point:
                value = point[label]
                if info.options:
                    key.append(self._option_keys[label][value])
                else:
                    key.append(round(value) if info.kind == "int" else float(value))
            else:
                key.append(None)
        return tuple(key)

    def raw_from_arch(self, arch: Architecture) -> dict[str, Any]:
        """The raw point whose architecture is ``arch`` (the inverse of :meth:`to_arch`).

        ``input_channels`` and ``seed`` are not part of a space and are ignored.  With
        several matching points (duplicate options) the first in document order wins.

        Raises:
            SpaceError: ``arch`` is not a point of this space.
        """
        target = _arch_target(arch)
        raw: dict[str, Any] = {}
        if not _match(self._template, target, raw):
            raise SpaceError("", f"the architecture is not a point of space {self.name!r}")
        return self.normalize(raw)

    def contains(self, arch: Architecture) -> bool:
        try:
            self.raw_from_arch(arch)
        except SpaceError:
            return False
        return True

    # -- grids ------------------------------------------------------------------------
    @property
    def is_discrete(self) -> bool:
        """True when every parameter takes finitely many values (choice, randint,
        quniform, qloguniform), so that :meth:`grid` can enumerate the space."""
        return self._grid_size is not None

    @property
    def grid_size(self) -> int | None:
        """The number of distinct raw points, or None for a continuous space."""
        return self._grid_size

    def grid_point(self, index: int) -> dict[str, Any]:
        """The ``index``-th point of the grid (``0 <= index < grid_size``).

        Raises:
            SpaceError: the space is continuous, or ``index`` is out of range.
        """
        size = self._require_grid(limit=None)
        if not 0 <= index < size:
            raise SpaceError("", f"grid index must be in [0, {size}), got {index}")
        raw: dict[str, Any] = {}
        _unrank(self._template, index, raw, self._counts)
        return {label: raw[label] for label in self.labels if label in raw}

    def grid_index(self, raw: Mapping[str, Any]) -> int:
        """The position of ``raw`` in the grid: ``grid_point(grid_index(raw)) == raw``.

        Raises:
            SpaceError: the space is continuous, or ``raw`` is not a point of it.
        """
        self._require_grid(limit=None)
        return _rank(self._template, self.normalize(raw), self._counts)

    def grid(self, limit: int = MAX_GRID_POINTS) -> Iterator[dict[str, Any]]:
        """Every point of a discrete space, in a fixed order.

        Raises:
            SpaceError: the space is continuous, or has more than ``limit`` points.
        """
        size = self._require_grid(limit)  # raises here, not at the first next()
        return (self.grid_point(index) for index in range(size))

    def _require_grid(self, limit: int | None) -> int:
        size = self._grid_size
        if size is None:
            continuous = [
                label
                for label, info in self.params.items()
                if info.type in ("uniform", "loguniform", "normal", "lognormal")
            ]
            raise SpaceError(
                "",
                f"space {self.name!r} is continuous (labels {', '.join(continuous[:5])}"
                f"{', ...' if len(continuous) > 5 else ''}): it has no grid",
            )
        if limit is not None and size > limit:
            raise SpaceError(
                "",
                f"space {self.name!r} has {size:,} grid points, more than the "
                f"{limit:,} a grid may enumerate",
            )
        return size


def _seed(seed: int) -> int:
    return int(seed) % (2**32)
