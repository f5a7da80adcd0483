"""The results-dashboard queries: one function per chart or table, read-only.

Each function takes a session (and the study or its id), runs a few bounded queries, and
returns a response model of ``service.dashboard.schemas``. The JSON routes
(``service.api.results``) and the HTML pages (``service.dashboard.routes``) call the same
functions, so a page always shows what its JSON endpoint answers.

Conventions: "search trials" are the trials a suggester proposed or a user queued;
final test-split re-scores (``source = "final"``) are counted apart and never plotted as
search history. Scores are maximised. Unknown studies or trials raise
:class:`~service.errors.NotFound` (404), naming the field.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from search_space import Architecture, ParamInfo, Space

from .. import studies as studies_mod
from ..api.views import trial_out
from ..db import db_now_plus
from ..errors import NotFound
from ..models import Study, Trial, TrialState, Worker
from ..schemas import TrialOut
from .schemas import (
    CurrentTrial,
    FailureRow,
    History,
    HistoryPoint,
    Importance,
    LeaderRow,
    Overview,
    Parallel,
    ParallelAxis,
    ParamImportance,
    ReasonCount,
    StudyRow,
    StudySummary,
    Timing,
    TrialDetail,
    WorkersStatus,
    WorkerStatus,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED, TrialState.INFEASIBLE)
FAILURES = (TrialState.FAILED, TrialState.INFEASIBLE)
IS_SEARCH = Trial.source != "final"
IS_FINAL = Trial.source == "final"

# Random-forest importance: fit on at most this many trials (a fixed-seed subsample), so
# that a 10,000-trial study refits in well under a second.
IMPORTANCE_MIN_TRIALS = 5
IMPORTANCE_MAX_FIT = 2000
IMPORTANCE_TREES = 64
IMPORTANCE_METHOD = (
    f"random forest ({IMPORTANCE_TREES} trees; 3 samples per leaf from 50 trials on) on raw "
    "parameter values, impurity-based importance"
)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (SQLite hands back naive UTC datetimes)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    a, b = as_utc(later), as_utc(earlier)
    return None if a is None or b is None else (a - b).total_seconds()


def arch_summary(arch: dict[str, Any] | None) -> str | None:
    """The one-line architecture summary (as ``TrialOut.arch_summary``), or ``None``."""
    if arch is None:
        return None
    try:
        return Architecture.from_dict(arch).summary()
    except (ValueError, KeyError, TypeError):
        return None


# -- the studies overview -------------------------------------------------------------
def _done_and_best(
    session: Session, study_ids: Sequence[int]
) -> tuple[dict[int, int], dict[int, float], dict[int, int]]:
    """``(ended search trials, best COMPLETE value, distinct busy workers)`` per study."""
    done = dict(
        session.execute(
            select(Trial.study_id, func.count())
            .where(Trial.study_id.in_(study_ids), IS_SEARCH, Trial.state.in_(FINISHED))
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
    pairs. Bounded work whatever the study's size (grouped counts and LIMIT queries)."""
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
    top = session.execute(
        select(Trial.number, Trial.value, Trial.test_value, Trial.arch, Trial.worker_id)
        .where(Trial.study_id == study_id, IS_SEARCH, Trial.state == TrialState.COMPLETE)
        .order_by(Trial.value.desc(), Trial.number)
        .limit(leaders)
    ).all()
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
        leaderboard=[
            LeaderRow(
                number=r.number,
                value=r.value,
                test_value=r.test_value,
                arch_summary=arch_summary(r.arch),
                worker_id=r.worker_id,
            )
            for r in top
        ],
        failures_total=counts["FAILED"] + counts["INFEASIBLE"],
        failures=[
            FailureRow(number=r.number, state=r.state, reason=r.reason, finished_at=r.finished_at)
            for r in recent
        ],
        reasons=[ReasonCount(state=r.state, reason=r.reason, count=r.n) for r in common],
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


CacheKey = tuple[str, int, int]


def _key(session: Session, study_id: int, n_complete: int) -> CacheKey:
    """``(database URL, study id, COMPLETE count)``: apps on other databases in the same
    process (tests, benchmarks) never see each other's entries."""
    url = session.get_bind().url.render_as_string(hide_password=True)
    return (url, study_id, n_complete)


