"""Study options with their defaults, written once: how a worker scores a candidate
(:class:`EvaluatorOptions`) and how the suggester proposes one (:class:`AlgorithmOptions`).

The coordinator validates them at study creation and stores what the user gave; every
reader (coordinator, worker) parses the stored dict with these models, so a default lives
here and nowhere else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .datasets import Color, default_color

StrictModel = ConfigDict(extra="forbid")

EvaluatorName = Literal["screen", "train", "pairs"]
AlgorithmName = Literal["tpe", "random", "grid"]
ReadoutName = Literal["ridge", "logistic", "svm"]


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
    readout: ReadoutName | None = Field(
        None,
        description="Linear readout of screen and pairs; default: the architecture's own "
        "(ridge in the built-in spaces).",
    )
    epochs: int = Field(2, ge=1, le=1000, description="train protocol budget")
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    trial_timeout_seconds: float = Field(3600, gt=0)
    filter_seed: int = Field(42, ge=0, le=2**31 - 1)
    max_per_class: int | dict[Literal["train", "test"], int] | None = Field(
        None,
        description="Screen on a class-balanced subset: at most this many images per "
        'class (an int for both splits, or {"train": n, "test": m}).',
    )

    @model_validator(mode="after")
    def _positive_caps(self) -> EvaluatorOptions:
        caps = self.max_per_class
        values = caps.values() if isinstance(caps, dict) else [caps] if caps else []
        if any(v < 1 for v in values):
            raise ValueError("max_per_class values must be >= 1")
        return self

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
