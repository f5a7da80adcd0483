"""Raw points to architectures, and architectures back to raw points.

Forward: :func:`_resolve` evaluates a template at a raw point (what
``hyperopt.space_eval`` returns, without pyll) and :func:`build_architecture` turns that
resolved structure into an :class:`Architecture`.  Inverse: :func:`_arch_target` puts an
Architecture in the resolved shape and :func:`_match` finds the raw values that resolve to
it (:meth:`Space.raw_from_arch`).

Contract: for a normalized point ``p`` of a space,
``_match(template, _arch_target(build_architecture(_resolve(template, p))), raw)`` succeeds
and ``raw`` resolves to the same architecture (the first match in document order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .arch import (
    Activation,
    Architecture,
    FBCorr,
    Layer,
    LNorm,
    LPool,
    Readout,
    TrainSettings,
)
from .space_params import ParamInfo, _normalize_value
from .space_schema import SpaceError, _fmt


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
