"""Worker registration and claims: /api/v1/workers...

A worker belongs to the token that registered it (``workers.token_id``; the bootstrap
admin token registers workers with no token row): only that token may claim, heartbeat or
report for it, any other gets 403 naming ``worker_id`` (see :mod:`service.auth`).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import Response
from sqlalchemy import select

from protocol.wire import ClaimOut, Lease, StudyBrief, WorkerOut, WorkerRegister

from ..deps import (
    IdList,
    QueueDep,
    Reader,
    SessionDep,
    StoreDep,
    WorkerId,
    WorkerRole,
)
from ..errors import ErrorBody
from ..models import Study, Worker
from ..studies import evaluator_options
from ..views import trial_out

router = APIRouter(
    prefix="/api/v1/workers",
    tags=["workers"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)


@router.post("", response_model=WorkerOut, status_code=201)
def register(body: WorkerRegister, caller: WorkerRole, store: StoreDep) -> WorkerOut:
    """Register a worker daemon; use the returned ``id`` in claims and reports, with the
    same token (a worker is bound to the token that registered it)."""
    with store.transaction() as s:
        worker = Worker(
            name=body.name, host=body.host, device=body.device, token_id=caller.token_id
        )
        s.add(worker)
        s.flush()
        s.refresh(worker)
        return WorkerOut.model_validate(worker)


@router.get("", response_model=list[WorkerOut])
def list_workers(_: Reader, session: SessionDep) -> list[WorkerOut]:
    rows = session.scalars(select(Worker).order_by(Worker.id))
    return [WorkerOut.model_validate(w) for w in rows]


@router.post(
    "/{worker_id}/claim",
    response_model=ClaimOut,
    responses={
        204: {"description": "No WAITING trial in any running study"},
        404: {"model": ErrorBody},
    },
)
def claim(
    worker_id: WorkerId,
    request: Request,
    caller: WorkerRole,
    store: StoreDep,
    queue: QueueDep,
    session: SessionDep,
    background: BackgroundTasks,
    study: IdList = None,
    exclude: IdList = None,
) -> ClaimOut | Response:
    """Claim the next trial (or get back the one this worker already runs). The worker must
    have been registered with the caller's token (else 403)."""
    started = time.perf_counter()
    trial = store.claim(worker_id, study, exclude, caller=caller)
    metrics = request.app.state.metrics
    metrics.claim_latency.observe(time.perf_counter() - started)
    metrics.claims.labels(result="trial" if trial else "empty").inc()
    if trial is None:
        return Response(status_code=204)
    background.add_task(queue.refill_quietly, trial.study_id)
    st = session.get(Study, trial.study_id)
    assert st is not None  # trials cascade with their study
    return ClaimOut(
        trial=trial_out(trial),
        study=StudyBrief(
            id=st.id,
            name=st.name,
            dataset=st.dataset,
            dataset_fingerprint=st.dataset_fingerprint,
            evaluator=st.evaluator,
            evaluator_options=evaluator_options(st).model_dump(),
            seed=st.seed,
        ),
        lease=Lease(expires_at=trial.lease_expires_at, seconds=store.lease_seconds),
    )
