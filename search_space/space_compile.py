"""The compiler: a validated :class:`SpaceDoc` to a template, and a template to hyperopt.

:class:`_Builder` walks the document once, checks every field rule
(:mod:`search_space.space_rules`), assigns the hyperopt labels (see :mod:`search_space.space`
for the naming) and builds the template: plain dicts / lists / constants with a
:class:`ParamInfo` at each parameter.  The walkers here read a template:
:func:`_in_document_order` (labels in document order), :func:`_activation_plan` (which
choice option activates which label), :func:`_children` and :func:`_compile` (the hyperopt
expression).

Contract: labels are unique and at most :data:`MAX_PARAMETERS`; every failure is a
:class:`SpaceError` with the JSON path of the offending item.  hyperopt is imported only
inside :func:`_compile`, so building a Space stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .space_params import ParamInfo
from .space_rules import (
    _INPUT_SIZE_RULE,
    _LAYER_RULES,
    _LNORM_RULES,
    _PREPROCESS_RULE,
    _READOUT_RULES,
    _TRAIN_RULES,
    _check_activation,
    _check_const,
    _check_distribution,
    _check_options,
    _check_range,
    _Rule,
    _support,
)
from .space_schema import (
    MAX_CHOICE_NESTING,
    MAX_LAYERS,
    MAX_PARAMETERS,
    PARAM_TYPES,
    Choice,
    DepthChoice,
    LayerSpec,
    LogNormal,
    LogUniform,
    Normal,
    QLogUniform,
    QUniform,
    SpaceDoc,
    SpaceError,
    Uniform,
    _fmt,
)


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


def _children(template: Any) -> list[Any]:
    if isinstance(template, dict):
        return list(template.values())
    if isinstance(template, list):
        return template
    return []
