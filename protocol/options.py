"""Study options with their defaults, written once: how a worker scores a candidate
(:class:`EvaluatorOptions`) and how the suggester proposes one (:class:`AlgorithmOptions`).

The coordinator validates them at study creation and stores what the user gave; every
reader (coordinator, worker) parses the stored dict with these models, so a default lives
here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .datasets import Color, default_color

StrictModel = ConfigDict(extra="forbid")

# Cost ceilings per image, checked by ``search_space.arch.validate`` before a trial starts
# (a candidate above one is INFEASIBLE, never run). Measured with ``arch.walk`` on 10,000
# draws per built-in space (gray and RGB), candidates within the feature cap: pinto-cox
# <= 6 GFLOP and 6 MiB, fg11 <= 13.5 GFLOP and 9.4 MiB, bergstra13 99th percentile 31
# GFLOP / 26 MiB, max 118 GFLOP / 36 MiB; the fg11-ht-l3-1st preset at 200 px is 4.57
# GFLOP and 8.8 MiB. 200 GFLOP is ~1.7x the largest sensible draw (and ~40x the preset)
# while refusing the hundreds-of-TFLOP candidates a custom space can reach; 2048 MiB for
# the largest float32 map keeps batch size 1 (~6 copies of it) within a 16 GB GPU.
DEFAULT_MAX_GFLOPS_PER_IMAGE = 200.0
DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE = 2048.0
# The search split holds out a stratified validation fraction of every class, which
# needs >= 2 non-test images per class; the test split can be capped at 1.
MIN_TRAIN_PER_CLASS = 2

EvaluatorName = Literal["screen", "train", "pairs"]
BUILTIN_EVALUATORS: tuple[str, ...] = ("screen", "train", "pairs")
# A study may name an evaluator an installed package provides (entry-point group
# ``archsearch.evaluators``): ``plugin:NAME``. The coordinator cannot import workers' code,
# so it checks only the form; a worker without the plugin gives the trial back.
PLUGIN_PREFIX = "plugin:"
MAX_EVALUATOR_LENGTH = 32  # the coordinator's ``studies.evaluator`` column
_PLUGIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_evaluator_name(value: str) -> str:
    """``value`` when it is a built-in evaluator or ``plugin:NAME`` (NAME: dot-separated
    identifiers, the whole at most :data:`MAX_EVALUATOR_LENGTH` characters); else
    ``ValueError`` saying what is accepted."""
    if value in BUILTIN_EVALUATORS:
        return value
    if value.startswith(PLUGIN_PREFIX):
        name = value[len(PLUGIN_PREFIX) :]
        if _PLUGIN_NAME.fullmatch(name) and len(value) <= MAX_EVALUATOR_LENGTH:
            return value
        room = MAX_EVALUATOR_LENGTH - len(PLUGIN_PREFIX)
        raise ValueError(
            f"a plugin evaluator is plugin:NAME, NAME dot-separated identifiers (letters, "
            f"digits, _) of at most {room} characters; got {value!r}"
        )
    raise ValueError(
        "Input should be 'screen', 'train' or 'pairs', or 'plugin:NAME' for an evaluator "
        f"an installed package provides; got {value!r}"
    )


# The OpenAPI document states the same rule as a pattern (validation is the function's).
EVALUATOR_PATTERN = (
    r"^(screen|train|pairs|plugin:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)$"
)
EvaluatorField = Annotated[
    str,
    AfterValidator(check_evaluator_name),
    Field(json_schema_extra={"pattern": EVALUATOR_PATTERN, "maxLength": MAX_EVALUATOR_LENGTH}),
]
AlgorithmName = Literal["tpe", "random", "grid"]


def _storable_options(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A free-form options object both database backends store (no NUL, finite numbers);
    checked here so that a 422 names ``evaluator_options.plugin_options``."""
    from .wire import _storable  # wire imports this module

    return None if value is None else _storable(value)


ReadoutName = Literal["ridge", "logistic", "svm"]
ResourceName = Literal["train_per_class", "epochs"]
# The resource each built-in evaluator can spend in rungs: screen fits its readout on at
# most N training images per class; train runs N epochs. pairs has no such budget (its
# View 1 split is fixed), and a plugin's budget is its own business.
EVALUATOR_RESOURCES: dict[str, tuple[str, ...]] = {
    "screen": ("train_per_class",),
    "train": ("epochs",),
    "pairs": (),
}
MAX_RUNGS = 16
# Blends combine the features of fixed-filter models; a train study keeps no weights.
BLENDABLE_EVALUATORS: tuple[str, ...] = ("screen", "pairs")
BlendWeights = Literal["uniform", "validation"]


