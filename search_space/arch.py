"""A candidate architecture as data: frozen dataclasses, JSON round-trip, content hash,
and the shape walk that decides feasibility before any tensor exists.

The model family is docs/design.md section 2: layer 0 is an ``lnorm`` of the input, every
layer l >= 1 is ``fbcorr -> activation -> lpool -> lnorm``, all in "valid" mode, and the
features are flattened in (H, W, C) order.  Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from protocol.options import DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE, DEFAULT_MAX_GFLOPS_PER_IMAGE

DEFAULT_MAX_FEATURES = 100_000
DEFAULT_MAX_PARAMS = 50_000_000
# The cost ceilings' defaults (DEFAULT_MAX_GFLOPS_PER_IMAGE, DEFAULT_MAX_ACTIVATION_MB_
# PER_IMAGE) are written once, with their justification, in protocol/options.py.
READOUT_KINDS = ("ridge", "logistic", "svm")
PREPROCESS_KINDS = ("minmax", "div255")


class InfeasibleArchitecture(ValueError):
    """The architecture cannot be built for its input: the trial ends INFEASIBLE.

    ``reason`` is a human-readable sentence that is stored with the trial.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- field normalisation --------------------------------------------------------------
# Values arrive from hyperopt (``choice([1, 10])`` gives ints, ``quniform`` gives 3.0),
# from NumPy (np.int64 is not JSON-serialisable) and from clients' JSON. Equal dataclasses
# compare equal across int/float (1 == 1.0) but serialise differently ("1" vs "1.0"), so
# without normalisation two equal architectures would get two content hashes and a
# duplicate config would be evaluated twice. Every field is therefore coerced to its
# declared Python type on construction; a value that cannot be (3.5 filters, NaN, "3")
# raises ValueError.
def _as_int(name: str, value: Any) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value).is_integer()
    ):
        return int(value)
    raise ValueError(f"{name} must be an integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        f = float(value)
        if not math.isnan(f):
            return f + 0.0  # -0.0 -> 0.0: same value, same JSON
    raise ValueError(f"{name} must be a number (not NaN), got {value!r}")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be a boolean (or 0/1), got {value!r}")


def _coerce(obj: Any, **kinds: Any) -> None:
    """Replace each named field of the frozen dataclass ``obj`` by ``kind(name, value)``."""
    for name, kind in kinds.items():
        object.__setattr__(obj, name, kind(f"{type(obj).__name__}.{name}", getattr(obj, name)))


@dataclass(frozen=True)
class LNorm:
    """Divisive normalisation over a ``size x size x depth`` neighbourhood."""

    size: int
    remove_mean: bool = False
    stretch: float = 1.0
    threshold: float = 1.0

    def __post_init__(self) -> None:
        _coerce(self, size=_as_int, remove_mean=_as_bool, stretch=_as_float, threshold=_as_float)


@dataclass(frozen=True)
class FBCorr:
    """Correlation with ``n_filters`` filters of ``size x size x depth``."""

    n_filters: int
    size: int

    def __post_init__(self) -> None:
        _coerce(self, n_filters=_as_int, size=_as_int)


@dataclass(frozen=True)
class Activation:
    """Clamp to ``[min_out, max_out]``; ``min_out`` in {-inf, 0}, ``max_out`` in {1, inf}."""

    min_out: float = 0.0
    max_out: float = math.inf

    def __post_init__(self) -> None:
        _coerce(self, min_out=_as_float, max_out=_as_float)


@dataclass(frozen=True)
class LPool:
    """``(sum_{size x size} x^order)^(1/order)`` keeping every ``stride``-th position."""

    size: int
    order: float = 1.0
    stride: int = 2

    def __post_init__(self) -> None:
        _coerce(self, size=_as_int, order=_as_float, stride=_as_int)


@dataclass(frozen=True)
class Layer:
    fbcorr: FBCorr
    activation: Activation
    lpool: LPool
    lnorm: LNorm


@dataclass(frozen=True)
class Readout:
    """Linear classifier on the features. ``l2=None``: chosen on the training split."""

    kind: Literal["ridge", "logistic", "svm"] = "ridge"
    l2: float | None = None

    def __post_init__(self) -> None:
        if self.l2 is not None:
            _coerce(self, l2=_as_float)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings for the ``train`` protocol (filters learned by backprop)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.0
    batch_size: int = 64
    epochs: int = 2

    def __post_init__(self) -> None:
        _coerce(
            self,
            lr=_as_float,
            weight_decay=_as_float,
            dropout=_as_float,
            batch_size=_as_int,
            epochs=_as_int,
        )


@dataclass(frozen=True)
class Architecture:
    """One candidate: input, layer 0 lnorm, 1..n layers, readout, filter seed.

    ``input_size`` is the side of the square image the data are resized to.
    """

    input_size: int
    input_channels: int
    lnorm0: LNorm | None
    layers: tuple[Layer, ...]
    readout: Readout = field(default_factory=Readout)
    seed: int = 42
    preprocess: Literal["minmax", "div255"] = "minmax"
    train: TrainSettings | None = None

    def __post_init__(self) -> None:
        _coerce(self, input_size=_as_int, input_channels=_as_int, seed=_as_int)
        # A list would make the frozen dataclass unhashable; the layers are a tuple.
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def depth(self) -> int:
        return len(self.layers)

    # -- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict; infinities become the strings ``"inf"`` / ``"-inf"``."""
        return _encode_floats(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on a malformed document."""
        try:
            d = _decode_floats(data)
            layers = tuple(
                Layer(
                    fbcorr=FBCorr(**layer["fbcorr"]),
                    activation=Activation(**layer["activation"]),
                    lpool=LPool(**layer["lpool"]),
                    lnorm=LNorm(**layer["lnorm"]),
                )
                for layer in d["layers"]
            )
            return cls(
                input_size=int(d["input_size"]),
                input_channels=int(d["input_channels"]),
                lnorm0=LNorm(**d["lnorm0"]) if d.get("lnorm0") is not None else None,
                layers=layers,
                readout=Readout(**d.get("readout") or {}),
                seed=int(d.get("seed", 42)),
                preprocess=d.get("preprocess", "minmax"),
                train=TrainSettings(**d["train"]) if d.get("train") is not None else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed architecture document: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(json.loads(text))

    def content_hash(self) -> str:
        """sha256 of the canonical JSON: same architecture -> same hash, any key order."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # -- display --------------------------------------------------------------------
    def summary(self) -> str:
        """One readable line, e.g. ``L0 norm9 | 64x3x3 relu pool7 p1 norm5 | ...``."""
        parts = [f"{self.input_size}px"]
        if self.lnorm0 is not None:
            parts.append(f"L0 norm{self.lnorm0.size}")
        for layer in self.layers:
            parts.append(
                f"{layer.fbcorr.n_filters}x{layer.fbcorr.size}x{layer.fbcorr.size} "
                f"{_activation_name(layer.activation)} "
                f"pool{layer.lpool.size} p{layer.lpool.order:g}"
                + (f" s{layer.lpool.stride}" if layer.lpool.stride != 2 else "")
                + f" norm{layer.lnorm.size}"
            )
        return " | ".join(parts)


def _activation_name(act: Activation) -> str:
    if act.min_out == 0 and math.isinf(act.max_out):
        return "relu"
    if math.isinf(act.min_out) and math.isinf(act.max_out):
        return "linear"
    lo = "-inf" if math.isinf(act.min_out) else f"{act.min_out:g}"
    hi = "inf" if math.isinf(act.max_out) else f"{act.max_out:g}"
    return f"clamp[{lo},{hi}]"


def _encode_floats(obj: Any) -> Any:
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode_floats(v) for v in obj]
    return obj


def _decode_floats(obj: Any) -> Any:
    if obj == "inf":
        return math.inf
    if obj == "-inf":
        return -math.inf
    if isinstance(obj, dict):
        return {k: _decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_floats(v) for v in obj]
    return obj


# -- shapes, feasibility, cost ------------------------------------------------------
@dataclass(frozen=True)
class ShapeReport:
    """Result of walking an architecture: per-stage (H, W, C) and totals per image."""

    shapes: tuple[tuple[str, int, int, int], ...]
    n_features: int
    n_params: int
    flops: int
    activation_bytes: int

    @property
    def gflops(self) -> float:
        """FLOPs per image in units of 1e9."""
        return self.flops / 1e9

    @property
    def activation_mb(self) -> float:
        """The largest float32 map of one image in MiB (2**20 bytes)."""
        return self.activation_bytes / 2**20


def _valid(side: int, k: int, stride: int = 1) -> int:
    return (side - k) // stride + 1 if side >= k else 0


def walk(arch: Architecture, input_hw: tuple[int, int] | None = None) -> ShapeReport:
    """Walk the spatial sizes. Raises :class:`InfeasibleArchitecture` when a map vanishes.

    FLOPs count one multiply-add as 2 operations (fbcorr dominates); activation bytes are
    float32 bytes of the largest intermediate map, the per-image working set.
    """
    h, w = input_hw if input_hw is not None else (arch.input_size, arch.input_size)
    c = arch.input_channels
    if h < 1 or w < 1 or c < 1:
        raise InfeasibleArchitecture(f"input must be at least 1x1x1, got {h}x{w}x{c}")
    shapes: list[tuple[str, int, int, int]] = [("input", h, w, c)]
    flops = 0
    params = 0
    peak = h * w * c

    def shrink(stage: str, k: int, stride: int = 1) -> None:
        nonlocal h, w
        nh, nw = _valid(h, k, stride), _valid(w, k, stride)
        if nh < 1 or nw < 1:
            raise InfeasibleArchitecture(
                f"{stage}: a {k}x{k} window (stride {stride}) does not fit a {h}x{w} map"
            )
        h, w = nh, nw

    if arch.lnorm0 is not None:
        shrink("L0 lnorm", arch.lnorm0.size)
        flops += 4 * h * w * c * arch.lnorm0.size**2
        shapes.append(("L0 lnorm", h, w, c))
    for i, layer in enumerate(arch.layers, start=1):
        fb = layer.fbcorr
        shrink(f"L{i} fbcorr", fb.size)
        flops += 2 * h * w * fb.n_filters * fb.size * fb.size * c
        params += fb.n_filters * fb.size * fb.size * c
        c = fb.n_filters
        peak = max(peak, h * w * c)
        shapes.append((f"L{i} fbcorr", h, w, c))
        pool_in = h * w * c
        shrink(f"L{i} lpool", layer.lpool.size, layer.lpool.stride)
        flops += 2 * pool_in * layer.lpool.size**2 // max(1, layer.lpool.stride**2)
        shapes.append((f"L{i} lpool", h, w, c))
        shrink(f"L{i} lnorm", layer.lnorm.size)
        flops += 4 * h * w * c * layer.lnorm.size**2
        shapes.append((f"L{i} lnorm", h, w, c))
    return ShapeReport(
        shapes=tuple(shapes),
        n_features=h * w * c,
        n_params=params,
        flops=flops,
        activation_bytes=4 * peak,
    )


def validate(
    arch: Architecture,
    input_hw: tuple[int, int] | None = None,
    max_features: int = DEFAULT_MAX_FEATURES,
    max_params: int = DEFAULT_MAX_PARAMS,
    max_gflops_per_image: float = DEFAULT_MAX_GFLOPS_PER_IMAGE,
    max_activation_mb_per_image: float = DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE,
) -> ShapeReport:
    """Check that ``arch`` can be built on ``input_hw`` (default: its own input size).

    Returns the :class:`ShapeReport`. Raises :class:`InfeasibleArchitecture` for a
    vanishing feature map, too many output features or too many parameters, more than
    ``max_gflops_per_image`` GFLOP per image or a largest map above
    ``max_activation_mb_per_image`` MiB per image (the defaults are the study options'
    defaults, ``protocol.options.EvaluatorOptions``; ``math.inf`` disables a cap), and
    ``ValueError`` for values outside the model family (non-positive sizes, bad kinds).
    """
    _check_values(arch)
    report = walk(arch, input_hw)
    if report.n_features > max_features:
        raise InfeasibleArchitecture(
            f"{report.n_features} output features exceed the cap of {max_features}"
        )
    if report.n_params > max_params:
        raise InfeasibleArchitecture(
            f"{report.n_params} filter parameters exceed the cap of {max_params}"
        )
    if report.gflops > max_gflops_per_image:
        raise InfeasibleArchitecture(
            f"{report.gflops:.4g} GFLOP per image exceed the cost cap "
            f"max_gflops_per_image={max_gflops_per_image:g} (evaluator_options)"
        )
    if report.activation_mb > max_activation_mb_per_image:
        raise InfeasibleArchitecture(
            f"the largest feature map takes {report.activation_mb:.4g} MiB per image, above "
            f"the cap max_activation_mb_per_image={max_activation_mb_per_image:g} "
            "(evaluator_options)"
        )
    return report


def _check_values(arch: Architecture) -> None:
    def positive(name: str, value: float) -> None:
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")

    positive("input_size", arch.input_size)
    positive("input_channels", arch.input_channels)
    if arch.readout.kind not in READOUT_KINDS:
        raise ValueError(f"readout.kind must be one of {READOUT_KINDS}, got {arch.readout.kind!r}")
    if arch.preprocess not in PREPROCESS_KINDS:
        raise ValueError(f"preprocess must be one of {PREPROCESS_KINDS}, got {arch.preprocess!r}")
    norms = [("lnorm0", arch.lnorm0)] if arch.lnorm0 is not None else []
    for i, layer in enumerate(arch.layers, start=1):
        positive(f"layers[{i}].fbcorr.n_filters", layer.fbcorr.n_filters)
        positive(f"layers[{i}].fbcorr.size", layer.fbcorr.size)
        positive(f"layers[{i}].lpool.size", layer.lpool.size)
        positive(f"layers[{i}].lpool.stride", layer.lpool.stride)
        positive(f"layers[{i}].lpool.order", layer.lpool.order)
        if math.isinf(layer.lpool.order):
            raise ValueError(f"layers[{i}].lpool.order must be finite, got {layer.lpool.order}")
        if layer.activation.min_out >= layer.activation.max_out:
            raise ValueError(
                f"layers[{i}].activation: min_out < max_out must hold, got "
                f"{layer.activation.min_out} >= {layer.activation.max_out}"
            )
        norms.append((f"layers[{i}].lnorm", layer.lnorm))
    for name, norm in norms:
        positive(f"{name}.size", norm.size)
        positive(f"{name}.stretch", norm.stretch)
        if math.isinf(norm.stretch):
            raise ValueError(f"{name}.stretch must be finite, got {norm.stretch}")
        if norm.threshold < 0:
            raise ValueError(f"{name}.threshold must be >= 0, got {norm.threshold}")
