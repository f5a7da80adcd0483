"""The space language: its limits, its error type and its pydantic schema.

A space document is validated against the models here (:class:`SpaceDoc` is the whole
document; :data:`Leaf` is a constant or a parameter object, :data:`Param` the union of the
parameter types, discriminated on ``type``).  The models are strict (``"5"`` is not 5) and
forbid unknown fields; they check only the SHAPE of a document.  The value rules of each
field are in :mod:`search_space.space_rules`, applied by the compiler
(:mod:`search_space.space_compile`).  The document language itself (shape, parameter
types, labels, value rules) is described in :mod:`search_space.space`.

Contract: :class:`SpaceError` is the one error every part of the space code raises for a
bad document or raw point; the ``MAX_*`` limits are the only bounds on a document's size.
Pure: imports pydantic, nothing of hyperopt or numpy.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag

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

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its two arguments (the default would call ``cls(str(self))``):
        # a SpaceError raised in the coordinator's suggester process must cross back.
        return (type(self), (self.path, self.message), self.__dict__)


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
