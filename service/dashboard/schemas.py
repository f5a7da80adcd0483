"""Response models of the results-dashboard queries (``/api/v1/studies/{id}/history`` ...).

Every chart of the dashboard is drawn from one of these; the OpenAPI document lists them
with the routes in ``service.api.results``. Scores are the study's search score
(validation split, higher is better); ``test_value`` is the final test-split re-score.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from protocol.wire import TrialOut, UtcDatetime

from ..models import StudyState, TrialState


class HistoryPoint(BaseModel):
    number: int = Field(description="Trial number within the study (1, 2, ...).")
    state: TrialState
    value: float | None = Field(description="The trial's score; null when it has none.")
    best_so_far: float | None = Field(
        description="Highest COMPLETE score among trials numbered <= this one (null before "
        "the first COMPLETE trial). Non-decreasing in ``number``."
    )


class History(BaseModel):
    """Every search trial in number order (final test-split re-scores are left out)."""

    study_id: int
    points: list[HistoryPoint]


class ParamImportance(BaseModel):
    label: str
    importance: float = Field(ge=0, description="Share of the forest's impurity decrease.")


class Importance(BaseModel):
    """Random-forest importance of each parameter label for the score.

    A regression forest is fit on the COMPLETE search trials (raw parameter values, choice
    indices as ordinals, an inactive conditional label as a value below its range). Only
    labels that take more than one value (active or not) among them are listed; the
    importances then sum to 1. With fewer than ``min_trials`` COMPLETE trials, or scores
    that are all equal, the list is empty and ``note`` says why.
    """

    study_id: int
    n_complete: int = Field(
        description="COMPLETE search configurations the forest saw (each once, at its "
        "highest COMPLETE rung)."
    )
    n_fit: int = Field(description="Trials used in the fit (a fixed subsample when many).")
    method: str
    importances: list[ParamImportance] = Field(description="Highest first.")
    note: str | None = None


class ParallelAxis(BaseModel):
    label: str
    options: list[str] | None = Field(
        description="For a choice: the option shown for each index (the value is the index)."
    )
    values: list[float | None] = Field(
        description="One per trial, aligned with ``Parallel.numbers``; null where the label "
        "is inactive (another branch of a conditional choice was taken)."
    )


class Parallel(BaseModel):
    """Parameters and score of every COMPLETE search trial, column by column."""

    study_id: int
    numbers: list[int]
    values: list[float] = Field(description="The score of each trial, aligned with numbers.")
    axes: list[ParallelAxis] = Field(
        description="Labels that take more than one value among these trials, in the "
        "space's document order."
    )


class LeaderRow(BaseModel):
    number: int
    value: float
    test_value: float | None = Field(description="Test-split score once the final ran.")
    arch_summary: str | None
    worker_id: int | None
    rung: int = Field(0, description="The rung of the value (0 without a schedule).")
    gflops_per_image: float | None = Field(None, description="GFLOP per image.")
    n_params: int | None = None
    seconds_per_image: float | None = Field(
        None, description="Measured by the worker (metrics.seconds_per_image)."
    )


class BlendMember(BaseModel):
    """One member of a blend: a COMPLETE search trial."""

    id: int
    number: int | None = Field(description="Null when the member trial is gone.")
    value: float | None
    test_value: float | None
    arch_summary: str | None
    weight: float | None = Field(
        description="Its weight in the blend as the worker reported it (metrics.weights); "
        "null before the blend ran."
    )


class BlendRow(BaseModel):
    """A blend trial (source "blend"): the best models' kernels combined."""

    number: int
    state: TrialState
    value: float | None = Field(description="The blend's validation score.")
    test_value: float | None = Field(description="The blend's test-split score.")
    weights: str | None = Field(description="uniform or validation (how members are weighted).")
    members: list[BlendMember] = Field(description="Best first, as queued.")
    reason: str | None


class RungScores(BaseModel):
    rung: int
    resource: int = Field(description="What one trial at this rung spends (the schedule's).")
    reached: int = Field(description="Configurations with a trial at this rung (any state).")
    complete: int = Field(description="Of these, COMPLETE at this rung.")
    numbers: list[int] = Field(description="The COMPLETE trials at this rung, by number.")
    values: list[float] = Field(description="Their scores, aligned with numbers.")


