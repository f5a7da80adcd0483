"""The results-dashboard queries about studies and trials: one function per chart or table.

Holds :func:`overview` (the studies page), :func:`summary` (the study page's tables),
:func:`history` (the best-so-far and score-by-trial charts), :func:`parallel` (the
parallel-coordinates chart) and :func:`trial_detail` (the trial page). Each takes a
session (and the study's id), runs a few bounded read-only queries, and returns a response
model of ``service.dashboard.schemas``.

Called by the JSON routes (``service.api.results``) and the HTML pages
(``service.dashboard.routes``) alike, so a page always shows what its JSON endpoint
answers. Unknown studies or trials raise :class:`~service.errors.NotFound` (404), naming
the field. Search and final trials: see ``common``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.wire import TrialOut
from search_space import Space

from .. import studies as studies_mod
from ..errors import NotFound
from ..lifecycle import IS_FIRST_RUNG, top_trials
from ..models import Trial, TrialSource, TrialState, Worker
from ..views import trial_out
from .blends import blend_row, blend_rows
from .columns import complete_columns
from .common import (
    FAILURES,
    FINISHED,
    IS_FINAL,
    IS_SEARCH,
    arch_summary,
    option_text,
    seconds_between,
    space_of,
)
from .cost_queries import cost_of, seconds_per_image
from .schemas import (
    FailureRow,
    History,
    HistoryPoint,
    LeaderRow,
    Overview,
    Parallel,
    ParallelAxis,
    ReasonCount,
    StudyRow,
    StudySummary,
    Timing,
    TrialDetail,
)


# -- the studies overview -------------------------------------------------------------
def _done_and_best(
    session: Session, study_ids: Sequence[int]
) -> tuple[dict[int, int], dict[int, float], dict[int, int]]:
    """``(ended first-rung search trials, best COMPLETE value, distinct busy workers)``
    per study. With a schedule, max_trials counts configurations (their first rung), so
    the progress does too."""
    done = dict(
        session.execute(
            select(Trial.study_id, func.count())
            .where(
                Trial.study_id.in_(study_ids),
                IS_SEARCH,
                IS_FIRST_RUNG,
                Trial.state.in_(FINISHED),
            )
            .group_by(Trial.study_id)
        ).all()
    )
    best = dict(
        session.execute(
            select(Trial.study_id, func.max(Trial.value))
            .where(Trial.study_id.in_(study_ids), IS_SEARCH, Trial.state == TrialState.COMPLETE)
            .group_by(Trial.study_id)
        ).all()
    )
    busy = dict(
        session.execute(
            select(Trial.study_id, func.count(func.distinct(Trial.worker_id)))
            .where(Trial.study_id.in_(study_ids), Trial.state == TrialState.RUNNING)
            .group_by(Trial.study_id)
        ).all()
    )
    return done, best, busy


def overview(session: Session) -> Overview:
    """Every study: state, progress (ended search trials / max_trials), best score,
    creation time and how many workers run one of its trials now. Four queries."""
    rows = studies_mod.list_studies(session)
    done, best, busy = _done_and_best(session, [s.id for s in rows])
    return Overview(
        studies=[
            StudyRow(
                id=s.id,
                name=s.name,
                state=s.state,
                done=done.get(s.id, 0),
                max_trials=s.max_trials,
                best_value=best.get(s.id),
                created_at=s.created_at,
                workers_busy=busy.get(s.id, 0),
            )
            for s in rows
        ]
    )


# -- one study --------------------------------------------------------------------------
def summary(
    session: Session,
    study_id: int,
    *,
    leaders: int = 10,
    failures: int = 50,
    reasons: int = 10,
) -> StudySummary:
    """Progress, counts by state, the ``leaders`` best COMPLETE search trials (with
    architecture line and test score), the ``failures`` most recent FAILED/INFEASIBLE
    search trials with their reasons and the ``reasons`` most common (state, reason)
    pairs. Each leader carries its rung and cost (GFLOP and parameters per image, the
    worker's seconds per image); the study's blend trials come with their members.
    Bounded work whatever the study's size (grouped counts and LIMIT queries)."""
    study = studies_mod.get_study(session, study_id)
    counts = {s.value: 0 for s in TrialState}
    finals = {s.value: 0 for s in TrialState}
    for is_final, state, n in session.execute(
        select(IS_FINAL, Trial.state, func.count())
        .where(Trial.study_id == study_id)
        .group_by(IS_FINAL, Trial.state)
    ):
        (finals if is_final else counts)[TrialState(state).value] += n
    done, best, busy = _done_and_best(session, [study_id])
    top = session.scalars(top_trials(study_id, leaders)).all()
    recent = session.execute(
        select(Trial.number, Trial.state, Trial.reason, Trial.finished_at)
        .where(Trial.study_id == study_id, IS_SEARCH, Trial.state.in_(FAILURES))
        .order_by(Trial.number.desc())
        .limit(failures)
    ).all()
    common = session.execute(
        select(Trial.state, Trial.reason, func.count().label("n"))
        .where(Trial.study_id == study_id, IS_SEARCH, Trial.state.in_(FAILURES))
        .group_by(Trial.state, Trial.reason)
        .order_by(func.count().desc(), Trial.state)
        .limit(reasons)
    ).all()
    return StudySummary(
        id=study.id,
        name=study.name,
        state=study.state,
        space_name=study.space_name,
        dataset=study.dataset,
        evaluator=study.evaluator,
        algorithm=study.algorithm,
        max_trials=study.max_trials,
        max_parallel=study.max_parallel,
        top_k=study.top_k,
        created_at=study.created_at,
        done=done.get(study_id, 0),
        counts=counts,
        finals=finals,
        best_value=best.get(study_id),
        workers_busy=busy.get(study_id, 0),
        schedule=study.schedule,
        leaderboard=[_leader(r) for r in top],
        blends=blend_rows(session, study_id),
        failures_total=counts["FAILED"] + counts["INFEASIBLE"],
        failures=[
            FailureRow(number=r.number, state=r.state, reason=r.reason, finished_at=r.finished_at)
            for r in recent
        ],
        reasons=[ReasonCount(state=r.state, reason=r.reason, count=r.n) for r in common],
    )


def _leader(r: Trial) -> LeaderRow:
    gflops, n_params, _ = cost_of(r.gflops_per_image, r.n_params, r.n_features, r.arch)
    return LeaderRow(
        number=r.number,
        value=r.value,
        test_value=r.test_value,
        arch_summary=arch_summary(r.arch),
        worker_id=r.worker_id,
        rung=r.rung,
        gflops_per_image=gflops,
        n_params=n_params,
        seconds_per_image=seconds_per_image(r.metrics),
    )


def history(session: Session, study_id: int) -> History:
    """Every search trial in number order with its score and the best COMPLETE score up
    to it (``best_so_far``, non-decreasing; null before the first COMPLETE trial).

    The points are built without re-validation (the values come typed from the
    database): 10,000 trials cost one indexed query and a loop."""
    studies_mod.get_study(session, study_id)
    rows = session.execute(
        select(Trial.number, Trial.state, Trial.value)
        .where(Trial.study_id == study_id, IS_SEARCH)
        .order_by(Trial.number)
    ).all()
    best: float | None = None
    points = []
    point = HistoryPoint.model_construct
    for number, state, value in rows:
        if state == TrialState.COMPLETE and value is not None and (best is None or value > best):
            best = value
        points.append(point(number=number, state=state, value=value, best_so_far=best))
    return History.model_construct(study_id=study_id, points=points)


def parallel(session: Session, study_id: int, labels: Sequence[str] | None = None) -> Parallel:
    """The parameters and score of every COMPLETE search trial, one axis per label that
    varies (choice axes carry their options' text; the value is the option index).

    ``labels`` keeps only those axes, in that order (unknown or constant ones are
    skipped): what a chart that shows a few axes asks for."""
    study = studies_mod.get_study(session, study_id)
    cols = complete_columns(session, study)
    chosen = (
        cols.labels
        if labels is None
        else [label for label in dict.fromkeys(labels) if label in cols.columns]
    )
    axis = ParallelAxis.model_construct
    return Parallel.model_construct(
        study_id=study_id,
        numbers=cols.numbers,
        values=cols.values,
        axes=[
            axis(label=label, options=cols.options[label], values=cols.columns[label])
            for label in chosen
        ],
    )


# -- one trial --------------------------------------------------------------------------
def trial_detail(session: Session, study_id: int, number: int) -> TrialDetail:
    """A trial with its study's name, its worker's name, queue/run durations, the link
    between a search trial and its final test-split re-score, and for a blend its
    members."""
    study = studies_mod.get_study(session, study_id)
    trial = session.scalars(
        select(Trial).where(Trial.study_id == study_id, Trial.number == number)
    ).first()
    if trial is None:
        raise NotFound(f"study {study_id} has no trial number {number}", field="number")
    worker = session.get(Worker, trial.worker_id) if trial.worker_id is not None else None
    final_of = (
        session.scalar(select(Trial.number).where(Trial.id == trial.final_of_id))
        if trial.final_of_id is not None
        else None
    )
    rescored_by = session.scalar(
        select(Trial.number).where(Trial.final_of_id == trial.id).order_by(Trial.number)
    )
    out: TrialOut = trial_out(trial)
    return TrialDetail(
        trial=out,
        study_name=study.name,
        params_shown=_params_shown(space_of(study), out.params),
        worker_name=worker.name if worker else None,
        timing=Timing(
            queued_seconds=seconds_between(trial.started_at, trial.created_at),
            run_seconds=seconds_between(trial.finished_at, trial.started_at),
        ),
        final_of_number=final_of,
        rescored_by_number=rescored_by,
        blend=blend_row(session, trial) if trial.source == TrialSource.BLEND else None,
    )


def _params_shown(space: Space | None, params: dict[str, Any]) -> dict[str, str]:
    """For each choice label of ``params``: the option its raw index picks, as text."""
    shown = {}
    for label, raw in params.items():
        info = space.params.get(label) if space else None
        if (
            info is not None
            and info.options
            and isinstance(raw, int)
            and not isinstance(raw, bool)
            and 0 <= raw < len(info.options)
        ):
            shown[label] = option_text(info.options[raw])
    return shown
