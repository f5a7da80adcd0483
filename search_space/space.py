"""Search-space documents: the JSON schema, its validation, and its compilation to hyperopt.

A space is data (DESIGN.md section 3): a JSON document of typed parameters that is checked
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
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
)

from .arch import (
    PREPROCESS_KINDS,
    READOUT_KINDS,
    Activation,
    Architecture,
    FBCorr,
    Layer,
    LNorm,
    LPool,
    Readout,
    TrainSettings,
)

if TYPE_CHECKING:  # hyperopt pulls in scipy (~1 s): imported lazily, where it is used
    from hyperopt.base import Domain

# -- limits ----------------------------------------------------------------------------
MAX_DOCUMENT_BYTES = 64 * 1024  # JSON text of a space document
MAX_JSON_DEPTH = 32  # nested containers; a legitimate document needs about 15
MAX_CHOICE_NESTING = 4  # a choice inside an option of a choice inside ... (levels)
MAX_OPTIONS = 1000  # options of one choice
MAX_PARAMETERS = 512  # labels in one space
MAX_LAYERS = 16  # layers in one depth option
MAX_GRID_POINTS = 1_000_000  # what grid() / GridSuggester may enumerate
PARAM_TYPES = (
    "choice",
    "uniform",
    "quniform",
    "loguniform",
    "qloguniform",
    "normal",
    "lognormal",
    "randint",
)
_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class SpaceError(ValueError):
    """A space document, or a raw point, breaks a rule.

    ``path`` locates the offending item: a JSON path into the document
    (``layers[0].n_filters.low``, 0-based indices) or, for a raw point, its label; it is
    ``""`` for the document as a whole.  ``message`` states the rule and the values
    (``must be < high, got 64 >= 32``); ``str(err)`` is ``f"{path} {message}"``.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path} {message}" if path else message)
        self.path = path
        self.message = message


# -- schema ----------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    """Numbers as a person writes them (``64``, ``0.1``, ``inf``); strings quoted."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _const(value: Any) -> Any:
    """Validator of a constant leaf: JSON scalars only, no NaN."""
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and len(value) > 200:
            raise ValueError("must be a string of at most 200 characters")
        return value
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("must be a number, got nan")
        return value
    raise ValueError(
        f"must be a number, string, boolean, null or a parameter object, got {type(value).__name__}"
    )


Const = Annotated[Any, PlainValidator(_const)]


class _Model(BaseModel):
    # strict: "5" is not 5, true is not 1; extra="forbid": a typo is an error, not ignored
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Choice(_Model):
    """Pick one of ``options`` (constants or parameter objects); raw value = index."""

    type: Literal["choice"]
    options: list[Leaf]


class Uniform(_Model):
    type: Literal["uniform"]
    low: float
    high: float


class QUniform(_Model):
    """``round(uniform(low, high) / q) * q``."""

    type: Literal["quniform"]
    low: float
    high: float
    q: float


class LogUniform(_Model):
    """``exp(uniform(log low, log high))``; ``low`` and ``high`` are values, not logs."""

    type: Literal["loguniform"]
    low: float
    high: float


class QLogUniform(_Model):
    """``round(exp(uniform(log low, log high)) / q) * q``; bounds are values."""

    type: Literal["qloguniform"]
    low: float
    high: float
    q: float


class Normal(_Model):
    type: Literal["normal"]
    mu: float
    sigma: float


class LogNormal(_Model):
    """``exp(normal(mu, sigma))``: ``mu`` and ``sigma`` are those of ``log(x)``."""

    type: Literal["lognormal"]
    mu: float
    sigma: float


class RandInt(_Model):
    """An integer in ``[low, high)`` (categorical for TPE: no order assumed)."""

    type: Literal["randint"]
    low: int
    high: int


Param = Annotated[
    Choice | Uniform | QUniform | LogUniform | QLogUniform | Normal | LogNormal | RandInt,
    Field(discriminator="type"),
]


def _leaf_tag(value: Any) -> str:
    # a dict is a parameter object (its "type" picks the class); anything else a constant
    return "param" if isinstance(value, dict | BaseModel) else "const"