class ScheduleOptions(BaseModel):
    """Asynchronous successive halving (ASHA; Li et al., MLSys 2020) over one resource.

    Rung ``k`` spends ``resources()[k]``: ``min * eta**k`` rounded, capped at ``max``;
    the last rung spends ``max``. A configuration is promoted to rung ``k + 1`` as soon as
    it is in the top ``1/eta`` of the COMPLETE results rung ``k`` has so far
    (:mod:`service.schedule`). Final (test split) evaluations spend ``max``.
    """

    model_config = StrictModel
    kind: Literal["asha"] = "asha"
    resource: ResourceName = Field(
        description="train_per_class (screen: training images per class in the readout's "
        "fit split; the validation split is the same at every rung) or epochs (train)."
    )
    min: int = Field(ge=1, le=1_000_000, description="The first rung's resource.")
    max: int = Field(ge=2, le=1_000_000, description="The last rung's resource (> min).")
    eta: int = Field(3, ge=2, le=100, description="Reduction factor: the top 1/eta go up.")

    @field_validator("max")
    @classmethod
    def _above_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min")
        if low is not None and value <= low:
            raise ValueError(f"max must be > min, got min={low} and max={value}")
        return value

    def resources(self) -> list[int]:
        """Each rung's resource, lowest first; the last is ``max``. Raises ``ValueError``
        when more than :data:`MAX_RUNGS` rungs would be needed."""
        out = [self.min]
        while out[-1] < self.max:
            out.append(min(self.max, max(out[-1] + 1, round(self.min * self.eta ** len(out)))))
            if len(out) > MAX_RUNGS:
                raise ValueError(
                    f"min={self.min}, max={self.max}, eta={self.eta} need more than "
                    f"{MAX_RUNGS} rungs"
                )
        return out

    def resource_of(self, rung: int, *, final: bool = False) -> int:
        """The resource of ``rung`` (``final``: ``max``). Raises ``ValueError`` for a rung
        past the last."""
        levels = self.resources()
        if final:
            return levels[-1]
        if not 0 <= rung < len(levels):
            raise ValueError(f"rung {rung} is outside 0..{len(levels) - 1}")
        return levels[rung]


class AlgorithmOptions(BaseModel):
    """TPE settings; the defaults follow Bergstra, Yamins & Cox (ICML 2013)."""

    model_config = StrictModel
    n_startup_jobs: int = Field(20, ge=1, le=10_000)
    gamma: float = Field(0.25, gt=0, lt=1)
    n_ei_candidates: int = Field(24, ge=1, le=10_000)
    linear_forgetting: int = Field(
        25,
        ge=1,
        le=100_000,
        description="hyperopt's TPE fixes this at 25; other values are refused at study creation",
    )


class EvaluatorOptions(BaseModel):
    """How a worker scores a candidate. Unknown keys are refused."""

    model_config = StrictModel
    color: Color | None = Field(
        None,
        description="Image channels fed to the model; default per dataset scheme (gray for "
        "builtin, idx, npz, lfw; rgb for cifar10, imagefolder). The coordinator resolves it "
        "before a worker sees the study.",
    )
    max_features: int = Field(100_000, ge=1, le=10_000_000)
    max_gflops_per_image: float = Field(
        DEFAULT_MAX_GFLOPS_PER_IMAGE,
        gt=0,
        le=1e9,
        description="A candidate needing more GFLOP (1 multiply-add = 2 FLOP) per image is "
        "INFEASIBLE before it starts.",
    )
    max_activation_mb_per_image: float = Field(
        DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE,
        gt=0,
        le=1e9,
        description="A candidate whose largest float32 feature map takes more MiB per "
        "image is INFEASIBLE before it starts.",
    )
    readout: ReadoutName | None = Field(
        None,
        description="Linear readout of screen and pairs; default: the architecture's own "
        "(ridge in the built-in spaces).",
    )
    epochs: int = Field(2, ge=1, le=1000, description="train protocol budget")
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    trial_timeout_seconds: float = Field(3600, gt=0)
    filter_seed: int = Field(42, ge=0, le=2**31 - 1)
    plugin_options: Annotated[dict[str, Any] | None, AfterValidator(_storable_options)] = Field(
        None,
        description="A plugin evaluator's own options (a JSON object it reads); only with "
        "evaluator plugin:NAME.",
    )
    max_per_class: int | dict[Literal["train", "test"], int] | None = Field(
        None,
        description="Screen on a class-balanced subset: at most this many images per "
        'class (an int for both splits, or {"train": n, "test": m}). The train cap must be '
        ">= 2 (the validation split takes at least one image of every class), the test "
        "cap >= 1.",
    )

    @field_validator("max_per_class")
    @classmethod
    def _workable_caps(cls, caps: int | dict[str, int] | None) -> int | dict[str, int] | None:
        if caps is None:
            return caps
        if isinstance(caps, dict):
            train, test = caps.get("train"), caps.get("test")
        else:
            train, test = caps, caps
        if train is not None and train < MIN_TRAIN_PER_CLASS:
            raise ValueError(
                f"the train cap must be >= {MIN_TRAIN_PER_CLASS}, got {train}: the search "
                "split holds out a stratified validation part of every class, so each "
                "class needs at least 2 non-test images (1 would leave the validation "
                "split empty and fail every trial)"
            )
        if test is not None and test < 1:
            raise ValueError(f"the test cap must be >= 1, got {test}")
        return caps

    @classmethod
    def for_study(cls, stored: dict[str, Any], dataset: str) -> EvaluatorOptions:
        """The stored options with every default filled in and ``color`` resolved for
        ``dataset``: what a worker is sent. Raises ``pydantic.ValidationError`` for a
        stored dict this version cannot read."""
        options = cls.model_validate(stored)
        if options.color is None:
            options = options.model_copy(update={"color": default_color(dataset)})
        return options

    @property
    def input_channels(self) -> int:
        """Channels of the model's input (``color`` must be resolved: see :meth:`for_study`)."""
        return 3 if self.color == "rgb" else 1
