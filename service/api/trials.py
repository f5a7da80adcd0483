"""Worker reports on a claimed trial: /api/v1/trials/{id}/heartbeat|complete|fail|release.

All need the worker role and the lease: a worker that lost its trial gets 409. The
``worker_id`` of the body must be a worker registered with the caller's token, else 403
(field ``worker_id``); values must lie in the evaluator's score range
(``trial_store.SCORE_RANGES``, 422 field ``value``).
"""

from __future__ import annotations

import statistics
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from protocol.options import PLUGIN_PREFIX
from protocol.wire import (
    FINGERPRINT_LENGTH,
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    ReleaseIn,
    TrialOut,
)

from ..deps import (
    QueueDep,
    StoreDep,
    TrialId,
    WorkerRole,
)
from ..errors import ErrorBody
from ..models import StudyState, Trial, TrialState
from ..trial_store import Beat, TrialRow
from ..views import trial_out

router = APIRouter(
    prefix="/api/v1/trials",
    tags=["trials"],
    responses={
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "Lease lost or contradicting report"},
        422: {"model": ErrorBody},
    },
)

PRUNE_MIN_PEERS = 5  # median stopping needs this many finished peers at the same step
PRUNE_PEERS_SCANNED = 500


def runs_on(state: StudyState, final: bool) -> bool:
    """Whether a running trial of a study in ``state`` goes on: a stopped study's search
    trials stop (its finals still run); a paused study's running trials finish."""
    allowed = state.claims_finals() if final else state.claims_search()
    return allowed or state == StudyState.PAUSED


def prunable(evaluator: str) -> bool:
    """Whether the median stopping rule applies to a study of ``evaluator``: ``train``
    (validation accuracy after each epoch) and ``plugin:NAME`` (a plugin's reports are its
    own curve, docs/design.md section 4.1). Not ``screen``, whose one report (step 0) is
    the score itself, already computed: pruning it would only throw it away; nor
    ``pairs``, whose search reports the View 1 score once the same way (its fold means
    come from finals, which are never pruned)."""
    return evaluator == "train" or evaluator.startswith(PLUGIN_PREFIX)


def _action(
    sessions: sessionmaker[Session], beat: Beat, step: int | None, value: float | None
) -> str:
    trial = beat.trial
    if not runs_on(beat.study_state, trial.is_final):
        return "stop"
    # A final (test) evaluation is never cut short, and only a study whose intermediate
    # values are a learning curve is compared step by step (see prunable). A study with
    # an ASHA schedule is not: its rungs are its early stopping, and its peers ran other
    # budgets (docs/design.md section 5.1).
    if step is None or value is None or trial.is_final or not prunable(beat.study.evaluator):
        return "continue"
    if beat.study.schedule is not None:
        return "continue"
    # Median stopping rule: prune when below the median of finished peers at this step
    # (the only case that reads more than the heartbeat's own transaction did).
    with sessions() as session:
        return _median_rule(session, trial.id, trial.study_id, step, value)


def _median_rule(session: Session, trial_id: int, study_id: int, step: int, value: float) -> str:
    peers = session.scalars(
        select(Trial.intermediate)
        .where(
            Trial.study_id == study_id,
            Trial.state.in_(TrialState.scored()),
            Trial.id != trial_id,
        )
        .order_by(Trial.id.desc())
        .limit(PRUNE_PEERS_SCANNED)
    )
    at_step = [v for inter in peers for s, v in inter if s == step and v is not None]
    if len(at_step) >= PRUNE_MIN_PEERS and value < statistics.median(at_step):
        return "prune"
    return "continue"


@router.post("/{trial_id}/heartbeat", response_model=HeartbeatOut)
def heartbeat(
    trial_id: TrialId,
    body: HeartbeatIn,
    request: Request,
    caller: WorkerRole,
    store: StoreDep,
) -> HeartbeatOut:
    """Extend the lease (and record an intermediate value). The answer says whether to
    ``continue``, ``prune`` (below the median of finished trials at this step) or
    ``stop`` (the study was stopped)."""
    beat = store.beat(trial_id, body.worker_id, body.step, body.value, caller=caller)
    action = _action(request.app.state.sessions, beat, body.step, body.value)
    return HeartbeatOut(
        action=action,  # type: ignore[arg-type]  # one of continue / prune / stop
        lease_expires_at=beat.trial.lease_expires_at,  # type: ignore[arg-type]  # RUNNING
    )


def _after_report(
    request: Request,
    queue: QueueDep,
    trial: TrialRow,
    first: bool,
    kind: str,
    background: BackgroundTasks,
) -> None:
    # The study already moved on inside the report's transaction (service.lifecycle);
    # what is left is bookkeeping and topping up the queue once the answer is sent.
    if first:
        request.app.state.metrics.reports.labels(kind=kind).inc()
        background.add_task(queue.refill_quietly, trial.study_id)


def legacy_fingerprint(field: str | None, metrics: dict[str, Any]) -> str | None:
    """The report's dataset fingerprint: its own field, else (workers before protocol 2
    sent it inside ``metrics``) the one in the metrics."""
    if field is not None:
        return field
    legacy = metrics.get("dataset_fingerprint")
    return legacy[:FINGERPRINT_LENGTH] if isinstance(legacy, str) and legacy else None


def _fingerprint(body: CompleteIn | FailIn) -> str | None:
    if isinstance(body, CompleteIn):
        return legacy_fingerprint(body.dataset_fingerprint, body.metrics)
    return body.dataset_fingerprint


@router.post("/{trial_id}/complete", response_model=TrialOut)
def complete(
    trial_id: TrialId,
    body: CompleteIn,
    request: Request,
    caller: WorkerRole,
    store: StoreDep,
    queue: QueueDep,
    background: BackgroundTasks,
) -> TrialOut:
    """Report the score. Sending the same report again answers the same (idempotent);
    a different second result is refused with 409."""
    trial, first = store.complete(
        trial_id, body.worker_id, body.value, body.metrics, _fingerprint(body), caller=caller
    )
    _after_report(request, queue, trial, first, "complete", background)
    return trial_out(trial)


@router.post("/{trial_id}/fail", response_model=TrialOut)
def fail(
    trial_id: TrialId,
    body: FailIn,
    request: Request,
    caller: WorkerRole,
    store: StoreDep,
    queue: QueueDep,
    background: BackgroundTasks,
) -> TrialOut:
    """End the trial INFEASIBLE (cannot be built: counts as the worst score), FAILED
    (``error``: left out of the history) or PRUNED. Idempotent like complete."""
    trial, first = store.fail(
        trial_id,
        body.worker_id,
        body.kind,
        body.reason,
        body.value,
        _fingerprint(body),
        caller=caller,
    )
    _after_report(request, queue, trial, first, body.kind, background)
    return trial_out(trial)


@router.post("/{trial_id}/release", response_model=TrialOut)
def release(trial_id: TrialId, body: ReleaseIn, caller: WorkerRole, store: StoreDep) -> TrialOut:
    """Give the trial back at once (worker shutting down); another worker may claim it."""
    return trial_out(store.release(trial_id, body.worker_id, caller=caller))