Leaf = Annotated[
    Annotated[Param, Tag("param")] | Annotated[Const, Tag("const")],
    Discriminator(_leaf_tag),
]
Choice.model_rebuild()

ParamSpec = Choice | Uniform | QUniform | LogUniform | QLogUniform | Normal | LogNormal | RandInt


class LayerSpec(_Model):
    """One layer ``fbcorr -> activation -> lpool -> lnorm``; defaults = Architecture's."""

    n_filters: Leaf
    filter_size: Leaf
    min_out: Leaf = 0.0
    max_out: Leaf = math.inf
    pool_size: Leaf
    pool_order: Leaf = 1.0
    pool_stride: Leaf = 2
    norm_size: Leaf
    norm_remove_mean: Leaf = False
    norm_stretch: Leaf = 1.0
    norm_threshold: Leaf = 1.0


class LNormSpec(_Model):
    size: Leaf
    remove_mean: Leaf = False
    stretch: Leaf = 1.0
    threshold: Leaf = 1.0


class ReadoutSpec(_Model):
    kind: Leaf = "ridge"
    l2: Leaf = None  # null: the evaluator chooses it on the training split


class TrainSpec(_Model):
    lr: Leaf = 1e-3
    weight_decay: Leaf = 1e-4
    dropout: Leaf = 0.0
    batch_size: Leaf = 64
    epochs: Leaf = 2


class DepthOption(_Model):
    """One depth: its layers and optionally its own input size (null: inherit)."""

    input_size: Leaf = None
    layers: list[LayerSpec]


class DepthChoice(_Model):
    type: Literal["choice"]
    options: list[DepthOption]


class SpaceDoc(_Model):
    """The whole document; :func:`parse_space` is the way in."""

    name: str = Field(pattern=_NAME_PATTERN)
    description: str = Field("", max_length=4000)
    input_size: Leaf = None
    preprocess: Leaf = "minmax"
    lnorm0: LNormSpec | None = None
    layers: list[LayerSpec] | None = None
    depth: DepthChoice | None = None
    readout: ReadoutSpec = Field(default_factory=ReadoutSpec)
    train: TrainSpec | None = None


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