class Rungs(BaseModel):
    """The rung view: per rung of the study's ASHA schedule, how many configurations
    reached it and their scores there. Lower rungs score on less data (fewer training
    images per class, or epochs): compare scores within a rung."""

    study_id: int
    resource: str | None = Field(description="train_per_class or epochs; null: no schedule.")
    note: str | None = None
    rungs: list[RungScores] = Field(description="Lowest first; empty without a schedule.")


class FailureRow(BaseModel):
    number: int
    state: TrialState
    reason: str | None
    finished_at: UtcDatetime | None


class ReasonCount(BaseModel):
    state: TrialState
    reason: str | None
    count: int


class StudySummary(BaseModel):
    """The study page's tables: progress, counts by state, leaderboard, failures."""

    id: int
    name: str
    state: StudyState
    space_name: str | None
    dataset: str
    evaluator: str
    algorithm: str
    max_trials: int
    max_parallel: int
    top_k: int
    created_at: UtcDatetime
    done: int = Field(
        description="Search trials that ended (any final state); with a schedule, only "
        "first-rung ones (max_trials counts configurations)."
    )
    counts: dict[str, int] = Field(
        description="Search trials by state (every state listed; promotions included)."
    )
    finals: dict[str, int] = Field(
        description="The end phase by state: final test-split re-scores and blends."
    )
    best_value: float | None
    workers_busy: int = Field(description="Distinct workers running one of its trials now.")
    schedule: dict[str, Any] | None = Field(description="The ASHA schedule, if any.")
    leaderboard: list[LeaderRow] = Field(
        description="Best COMPLETE search configurations, best first (top_trials: highest "
        "rung first)."
    )
    blends: list[BlendRow] = Field(description="The study's blend trials, newest first.")
    failures_total: int = Field(description="FAILED + INFEASIBLE search trials.")
    failures: list[FailureRow] = Field(description="The most recent of them, newest first.")
    reasons: list[ReasonCount] = Field(description="The most common (state, reason) pairs.")


class StudyRow(BaseModel):
    """One line of the studies overview."""

    id: int
    name: str
    state: StudyState
    done: int
    max_trials: int
    best_value: float | None
    created_at: UtcDatetime
    workers_busy: int


class Overview(BaseModel):
    studies: list[StudyRow]


class CurrentTrial(BaseModel):
    trial_id: int
    study_id: int
    number: int
    started_at: UtcDatetime | None


class WorkerStatus(BaseModel):
    id: int
    name: str
    host: str | None
    device: str | None
    alive: bool = Field(description="Seen within ``alive_within_seconds`` (database clock).")
    registered_at: UtcDatetime
    last_seen_at: UtcDatetime
    seconds_since_seen: float
    current: CurrentTrial | None = Field(description="A RUNNING trial held by this worker.")
    trials_done: int = Field(description="Trials it ended (COMPLETE, PRUNED, FAILED, INFEASIBLE).")


class WorkersStatus(BaseModel):
    db_now: UtcDatetime = Field(description="The database clock when this was read.")
    alive_within_seconds: float = Field(description="2 x the lease length.")
    workers: list[WorkerStatus]


class Timing(BaseModel):
    queued_seconds: float | None = Field(description="started_at - created_at")
    run_seconds: float | None = Field(description="finished_at - started_at")


class TrialDetail(BaseModel):
    """The trial page: the trial, its worker's name and its final re-score, if any."""

    trial: TrialOut
    study_name: str
    params_shown: dict[str, str] = Field(
        description="For each choice parameter: the option it picks (its raw value is the "
        "option's index)."
    )
    worker_name: str | None
    timing: Timing
    final_of_number: int | None = Field(description="For a final trial: the trial it re-scores.")
    rescored_by_number: int | None = Field(description="The final trial re-scoring this one.")
    blend: BlendRow | None = Field(None, description="For a blend trial: its members.")