class ResultCache:
    """Results keyed by ``(database, study id, number of COMPLETE search trials)``, the
    least recently used dropped beyond ``size``. A COMPLETE trial never changes, so the
    count identifies the data a result was computed from. Thread-safe; ``compute_lock``
    serialises the (CPU-bound) computations so that a burst of requests computes once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[CacheKey, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.compute_lock = threading.Lock()

    def get(self, key: CacheKey) -> Any | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            return hit

    def put(self, key: CacheKey, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


@dataclass(frozen=True)
class Columns:
    """The COMPLETE search trials column by column (what parallel and importance use).

    ``columns[label]`` holds one float (or ``None`` where the label is inactive) per
    trial, for the labels in ``labels`` only: those that take more than one value."""

    numbers: list[int]
    values: list[float]
    labels: list[str]
    columns: dict[str, list[float | None]]
    options: dict[str, list[str] | None]


COLUMNS_CACHE = ResultCache(size=8)
IMPORTANCE_CACHE = ResultCache(size=64)


def _n_complete(session: Session, study_id: int) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                Trial.study_id == study_id,
                IS_SEARCH,
                Trial.state == TrialState.COMPLETE,
                Trial.value.is_not(None),
            )
        )
        or 0
    )


def complete_columns(session: Session, study: Study, cache: ResultCache | None = None) -> Columns:
    """The :class:`Columns` of ``study``, cached per number of COMPLETE trials."""
    cache = cache or COLUMNS_CACHE
    key = _key(session, study.id, _n_complete(session, study.id))
    if (hit := cache.get(key)) is not None:
        return hit
    with cache.compute_lock:
        if (hit := cache.get(key)) is not None:
            return hit
        result = _columns(session, study)
        # Trials may have completed between the count and the read: key by what was read.
        cache.put(_key(session, study.id, len(result.numbers)), result)
        return result


def _columns(session: Session, study: Study) -> Columns:
    rows = session.execute(
        select(Trial.number, Trial.value, Trial.params)
        .where(
            Trial.study_id == study.id,
            IS_SEARCH,
            Trial.state == TrialState.COMPLETE,
            Trial.value.is_not(None),
        )
        .order_by(Trial.number)
    ).all()
    n = len(rows)
    raw: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        for label, value in (row.params or {}).items():
            column = raw.get(label)
            if column is None:
                column = raw[label] = [None] * n
            column[i] = value
    space = _space_of(study)
    varying = {label for label, column in raw.items() if _varies(column)}
    labels = [label for label in (space.labels if space else ()) if label in varying]
    labels += sorted(varying - set(labels))
    options: dict[str, list[str] | None] = {}
    for label in labels:
        info = space.params.get(label) if space else None
        options[label] = [_option_text(o) for o in info.options] if info and info.options else None
    return Columns(
        numbers=[r.number for r in rows],
        values=[r.value for r in rows],
        labels=labels,
        columns={label: _numeric(raw[label]) for label in labels},
        options=options,
    )


def _varies(column: list[Any]) -> bool:
    try:
        return len(set(column)) > 1
    except TypeError:  # lists or dicts as values (a custom space): compare their text
        return len({repr(v) for v in column}) > 1


def _option_text(option: Any) -> str:
    if isinstance(option, ParamInfo):
        return f"<{option.label}>"
    if isinstance(option, dict) and isinstance(option.get("layers"), list):
        return f"{len(option['layers'])} layers"
    if isinstance(option, bool):
        return str(option).lower()
    if isinstance(option, float):
        return f"{option:g}"
    return str(option)


def _space_of(study: Study) -> Space | None:
    try:
        return studies_mod.study_space(study)
    except ValueError:  # a stored document this version cannot compile: plot raw values
        return None


def _numeric(values: list[Any]) -> list[float | None]:
    """Raw values as finite floats (bool -> 0/1; other types -> their rank among the
    distinct values, by text); ``None`` (and a non-finite number) -> ``None``."""
    others = sorted({repr(v) for v in values if v is not None and not isinstance(v, int | float)})
    rank = {text: i for i, text in enumerate(others)}
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, int | float):  # bool is an int
            f = float(v)
            out.append(f if math.isfinite(f) else None)
        else:
            out.append(float(rank[repr(v)]))
    return out


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


def importance(session: Session, study_id: int, cache: ResultCache | None = None) -> Importance:
    """Random-forest importance of each varying parameter label for the score.

    Cached per (study, number of COMPLETE search trials): the page refreshes cost one
    count query until another trial completes. See :class:`~.schemas.Importance`.
    """
    cache = cache or IMPORTANCE_CACHE
    study = studies_mod.get_study(session, study_id)
    key = _key(session, study_id, _n_complete(session, study_id))
    if (hit := cache.get(key)) is not None:
        return hit
    with cache.compute_lock:
        if (hit := cache.get(key)) is not None:
            return hit
        result = _fit_importance(study_id, complete_columns(session, study))
        cache.put(_key(session, study_id, result.n_complete), result)
        return result


def _fit_importance(study_id: int, cols: Columns) -> Importance:
    n_complete = len(cols.numbers)

    def answer(n_fit: int, items: list[ParamImportance], note: str | None) -> Importance:
        return Importance(
            study_id=study_id,
            n_complete=n_complete,
            n_fit=n_fit,
            method=IMPORTANCE_METHOD,
            importances=items,
            note=note,
        )

    if n_complete < IMPORTANCE_MIN_TRIALS:
        return answer(
            0, [], f"needs at least {IMPORTANCE_MIN_TRIALS} COMPLETE trials; {n_complete} so far"
        )
    pick = np.arange(n_complete)
    if n_complete > IMPORTANCE_MAX_FIT:
        pick = np.sort(
            np.random.default_rng(0).choice(n_complete, IMPORTANCE_MAX_FIT, replace=False)
        )
    y = np.asarray(cols.values, dtype=float)[pick]
    if not cols.labels or float(np.ptp(y)) == 0.0:
        why = "no parameter varies" if not cols.labels else "every score is the same"
        return answer(len(pick), [], f"nothing to explain: {why}")
    x = np.empty((len(pick), len(cols.labels)))
    for j, label in enumerate(cols.labels):
        column = np.array(cols.columns[label], dtype=float)[pick]  # None -> nan
        present = column[~np.isnan(column)]
        inactive = float(present.min()) - 1.0 if present.size else -1.0
        x[:, j] = np.where(np.isnan(column), inactive, column)

    from sklearn.ensemble import RandomForestRegressor  # import cost paid on first use

    forest = RandomForestRegressor(
        n_estimators=IMPORTANCE_TREES,
        random_state=0,
        n_jobs=1,
        min_samples_leaf=3 if len(pick) >= 50 else 1,
    )
    forest.fit(x, y)
    weights = forest.feature_importances_
    total = float(weights.sum())
    if not math.isfinite(total) or total <= 0:
        return answer(len(pick), [], "the forest found no split that explains the scores")
    items = sorted(
        (
            ParamImportance(label=label, importance=float(w) / total)
            for label, w in zip(cols.labels, weights, strict=True)
        ),
        key=lambda item: (-item.importance, item.label),
    )
    return answer(len(pick), items, None)


# -- one trial --------------------------------------------------------------------------
def trial_detail(session: Session, study_id: int, number: int) -> TrialDetail:
    """A trial with its study's name, its worker's name, queue/run durations, and the
    link between a search trial and its final test-split re-score."""
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
        params_shown=_params_shown(_space_of(study), out.params),
        worker_name=worker.name if worker else None,
        timing=Timing(
            queued_seconds=_seconds(trial.started_at, trial.created_at),
            run_seconds=_seconds(trial.finished_at, trial.started_at),
        ),
        final_of_number=final_of,
        rescored_by_number=rescored_by,
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
            shown[label] = _option_text(info.options[raw])
    return shown


# -- workers ------------------------------------------------------------------------------
def workers_status(session: Session, lease_seconds: float) -> WorkersStatus:
    """Every registered worker: alive (seen within 2 x ``lease_seconds`` by the database
    clock), its RUNNING trial if any, and how many trials it ended. Three queries."""
    db_now = as_utc(session.scalar(select(db_now_plus(0))))
    assert db_now is not None
    window = 2.0 * lease_seconds
    running: dict[int, CurrentTrial] = {}
    for r in session.execute(
        select(Trial.id, Trial.study_id, Trial.number, Trial.worker_id, Trial.started_at)
        .where(Trial.state == TrialState.RUNNING, Trial.worker_id.is_not(None))
        .order_by(Trial.started_at)
    ):
        running.setdefault(
            r.worker_id,
            CurrentTrial(
                trial_id=r.id, study_id=r.study_id, number=r.number, started_at=r.started_at
            ),
        )
    done = dict(
        session.execute(
            select(Trial.worker_id, func.count())
            .where(Trial.worker_id.is_not(None), Trial.state.in_(FINISHED))
            .group_by(Trial.worker_id)
        ).all()
    )
    out = []
    for w in session.scalars(select(Worker).order_by(Worker.id)):
        since = _seconds(db_now, w.last_seen_at) or 0.0
        out.append(
            WorkerStatus(
                id=w.id,
                name=w.name,
                host=w.host,
                device=w.device,
                alive=since <= window,
                registered_at=w.registered_at,
                last_seen_at=w.last_seen_at,
                seconds_since_seen=max(since, 0.0),
                current=running.get(w.id),
                trials_done=done.get(w.id, 0),
            )
        )
    return WorkersStatus(db_now=db_now, alive_within_seconds=window, workers=out)
