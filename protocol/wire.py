"""Request and response bodies of the REST API (v1): the contract between coordinator,
workers and the client. The OpenAPI document is built from these; every field carries its
rule. Changing a body means adding a field; old clients keep working or get a clear 422.
"""

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

from .datasets import DATASET_URI_HELP, DATASET_URI_PATTERN
from .options import (
    AlgorithmName,
    AlgorithmOptions,
    BlendWeights,
    EvaluatorField,
    EvaluatorOptions,
    ScheduleOptions,
    StrictModel,
)
from .options import (
    EvaluatorName as EvaluatorName,  # re-exported: the built-in names (tests, readers)
)
from .states import StudyState, TrialSource, TrialState

MAX_NAME = 200
MAX_REASON = 20_000
MAX_ID = 2**63 - 1
FINGERPRINT_LENGTH = 64
# The most trials one batch request claims, reports, heart-beats or releases.
MAX_BATCH = 64
# The most study ids one claim may name in ``study`` or ``exclude``.
MAX_STUDY_FILTER = 1000


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


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte (\\u0000)")
    return value


def _path(parts: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _storable(value: Any) -> Any:
    """Walks a free-form JSON value (params, metrics, a space document): every string,
    key included, free of NUL bytes and every number finite, so that both database
    backends store it (PostgreSQL refuses NUL in text and NaN / infinities in JSON).
    Iterative, so a deeply nested document cannot exhaust the stack here."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError(f"{_path(where) or 'value'}: a NUL byte (\\u0000) is refused")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(
                    f"{_path(where) or 'value'}: {item} is refused (numbers must be finite)"
                )
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and "\x00" in key:
                    where_key = _path(where) or "top level"
                    raise ValueError(f"{where_key}: key {key!r} has a NUL byte (\\u0000)")
                stack.append((sub, [*where, key]))
        elif isinstance(item, list | tuple):
            stack.extend((sub, [*where, i]) for i, sub in enumerate(item))
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]
# Every string of a request body: PostgreSQL text cannot hold NUL (SQLite can), so both
# backends get the same 422 instead of one of them a 500.
Text = Annotated[str, AfterValidator(_no_nul)]
# A free-form JSON object of a request body (params, metrics, a space document).
Document = Annotated[dict[str, Any], AfterValidator(_storable)]
UtcDatetime = Annotated[datetime, PlainSerializer(_as_utc, return_type=str)]


# -- studies ------------------------------------------------------------------------
class StudyCreate(BaseModel):
    model_config = StrictModel
    name: Text = Field(min_length=1, max_length=MAX_NAME, description="No NUL bytes.")
    space: Annotated[str | dict[str, Any], AfterValidator(_storable)] = Field(
        "pinto-cox",
        description="A built-in space name or a space document (JSON; no NUL bytes, "
        "finite numbers).",
    )
    dataset: Text = Field(
        min_length=1, max_length=4096, pattern=DATASET_URI_PATTERN, description=DATASET_URI_HELP
    )
    evaluator: EvaluatorField = Field(
        "screen",
        description="screen | train | pairs, or plugin:NAME: an evaluator an installed "
        "package registers in the entry-point group archsearch.evaluators (workers "
        "without it give the trials back).",
    )
    evaluator_options: EvaluatorOptions = Field(default_factory=EvaluatorOptions)
    algorithm: AlgorithmName = "tpe"
    algorithm_options: AlgorithmOptions = Field(default_factory=AlgorithmOptions)
    max_trials: int = Field(100, ge=1, le=1_000_000)
    max_parallel: int = Field(4, ge=1, le=4096, description="Depth of the suggestion queue.")
    top_k: int = Field(5, ge=0, le=100, description="Trials re-scored on the test split.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    schedule: ScheduleOptions | None = Field(
        None,
        description="Successive halving (ASHA) over a resource, e.g. "
        '{"kind": "asha", "resource": "train_per_class", "min": 50, "max": 800, "eta": 3}; '
        "max_trials then counts configurations (their first rung).",
    )
    blend_k: int = Field(
        0,
        ge=0,
        le=100,
        description="After the finals, blend the best blend_k models (sum of their "
        "normalised linear kernels, the study's readout on it); 0: no blend.",
    )
    blend_weights: BlendWeights = Field(
        "uniform",
        description="uniform, or validation: member weights chosen on the validation split.",
    )


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
    dataset_fingerprint: str | None = Field(
        None, description="Content hash of the data the first report was computed on."
    )
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
    error: str | None = Field(
        None, description="Why the coordinator paused this study on its own, if it did."
    )
    schedule: dict[str, Any] | None = Field(None, description="The ASHA schedule, if any.")
    blend_k: int = Field(0, description="Models blended after the finals (0: none).")
    blend_weights: str = "uniform"
    search_done: int = Field(
        0, description="Configurations (first-rung search trials) that have finished."
    )
    finals: int = Field(
        0, description="End-phase trials queued in all: test-split re-scores and blends."
    )
    finals_done: int = Field(0, description="End-phase trials that have finished.")

    def is_over(self) -> bool:
        """Nothing of this study will run any more."""
        return self.state == StudyState.FINISHED or (
            self.state == StudyState.STOPPED and self.finals_done >= self.finals
        )


class StudyList(BaseModel):
    studies: list[StudyOut]


# -- trials ---------------------------------------------------------------------------
class TrialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_id: int
    number: int
    state: TrialState
    source: TrialSource = Field(
        description="suggested | user | final (a test-split re-score) | blend (a kernel "
        "blend of the best models; params.members lists them)"
    )
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
    rung: int = Field(0, description="ASHA rung (0: the first, or no schedule).")
    rung_of_id: int | None = Field(
        None, description="For a promoted trial (rung > 0): the configuration's rung-0 trial."
    )
    gflops_per_image: float | None = Field(None, description="Model cost: GFLOP per image.")
    n_params: int | None = Field(None, description="Model cost: filter parameters.")
    n_features: int | None = Field(None, description="Model cost: output features.")

    @property
    def is_final(self) -> bool:
        """A trial of the study's end phase (a final re-score or a blend)."""
        return self.source.is_final()


class TrialPage(BaseModel):
    trials: list[TrialOut]
    next: str | None = Field(description="Cursor for the next page (pass as after=), or null.")


class BlendOut(TrialOut):
    """A blend trial (source ``blend``) with its members' trial numbers."""

    member_numbers: list[int] = Field(
        default_factory=list,
        description="The members' trial numbers, best first (params.members: their ids).",
    )


class BestOut(BaseModel):
    trials: list[TrialOut]
    blends: list[BlendOut] = Field(
        default_factory=list,
        description="The study's blends: COMPLETE ones by value (best first), then the "
        "others by number; value is the validation score, test_value the test score.",
    )


class BlendCreate(BaseModel):
    """A blend queued by hand for a finished or stopped study."""

    model_config = StrictModel
    k: int = Field(ge=1, le=100, description="Blend the best k COMPLETE search trials.")
    weights: BlendWeights = Field(
        "uniform",
        description="uniform, or validation: member weights chosen on the validation split.",
    )


class EnqueueTrial(BaseModel):
    """A user-given configuration: raw space values (``params``) or a named ``preset``."""

    model_config = StrictModel
    params: Document | None = Field(
        None, description="Raw space values (no NUL bytes, finite numbers)."
    )
    preset: Text | None = Field(None, max_length=100)

    @model_validator(mode="after")
    def _exactly_one(self) -> EnqueueTrial:
        if (self.params is None) == (self.preset is None):
            raise ValueError("exactly one of params and preset must be given")
        return self


# -- workers ---------------------------------------------------------------------------
class WorkerRegister(BaseModel):
    model_config = StrictModel
    name: Text = Field(min_length=1, max_length=MAX_NAME, description="No NUL bytes.")
    host: Text | None = Field(None, max_length=255)
    device: Text | None = Field(None, max_length=100)


class WorkerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    host: str | None
    device: str | None
    registered_at: UtcDatetime
    last_seen_at: UtcDatetime


class BriefOptions(EvaluatorOptions):
    """The options as a worker reads them from a claim: a key this worker does not know
    (a newer coordinator's option) is ignored, so coordinators can be upgraded first."""

    model_config = ConfigDict(extra="ignore")


class StudyBrief(BaseModel):
    """What a worker needs to evaluate a claimed trial. ``evaluator_options`` has every
    default filled in and ``color`` resolved by the coordinator."""

    id: int
    name: str
    dataset: str
    dataset_fingerprint: str | None
    evaluator: EvaluatorField
    evaluator_options: BriefOptions
    seed: int
    schedule: ScheduleOptions | None = Field(
        None, description="The study's ASHA schedule: a trial's resource is its rung's."
    )


class Lease(BaseModel):
    expires_at: UtcDatetime
    seconds: float


class ClaimOut(BaseModel):
    trial: TrialOut
    study: StudyBrief
    lease: Lease


class WorkerReport(BaseModel):
    model_config = StrictModel
    worker_id: int = Field(ge=1, le=MAX_ID)


class HeartbeatIn(WorkerReport):
    step: int | None = Field(None, ge=0, le=2**31 - 1)
    value: FiniteFloat | None = None


class HeartbeatOut(BaseModel):
    action: Literal["continue", "prune", "stop"]
    lease_expires_at: UtcDatetime


def _fingerprint_field() -> Any:
    return Field(
        None,
        min_length=1,
        max_length=FINGERPRINT_LENGTH,
        pattern=r"^[0-9a-f]+$",
        description="Content hash of the data the worker loaded; the study keeps the first "
        "one reported, and workers whose data differ refuse its trials.",
    )


def _metrics_field() -> Any:
    return Field(
        default_factory=dict,
        description="Free-form JSON object. Strings (keys too) must not contain NUL bytes "
        "and numbers must be finite: NaN and infinities anywhere inside are refused (422), "
        "not stored as null.",
    )


def _reason_field() -> Any:
    return Field(min_length=1, max_length=MAX_REASON, description="No NUL bytes.")


FailKind = Literal["infeasible", "error", "pruned"]


class _DataReport(WorkerReport):
    dataset_fingerprint: Text | None = _fingerprint_field()


class CompleteIn(_DataReport):
    value: FiniteFloat
    metrics: Document = _metrics_field()


class FailIn(_DataReport):
    kind: FailKind
    reason: Text = _reason_field()
    value: FiniteFloat | None = None


class ReleaseIn(WorkerReport):
    pass


# -- batches (protocol 3): one request for many trials of one worker --------------------
# The worker is the path's ``{worker_id}``; every trial of a batch is checked on its own.
TrialId = Annotated[int, Field(ge=1, le=MAX_ID)]
StudyIds = Annotated[list[TrialId] | None, Field(max_length=MAX_STUDY_FILTER)]


class ClaimsIn(BaseModel):
    """``POST /api/v1/workers/{worker_id}/claims``: claim up to ``max_trials`` trials."""

    model_config = StrictModel
    max_trials: int = Field(
        ge=1,
        le=MAX_BATCH,
        strict=True,
        description=f"How many trials to claim at most (1..{MAX_BATCH}); the worker's own "
        "RUNNING trials count first.",
    )
    study: StudyIds = Field(None, description="Claim only in these studies (null or empty: any).")
    exclude: StudyIds = Field(None, description="Never claim in these studies.")


class ClaimsOut(BaseModel):
    """The claimed trials, each with its own lease: first the trials this worker already
    held (a retried request gets them back, leases renewed), then new ones in queue order.
    Empty when nothing is waiting."""

    claims: list[ClaimOut]


class CompleteReport(BaseModel):
    """One item of a batch report: the trial's score (as ``CompleteIn``)."""

    model_config = StrictModel
    trial_id: TrialId
    kind: Literal["complete"]
    value: FiniteFloat
    metrics: Document = _metrics_field()
    dataset_fingerprint: Text | None = _fingerprint_field()


class FailReport(BaseModel):
    """One item of a batch report: the trial ended INFEASIBLE, FAILED (``error``) or
    PRUNED (as ``FailIn``)."""

    model_config = StrictModel
    trial_id: TrialId
    kind: FailKind
    reason: Text = _reason_field()
    value: FiniteFloat | None = None
    dataset_fingerprint: Text | None = _fingerprint_field()


ReportItem = Annotated[CompleteReport | FailReport, Field(discriminator="kind")]


class ReportsIn(BaseModel):
    """``POST /api/v1/workers/{worker_id}/reports``: results of several trials at once."""

    model_config = StrictModel
    reports: list[ReportItem] = Field(min_length=1, max_length=MAX_BATCH)


class ItemError(BaseModel):
    """Why one item of a batch was refused (the ``error`` of an error body)."""

    code: str
    message: str
    field: str | None = None


class ReportResult(BaseModel):
    """The answer to one report of a batch: ``status`` is what the single route would
    have answered (200 stored or a repeat of the stored result; 404 no such trial; 409
    lease lost or a contradicting result; 422 a score outside the evaluator's range)."""

    trial_id: int
    status: Literal[200, 404, 409, 422]
    trial: TrialOut | None = Field(None, description="The stored trial (status 200).")
    error: ItemError | None = Field(None, description="Why it was refused (status != 200).")


class ReportsOut(BaseModel):
    results: list[ReportResult] = Field(description="One per report, in the order sent.")


class TrialIdsIn(BaseModel):
    """A list of trials this worker holds (batch heartbeat and release)."""

    model_config = StrictModel
    trial_ids: list[TrialId] = Field(min_length=1, max_length=MAX_BATCH)


class ReleasesIn(TrialIdsIn):
    unstarted: bool = Field(
        False,
        description="The worker never began these trials (the rest of a batch it will "
        "not get to): they go back without using up an attempt.",
    )


class TrialBeat(BaseModel):
    trial_id: int
    action: Literal["continue", "prune", "stop"] = Field(
        description="A batch heartbeat answers continue or stop (prune needs a value: "
        "the single heartbeat)."
    )
    lease_expires_at: UtcDatetime


class HeartbeatsOut(BaseModel):
    trials: list[TrialBeat] = Field(description="The trials this worker holds, leases renewed.")
    lost: list[int] = Field(
        description="Trials of the request the worker does not hold (any more): finished, "
        "reaped, another worker's, or unknown. Stop working on them."
    )


class ReleasesOut(BaseModel):
    trials: list[TrialOut] = Field(
        description="The trials given back (WAITING, or FAILED when that was their last attempt)."
    )
    lost: list[int] = Field(description="Trials of the request the worker did not hold.")


# -- spaces ---------------------------------------------------------------------------
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


# -- the Pareto front (issue 14) -------------------------------------------------------------
class ParetoPoint(BaseModel):
    """One COMPLETE search configuration, at its highest COMPLETE rung."""

    id: int = Field(description="The trial's id (the configuration's highest COMPLETE rung).")
    number: int
    value: float = Field(description="Validation score (higher is better).")
    test_value: float | None = Field(description="Test-split score once a final ran.")
    gflops_per_image: float = Field(description="GFLOP per image (lower is better).")
    n_params: int | None
    n_features: int | None
    seconds_per_image: float | None = Field(
        description="Measured by the worker (metrics.seconds_per_image); null if not reported."
    )
    rung: int = Field(description="The rung the value was measured at (0 without a schedule).")
    arch_summary: str | None
    on_front: bool


class ParetoOut(BaseModel):
    """The Pareto set of validation score (maximised) against GFLOP per image (minimised)
    over the COMPLETE search configurations, each once at its highest COMPLETE rung (as
    ``GET /best`` ranks them). A point is on the front when no other point is at least as
    cheap and at least as good and strictly better in one; exact ties are all on it."""

    study_id: int
    scheduled: bool = Field(
        description="The study has an ASHA schedule: a point's value is from its rung, and "
        "lower rungs score on less data (fewer images per class or epochs)."
    )
    n_configurations: int = Field(description="COMPLETE configurations considered.")
    n_unknown_cost: int = Field(
        description="Configurations left out because their cost cannot be computed."
    )
    front: list[ParetoPoint] = Field(description="The Pareto set, by GFLOP per image.")
    dominated: list[ParetoPoint] = Field(
        description="The other configurations by GFLOP per image (only with "
        "include_dominated=true, else empty)."
    )