def _prepare(doc: Mapping[str, Any] | str) -> dict[str, Any]:
    """JSON text or dict -> plain dict, with the size / depth limits and "inf" decoded."""
    if isinstance(doc, str | bytes):
        text = doc.decode() if isinstance(doc, bytes) else doc
        size = len(text.encode())
        if size > MAX_DOCUMENT_BYTES:
            raise SpaceError(
                "", f"document is {size} bytes of JSON, the limit is {MAX_DOCUMENT_BYTES}"
            )
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise SpaceError("", f"document nests deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise SpaceError("", f"document is not valid JSON: {exc}") from None
    else:
        data = doc
    if not isinstance(data, Mapping):
        raise SpaceError("", f"document must be a JSON object, got {type(data).__name__}")
    _check_depth(data)
    try:
        size = len(json.dumps(data, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise SpaceError("", f"document is not JSON data: {exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise SpaceError("", f"document is {size} bytes of JSON, the limit is {MAX_DOCUMENT_BYTES}")
    # "inf" means infinity in values; the free-text fields keep their text
    return {k: v if k in ("name", "description") else _decode_inf(v) for k, v in data.items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not allowed; write the strings "inf" / "-inf"')


def _check_depth(data: Any) -> None:
    # iterative on purpose: a hostile document must not overflow the Python stack
    stack: list[tuple[Any, str, int]] = [(data, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise SpaceError(path, f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(value, Mapping | list | tuple):
                    stack.append((value, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(node, list | tuple):
            for i, value in enumerate(node):
                if isinstance(value, Mapping | list | tuple):
                    stack.append((value, f"{path}[{i}]", depth + 1))


def _decode_inf(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("inf", "+inf", "-inf"):
        return -math.inf if obj == "-inf" else math.inf
    if isinstance(obj, Mapping):
        return {k: _decode_inf(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_decode_inf(v) for v in obj]
    return obj


def _encode_inf(obj: Any) -> Any:
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _encode_inf(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode_inf(v) for v in obj]
    return obj


_TAGS = frozenset(("param", "const", *PARAM_TYPES))


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TAGS:
            continue  # union tags are pydantic's bookkeeping, not document keys
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _from_validation_error(exc: ValidationError) -> SpaceError:
    err = exc.errors(include_url=False)[0]
    path = _loc_to_path(tuple(err["loc"]))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "union_tag_invalid":
        tag_path = f"{path}.type" if path else "type"
        return SpaceError(
            tag_path, f"must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
        )
    if kind == "union_tag_not_found":
        return SpaceError(f"{path}.type" if path else "type", "is required")
    if kind == "missing":
        return SpaceError(path, "is required")
    if kind == "extra_forbidden":
        return SpaceError(path, "is not a known field")
    if kind == "value_error":
        return SpaceError(path, str(ctx.get("error", err["msg"])))
    msg = err["msg"]
    return SpaceError(path, f"is invalid: {msg[:1].lower()}{msg[1:]}")


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


# -- the compiler ----------------------------------------------------------------------
class _Builder:
    """Walks a validated document once: checks every rule, assigns labels, builds the
    template (plain dicts / lists / constants with :class:`ParamInfo` at parameters)."""

    def __init__(self) -> None:
        self.params: dict[str, ParamInfo] = {}

    def register(self, info: ParamInfo) -> ParamInfo:
        if info.label in self.params:
            raise SpaceError(info.path, f"gives the label {info.label!r} twice")
        self.params[info.label] = info
        if len(self.params) > MAX_PARAMETERS:
            raise SpaceError("", f"document has more than {MAX_PARAMETERS} parameters")
        return info

    # -- leaves -----------------------------------------------------------------------
    def leaf(self, value: Any, path: str, label: str, rule: _Rule, level: int = 0) -> Any:
        if isinstance(value, Choice):
            return self._choice(value, path, label, rule, level + 1)
        if isinstance(value, BaseModel):
            return self._distribution(value, path, label, rule)
        return _check_const(value, path, rule)

    def _choice(self, spec: Choice, path: str, label: str, rule: _Rule, level: int) -> Any:
        if level > MAX_CHOICE_NESTING:
            raise SpaceError(
                path, f"nests choices {level} levels deep, the limit is {MAX_CHOICE_NESTING}"
            )
        _check_options(len(spec.options), path)
        options = tuple(
            self.leaf(o, f"{path}.options[{i}]", f"{label}_o{i}", rule, level)
            for i, o in enumerate(spec.options)
        )
        return self.register(ParamInfo(label, path, spec, options, rule.kind))

    def _distribution(self, spec: Any, path: str, label: str, rule: _Rule) -> ParamInfo:
        _check_distribution(spec, path)
        allowed = {
            "str": (),
            "bool": (),
            "int": ("randint", "quniform", "qloguniform"),
            "float": PARAM_TYPES,
        }[rule.kind]
        if spec.type not in allowed:
            what = {"str": "a string", "bool": "a boolean", "int": "an integer"}.get(rule.kind)
            ok = ", ".join(repr(t) for t in ("choice", *allowed))
            raise SpaceError(
                f"{path}.type", f"must be one of {ok} for {what} field, got {spec.type!r}"
            )
        if (
            rule.kind == "int"
            and isinstance(spec, QUniform | QLogUniform)
            and not float(spec.q).is_integer()
        ):
            raise SpaceError(
                f"{path}.q", f"must be a whole number for an integer field, got {_fmt(spec.q)}"
            )
        info = ParamInfo(label, path, spec, (), rule.kind)
        low, high = _support(info)
        # a lognormal never produces its infimum 0: fine for rules like stretch > 0
        _check_range(low, high, path, rule, exact=False, open_low=isinstance(spec, LogNormal))
        return self.register(info)

    # -- groups -----------------------------------------------------------------------
    def group(
        self, spec: BaseModel, rules: Mapping[str, _Rule], path: str, prefix: str
    ) -> dict[str, Any]:
        return {
            name: self.leaf(getattr(spec, name), f"{path}.{name}", f"{prefix}{name}", rule)
            for name, rule in rules.items()
        }

    def layers(self, specs: list[LayerSpec], path: str, prefix: str) -> list[dict[str, Any]]:
        if not specs:
            raise SpaceError(path, "must not be empty")
        if len(specs) > MAX_LAYERS:
            raise SpaceError(path, f"must have at most {MAX_LAYERS} layers, got {len(specs)}")
        out = []
        for i, spec in enumerate(specs):
            lpath = f"{path}[{i}]"
            layer = self.group(spec, _LAYER_RULES, lpath, f"{prefix}l{i + 1}_")
            _check_activation(spec, layer, lpath)
            out.append(layer)
        return out

    def space(self, doc: SpaceDoc) -> dict[str, Any]:
        if doc.layers is not None and doc.depth is not None:
            raise SpaceError(
                "depth",
                "cannot be combined with layers: give layers for a fixed depth "
                "or depth for a choice of depths",
            )
        if doc.layers is None and doc.depth is None:
            raise SpaceError(
                "", "document needs layers (a fixed depth) or depth (a choice of depths)"
            )
        top: dict[str, Any] = {}
        top_size = (
            None
            if doc.input_size is None
            else self.leaf(doc.input_size, "input_size", "input_size", _INPUT_SIZE_RULE)
        )
        if isinstance(top_size, ParamInfo):
            top["input_size"] = top_size
        top["preprocess"] = self.leaf(doc.preprocess, "preprocess", "preprocess", _PREPROCESS_RULE)
        top["lnorm0"] = (
            None
            if doc.lnorm0 is None
            else self.group(doc.lnorm0, _LNORM_RULES, "lnorm0", "lnorm0_")
        )
        if doc.layers is not None:
            body: Any = {"depth": len(doc.layers), "layers": self.layers(doc.layers, "layers", "")}
            if top_size is None:
                raise SpaceError("input_size", "is required")
            if not isinstance(top_size, ParamInfo):
                body["input_size"] = top_size
        else:
            body = self._depth(doc.depth, top_size)  # type: ignore[arg-type]
        top["body"] = body
        top["readout"] = self.group(doc.readout, _READOUT_RULES, "readout", "readout_")
        top["train"] = (
            None if doc.train is None else self.group(doc.train, _TRAIN_RULES, "train", "train_")
        )
        return top

    def _depth(self, spec: DepthChoice, top_size: Any) -> ParamInfo:
        _check_options(len(spec.options), "depth")
        seen: dict[int, int] = {}
        options = []
        for i, option in enumerate(spec.options):
            path = f"depth.options[{i}]"
            d = len(option.layers)
            if d in seen:
                raise SpaceError(
                    f"{path}.layers",
                    f"must differ in length from depth.options[{seen[d]}].layers, both "
                    f"have {d} (labels are d<depth>_...)",
                )
            seen[d] = i
            branch: dict[str, Any] = {"depth": d}
            if option.input_size is not None:
                if isinstance(top_size, ParamInfo):
                    # a top-level parameter would stay active (sampled) yet unused here
                    raise SpaceError(
                        f"{path}.input_size",
                        "cannot be set when the top-level input_size is a parameter; "
                        "make that a constant or set input_size in every option",
                    )
                branch["input_size"] = self.leaf(
                    option.input_size,
                    f"{path}.input_size",
                    f"d{d}_input_size",
                    _INPUT_SIZE_RULE,
                )
            elif top_size is None:
                raise SpaceError(
                    "input_size",
                    f"is required (at the top level or in {path})",
                )
            elif not isinstance(top_size, ParamInfo):
                branch["input_size"] = top_size
            branch["layers"] = self.layers(option.layers, f"{path}.layers", f"d{d}_")
            options.append(branch)
        return self.register(ParamInfo("depth", "depth", spec, tuple(options), "int"))


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


def _in_document_order(template: Any, params: Mapping[str, ParamInfo]) -> dict[str, ParamInfo]:
    order: list[str] = []

    def visit(t: Any) -> None:
        if isinstance(t, ParamInfo):
            order.append(t.label)
            for option in t.options:
                visit(option)
        elif isinstance(t, dict):
            for value in t.values():
                visit(value)
        elif isinstance(t, list):
            for value in t:
                visit(value)

    visit(template)
    assert sorted(order) == sorted(params), "every parameter is reachable exactly once"
    return {label: params[label] for label in order}


# -- template walkers ------------------------------------------------------------------
def _compile(template: Any) -> Any:
    from hyperopt import hp

    if isinstance(template, ParamInfo):
        spec, label = template.spec, template.label
        if isinstance(spec, Choice | DepthChoice):
            return hp.choice(label, [_compile(o) for o in template.options])
        if isinstance(spec, Uniform):
            return hp.uniform(label, spec.low, spec.high)
        if isinstance(spec, QUniform):
            return hp.quniform(label, spec.low, spec.high, spec.q)
        if isinstance(spec, LogUniform):
            return hp.loguniform(label, math.log(spec.low), math.log(spec.high))
        if isinstance(spec, QLogUniform):
            return hp.qloguniform(label, math.log(spec.low), math.log(spec.high), spec.q)
        if isinstance(spec, Normal):
            return hp.normal(label, spec.mu, spec.sigma)
        if isinstance(spec, LogNormal):
            return hp.lognormal(label, spec.mu, spec.sigma)
        return hp.randint(label, spec.low, spec.high)
    if isinstance(template, dict):
        return {key: _compile(value) for key, value in template.items()}
    if isinstance(template, list):
        return [_compile(value) for value in template]
    return template


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


def _activation_plan(template: Any) -> list[tuple[str, ParamInfo, str | None, int]]:
    """``(label, info, parent choice label, option index)`` in document order: a label is
    active iff its parent is None, or the parent is active and picks that option."""
    plan: list[tuple[str, ParamInfo, str | None, int]] = []

    def visit(t: Any, parent: str | None, option: int) -> None:
        if isinstance(t, ParamInfo):
            plan.append((t.label, t, parent, option))
            for i, child in enumerate(t.options):
                visit(child, t.label, i)
        else:
            for child in _children(t):
                visit(child, parent, option)

    visit(template, None, -1)
    return plan


def _resolve(template: Any, point: Mapping[str, Any]) -> Any:
    """What ``hyperopt.space_eval(expr, point)`` returns, without pyll, and with every
    value in its field's type (``16`` not ``16.0`` for a quniform filter count), so that
    equal architectures resolve to equal structures."""
    if isinstance(template, ParamInfo):
        value = point[template.label]
        if template.options:
            return _resolve(template.options[value], point)
        if template.kind == "int":
            return round(value)
        return float(value)
    if isinstance(template, dict):
        return {key: _resolve(value, point) for key, value in template.items()}
    if isinstance(template, list):
        return [_resolve(value, point) for value in template]
    return template


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


def _children(template: Any) -> list[Any]:
    if isinstance(template, dict):
        return list(template.values())
    if isinstance(template, list):
        return template
    return []


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


def _arch_target(arch: Architecture) -> dict[str, Any]:
    """An architecture in the resolved-template shape (for :meth:`Space.raw_from_arch`)."""

    def lnorm(n: LNorm) -> dict[str, Any]:
        return {
            "size": n.size,
            "remove_mean": n.remove_mean,
            "stretch": n.stretch,
            "threshold": n.threshold,
        }

    layers = [
        {
            "n_filters": layer.fbcorr.n_filters,
            "filter_size": layer.fbcorr.size,
            "min_out": layer.activation.min_out,
            "max_out": layer.activation.max_out,
            "pool_size": layer.lpool.size,
            "pool_order": layer.lpool.order,
            "pool_stride": layer.lpool.stride,
            "norm_size": layer.lnorm.size,
            "norm_remove_mean": layer.lnorm.remove_mean,
            "norm_stretch": layer.lnorm.stretch,
            "norm_threshold": layer.lnorm.threshold,
        }
        for layer in arch.layers
    ]
    t = arch.train
    return {
        "input_size": arch.input_size,
        "preprocess": arch.preprocess,
        "lnorm0": None if arch.lnorm0 is None else lnorm(arch.lnorm0),
        "body": {"depth": arch.depth, "input_size": arch.input_size, "layers": layers},
        "readout": {"kind": arch.readout.kind, "l2": arch.readout.l2},
        "train": None
        if t is None
        else {
            "lr": t.lr,
            "weight_decay": t.weight_decay,
            "dropout": t.dropout,
            "batch_size": t.batch_size,
            "epochs": t.epochs,
        },
    }


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    return a == b or math.isclose(a, b, rel_tol=1e-9)


def _match(template: Any, target: Any, raw: dict[str, Any]) -> bool:
    """Find values for the parameters below ``template`` that resolve to ``target``."""
    if isinstance(template, ParamInfo):
        if template.options:
            for i, option in enumerate(template.options):
                trial: dict[str, Any] = {}
                if _match(option, target, trial):
                    raw[template.label] = i
                    raw.update(trial)
                    return True
            return False
        if target is None or isinstance(target, str):
            return False
        try:
            raw[template.label] = _normalize_value(template, target)
        except SpaceError:
            return False
        return True
    if isinstance(template, dict):
        if not isinstance(target, dict):
            return False
        # keys absent from the template (a branch's inherited input_size) are not checked
        return all(key in target and _match(v, target[key], raw) for key, v in template.items())
    if isinstance(template, list):
        return (
            isinstance(target, list)
            and len(template) == len(target)
            and all(_match(t, v, raw) for t, v in zip(template, target, strict=True))
        )
    return _same(template, target)


def build_architecture(
    resolved: Mapping[str, Any], input_channels: int = 1, seed: int = 42
) -> Architecture:
    """An :class:`Architecture` from a resolved point: the structure that
    ``hyperopt.space_eval(space.expr, raw)`` returns.

    Raises:
        SpaceError: a value does not fit its field (e.g. a fractional filter count).
    """
    body = resolved["body"]
    size = body["input_size"] if "input_size" in body else resolved["input_size"]

    def as_int(value: Any, where: str) -> int:
        number = float(value)
        if not number.is_integer():
            raise SpaceError(where, f"must be a whole number, got {_fmt(number)}")
        return int(number)

    def lnorm(d: Mapping[str, Any], where: str) -> LNorm:
        return LNorm(
            size=as_int(d["size"], f"{where}.size"),
            remove_mean=bool(d["remove_mean"]),
            stretch=float(d["stretch"]),
            threshold=float(d["threshold"]),
        )

    layers = []
    for i, d in enumerate(body["layers"], start=1):
        where = f"layer {i}"
        layers.append(
            Layer(
                fbcorr=FBCorr(
                    n_filters=as_int(d["n_filters"], f"{where} n_filters"),
                    size=as_int(d["filter_size"], f"{where} filter_size"),
                ),
                activation=Activation(min_out=float(d["min_out"]), max_out=float(d["max_out"])),
                lpool=LPool(
                    size=as_int(d["pool_size"], f"{where} pool_size"),
                    order=float(d["pool_order"]),
                    stride=as_int(d["pool_stride"], f"{where} pool_stride"),
                ),
                lnorm=LNorm(
                    size=as_int(d["norm_size"], f"{where} norm_size"),
                    remove_mean=bool(d["norm_remove_mean"]),
                    stretch=float(d["norm_stretch"]),
                    threshold=float(d["norm_threshold"]),
                ),
            )
        )
    readout = resolved["readout"]
    train = resolved.get("train")
    return Architecture(
        input_size=as_int(size, "input_size"),
        input_channels=int(input_channels),
        lnorm0=None if resolved["lnorm0"] is None else lnorm(resolved["lnorm0"], "lnorm0"),
        layers=tuple(layers),
        readout=Readout(
            kind=readout["kind"], l2=None if readout["l2"] is None else float(readout["l2"])
        ),
        seed=int(seed),
        preprocess=resolved["preprocess"],
        train=None
        if train is None
        else TrainSettings(
            lr=float(train["lr"]),
            weight_decay=float(train["weight_decay"]),
            dropout=float(train["dropout"]),
            batch_size=as_int(train["batch_size"], "train batch_size"),
            epochs=as_int(train["epochs"], "train epochs"),
        ),
    )
