"""The results-dashboard query about workers: :func:`workers_status` (the workers page).

Read-only, three queries whatever the number of workers; liveness is judged by the
database clock, so the coordinator's and the workers' clocks need not agree.

Called by ``service.api.results`` (``GET /api/v1/workers/status``) and by
``service.dashboard.routes`` (the ``/workers`` page).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import db_now_plus
from ..models import Trial, TrialState, Worker
from .common import FINISHED, as_utc, seconds_between
from .schemas import CurrentTrial, WorkersStatus, WorkerStatus


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
        since = seconds_between(db_now, w.last_seen_at) or 0.0
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
