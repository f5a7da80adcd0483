"""A study's life after its search: final (test split) evaluation of the top-k, then done.

A RUNNING study whose ``max_trials`` search trials have all ended queues a final
evaluation of its ``top_k`` best COMPLETE trials (``source="final"``, run before anything
else); when those have ended too, the study is FINISHED. A study stopped by the user gets
its final evaluations queued at once, and workers may still claim those (and only those).
The test split is touched by final trials only; their score lands in the search trial's
``test_value``, never in the history the suggester sees.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .models import Study, StudyState, Trial, TrialState
from .trial_store import NewTrial, TrialStore

PENDING = (TrialState.WAITING, TrialState.RUNNING)


def queue_final_evaluations(store: TrialStore, session: Session, study: Study) -> int:
    """Queue final evaluations of the top-k COMPLETE search trials not yet queued.

    Runs in the caller's transaction. Returns the number queued.
    """
    if study.top_k <= 0:
        return 0
    top = list(
        session.scalars(
            select(Trial)
            .where(
                Trial.study_id == study.id,
                Trial.state == TrialState.COMPLETE,
                Trial.source != "final",
            )
            .order_by(Trial.value.desc(), Trial.number)
            .limit(study.top_k)
        )
    )
    new = [
        NewTrial(
            params=t.params,
            arch=t.arch,
            config_hash=hashlib.sha256(f"final:{t.config_hash}".encode()).hexdigest(),
            seed=t.seed,
            source="final",
            priority=0,
            final_of_id=t.id,
        )
        for t in top
    ]
    return len(store.add_trials(session, study.id, new))


def advance_study(store: TrialStore, session: Session, study_id: int) -> StudyState | None:
    """Move a RUNNING study on when its search is over: queue finals, or finish it.

    Called after every final report and after infeasible trials were added, in the
    caller's transaction. Returns the study's state afterwards (None: no such study).
    """
    study = session.get(Study, study_id)
    if study is None or study.state != StudyState.RUNNING:
        return study.state if study is not None else None
    is_final = Trial.source == "final"
    # Most reports leave work pending: an index seek answers that without counting rows.
    pending = session.scalar(
        select(Trial.id)
        .where(Trial.study_id == study_id, Trial.state.in_(PENDING), ~is_final)
        .limit(1)
    )
    if pending is not None:
        return study.state
    search_total, search_pending, finals, finals_pending = session.execute(
        select(
            func.count().filter(~is_final),
            func.count().filter(~is_final, Trial.state.in_(PENDING)),
            func.count().filter(is_final),
            func.count().filter(is_final, Trial.state.in_(PENDING)),
        ).where(Trial.study_id == study_id)
    ).one()
    if search_total < study.max_trials or search_pending:
        return study.state
    if finals == 0 and queue_final_evaluations(store, session, study) > 0:
        return study.state
    if finals_pending:
        return study.state
    session.execute(update(Study).where(Study.id == study_id).values(state=StudyState.FINISHED))
    return StudyState.FINISHED
