"""Request and response models of the REST API (v1). The OpenAPI document is built from
these, so they are the contract: every field carries its rule."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from .models import StudyState, TrialState

MAX_NAME = 200
MAX_REASON = 20_000


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number (NaN and infinities are refused)")
    return value


def _as_utc(value: datetime | None) -> str | None:
    # SQLite hands back naive datetimes (its clock is UTC); PostgreSQL aware ones.
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


FiniteFloat = Annotated[float, AfterValidator(_finite)]
UtcDatetime = Annotated[datetime, PlainSerializer(_as_utc, return_type=str)]
StrictModel = ConfigDict(extra="forbid")

EvaluatorName = Literal["screen", "train", "pairs"]
AlgorithmName = Literal["tpe", "random", "grid"]


# -- studies ------------------------------------------------------------------------
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
    color: Literal["gray", "rgb"] | None = Field(
        None,
        description="Image channels fed to the model; default per dataset (gray for "
        "builtin, lfw; rgb for cifar10, imagefolder).",
    )
    max_features: int = Field(100_000, ge=1, le=10_000_000)
    readout: Literal["ridge", "logistic", "svm"] | None = None
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


class StudyCreate(BaseModel):
    model_config = StrictModel
    name: str = Field(min_length=1, max_length=MAX_NAME)
    space: str | dict[str, Any] = Field(
        "pinto-cox", description="A built-in space name or a space document (JSON)."
    )
    dataset: str = Field(
        min_length=1,
        max_length=4096,
        pattern=r"^(builtin|imagefolder|npz|idx|cifar10|lfw):.+",
        description="Dataset URI: builtin:mnist5k, builtin:digits, imagefolder:PATH, "
        "npz:PATH, idx:DIR, cifar10:DIR, lfw:DIR.",
    )
    evaluator: EvaluatorName = "screen"
    evaluator_options: EvaluatorOptions = Field(default_factory=EvaluatorOptions)
    algorithm: AlgorithmName = "tpe"
    algorithm_options: AlgorithmOptions = Field(default_factory=AlgorithmOptions)
    max_trials: int = Field(100, ge=1, le=1_000_000)
    max_parallel: int = Field(4, ge=1, le=4096, description="Depth of the suggestion queue.")
    top_k: int = Field(5, ge=0, le=100, description="Trials re-scored on the test split.")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class StudyPatch(BaseModel):
    model_config = StrictModel
    state: Literal["running", "paused", "stopped"]


class StudyOut(BaseModel):
    id: int
    name: str
    state: StudyState
    space_name: str | None
    space: dict[str, Any]
    dataset: str
    evaluator: str
    evaluator_options: dict[str, Any]
    algorithm: str
    algorithm_options: dict[str, Any]
    max_trials: int
    max_parallel: int
    top_k: int
    seed: int
    created_at: UtcDatetime
    counts: dict[str, int] = Field(description="Trials by state.")
    best_value: float | None
    infeasible_rate: float | None = Field(description="INFEASIBLE / finished trials.")


class StudyList(BaseModel):
    studies: list[StudyOut]


# -- trials ---------------------------------------------------------------------------
class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_id: int
    number: int
    state: TrialState
    source: str = Field(description="suggested | user | final (a test-split re-score)")
    final_of_id: int | None = Field(None, description="For a final trial: the trial re-scored")
    params: dict[str, Any]
    arch: dict[str, Any] | None
    arch_summary: str | None = None
    config_hash: str
    seed: int
    value: float | None
    test_value: float | None
    metrics: dict[str, Any]
    intermediate: list[Any]
    reason: str | None
    worker_id: int | None
    attempt: int
    lease_expires_at: UtcDatetime | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class TrialPage(BaseModel):
    trials: list[TrialOut]
    next: str | None = Field(description="Cursor for the next page (pass as after=), or null.")


class BestOut(BaseModel):
    trials: list[TrialOut]


class EnqueueTrial(BaseModel):
    """A user-given configuration: raw space values (``params``) or a named ``preset``."""

    model_config = StrictModel
    params: dict[str, Any] | None = None
    preset: str | None = Field(None, max_length=100)

    @model_validator(mode="after")
    def _exactly_one(self) -> EnqueueTrial:
        if (self.params is None) == (self.preset is None):
            raise ValueError("exactly one of params and preset must be given")
        return self


# -- workers ---------------------------------------------------------------------------
class WorkerRegister(BaseModel):
    model_config = StrictModel
    name: str = Field(min_length=1, max_length=MAX_NAME)
    host: str | None = Field(None, max_length=255)
    device: str | None = Field(None, max_length=100)


class WorkerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    host: str | None
    device: str | None
    registered_at: UtcDatetime
    last_seen_at: UtcDatetime


class StudyBrief(BaseModel):
    """What a worker needs to evaluate a claimed trial."""

    id: int
    name: str
    dataset: str
    dataset_fingerprint: str | None
    evaluator: str
    evaluator_options: dict[str, Any]
    seed: int


class Lease(BaseModel):
    expires_at: UtcDatetime
    seconds: float


class ClaimOut(BaseModel):
    trial: TrialOut
    study: StudyBrief
    lease: Lease


class WorkerReport(BaseModel):
    model_config = StrictModel
    worker_id: int = Field(ge=1, le=2**63 - 1)


class HeartbeatIn(WorkerReport):
    step: int | None = Field(None, ge=0, le=2**31 - 1)
    value: FiniteFloat | None = None


class HeartbeatOut(BaseModel):
    action: Literal["continue", "prune", "stop"]
    lease_expires_at: UtcDatetime


class CompleteIn(WorkerReport):
    value: FiniteFloat
    metrics: dict[str, Any] = Field(default_factory=dict)


class FailIn(WorkerReport):
    kind: Literal["infeasible", "error", "pruned"]
    reason: str = Field(min_length=1, max_length=MAX_REASON)
    value: FiniteFloat | None = None


class ReleaseIn(WorkerReport):
    pass


# -- spaces / health -----------------------------------------------------------------
class SpaceSummary(BaseModel):
    name: str
    description: str
    default: bool


class SpaceList(BaseModel):
    spaces: list[SpaceSummary]


class SpaceOut(BaseModel):
    name: str
    description: str
    document: dict[str, Any]
    labels: list[str]
