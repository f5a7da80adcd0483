"""Rows for the trial-store and lifecycle suites: studies with queued trials, workers, and
leases moved into the past (what waiting out a lease would do, minus the wait)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from service.models import Study, StudyState, Trial, TrialSource, TrialState, Worker
from service.trial_store import NewTrial, TrialStore


def add_study(
    store: TrialStore,
    n: int,
    *,
    state: StudyState = StudyState.RUNNING,
    top_k: int = 0,
    trials: list[NewTrial] | None = None,
    **columns: Any,
) -> int:
    """A study of ``n`` queued trials (``max_trials = max_parallel = n``): ``trials``, or
    ``NewTrial(params={"i": i}, config_hash=f"h{i}")`` for each ``i``; ``columns``: other
    :class:`Study` columns, or these ones replaced (``name``, ``evaluator``, ``schedule``)."""
    with store.transaction() as s:
        study = Study(
            **{
                "name": "t",
                "state": state,
                "space": {},
                "dataset": "builtin:digits",
                "evaluator": "screen",
                "evaluator_options": {},
                "algorithm": "random",
                "algorithm_options": {},
                "max_trials": n,
                "max_parallel": n,
                "top_k": top_k,
                "seed": 0,
                **columns,
            }
        )
        s.add(study)
        s.flush()
        if trials is None:
            trials = [NewTrial(params={"i": i}, config_hash=f"h{i}") for i in range(n)]
        store.add_trials(s, study.id, trials)
        return study.id


def add_worker(store: TrialStore, name: str = "w") -> int:
    with store.transaction() as s:
        w = Worker(name=name)
        s.add(w)
        s.flush()
        return w.id


def expire_leases(store: TrialStore) -> None:
    with store.transaction() as s:
        s.execute(
            update(Trial)
            .where(Trial.state == TrialState.RUNNING)
            .values(lease_expires_at=Trial.created_at)
        )


def study_state(store: TrialStore, study_id: int) -> StudyState:
    with store.sessions() as s:
        return s.scalar(select(Study.state).where(Study.id == study_id))


def study_trials(
    store: TrialStore, study_id: int, source: TrialSource | None = None
) -> list[Trial]:
    """A study's trials (of ``source`` when given), by number."""
    with store.sessions() as s:
        q = select(Trial).where(Trial.study_id == study_id).order_by(Trial.number)
        if source is not None:
            q = q.where(Trial.source == source.value)
        return list(s.scalars(q))
