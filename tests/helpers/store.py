"""Rows for the trial-store and lifecycle suites: studies with queued trials, workers, and
leases moved into the past (what waiting out a lease would do, minus the wait)."""

from __future__ import annotations

from sqlalchemy import update

from service.models import Study, StudyState, Trial, TrialState, Worker
from service.trial_store import NewTrial, TrialStore


def add_study(
    store: TrialStore, n: int, *, state: StudyState = StudyState.RUNNING, top_k: int = 0
) -> int:
    """A study of ``n`` queued trials (``max_trials = max_parallel = n``)."""
    with store.transaction() as s:
        study = Study(
            name="t",
            state=state,
            space={},
            dataset="builtin:digits",
            evaluator="screen",
            evaluator_options={},
            algorithm="random",
            algorithm_options={},
            max_trials=n,
            max_parallel=n,
            top_k=top_k,
            seed=0,
        )
        s.add(study)
        s.flush()
        store.add_trials(
            s, study.id, [NewTrial(params={"i": i}, config_hash=f"h{i}") for i in range(n)]
        )
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
