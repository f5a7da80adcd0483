"""Worker registration, claims and the batch routes: /api/v1/workers...

A worker belongs to the token that registered it (``workers.token_id``; the bootstrap
admin token registers workers with no token row): only that token may claim, heartbeat or
report for it, any other gets 403 naming ``worker_id`` (see :mod:`service.auth`).

Batch routes (docs/design.md section 6): ``claims``, ``reports``, ``heartbeat`` and
``releases`` act on up to ``MAX_BATCH`` trials of the path's worker, each in one
transaction of the trial store. A refused item of a batch report is answered in its own
result (404 / 409 / 422); the request as a whole fails only for the worker (unknown 404,
another token's 403, revoked 401) or a malformed body (422 naming the field).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import Response
from sqlalchemy import select

from protocol.wire import (
    ClaimOut,
    ClaimsIn,
    ClaimsOut,
    CompleteReport,
    FailReport,
    HeartbeatsOut,
    ItemError,
    ReleasesIn,
    ReleasesOut,
    ReportResult,
    ReportsIn,
    ReportsOut,
    TrialBeat,
    TrialIdsIn,
    WorkerOut,
    WorkerRegister,
)

from ..auth import Caller
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
from ..models import Worker
from ..suggestion_queue import SuggestionQueue
from ..trial_store import Report, TrialStore
from ..views import claim_outs, trial_out
from .trials import legacy_fingerprint, runs_on

router = APIRouter(
    prefix="/api/v1/workers",
    tags=["workers"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)


def json_response(
    body: ClaimOut | ClaimsOut | ReportsOut | HeartbeatsOut | ReleasesOut,
) -> Response:
    """The body serialised once by pydantic. Returning the model itself would make
    FastAPI dump it to a dict, validate that against the response model again and encode
    it a third time: measurable on a batch of 64 trials with their architectures. The
    route's ``response_model`` still documents the body."""
    return Response(body.model_dump_json(), media_type="application/json")


def refill_after(
    background: BackgroundTasks, queue: SuggestionQueue, study_ids: Iterable[int]
) -> None:
    """Top up the queues of these studies once the answer is sent, once per study."""
    for study_id in sorted(set(study_ids)):
        background.add_task(queue.refill_quietly, study_id)


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


def _claim(
    request: Request,
    store: TrialStore,
    worker_id: int,
    max_trials: int,
    study: list[int] | None,
    exclude: list[int] | None,
    caller: Caller,
) -> list[ClaimOut]:
    started = time.perf_counter()
    claimed = store.claim_many(worker_id, max_trials, study, exclude, caller=caller)
    metrics = request.app.state.metrics
    metrics.claim_latency.observe(time.perf_counter() - started)
    if claimed.trials:
        metrics.claims.labels(result="trial").inc(len(claimed.trials))
    else:
        metrics.claims.labels(result="empty").inc()
    return claim_outs(claimed.trials, claimed.studies, store.lease_seconds)


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
    background: BackgroundTasks,
    study: IdList = None,
    exclude: IdList = None,
) -> Response:
    """Claim the next trial (or get back the one this worker already runs). The worker must
    have been registered with the caller's token (else 403)."""
    claims = _claim(request, store, worker_id, 1, study, exclude, caller)
    if not claims:
        return Response(status_code=204)
    refill_after(background, queue, [claims[0].study.id])
    return json_response(claims[0])


@router.post(
    "/{worker_id}/claims",
    response_model=ClaimsOut,
    responses={404: {"model": ErrorBody, "description": "Unknown worker"}},
)
def claims(
    worker_id: WorkerId,
    body: ClaimsIn,
    request: Request,
    caller: WorkerRole,
    store: StoreDep,
    queue: QueueDep,
    background: BackgroundTasks,
) -> Response:
    """Claim up to ``max_trials`` trials at once, each with its own lease: first those
    this worker already holds (a retry after a lost answer gets them back, leases
    renewed), then WAITING ones in queue order. ``{"claims": []}`` when nothing waits."""
    got = _claim(request, store, worker_id, body.max_trials, body.study, body.exclude, caller)
    refill_after(background, queue, (c.study.id for c in got))
    return json_response(ClaimsOut(claims=got))


def _report(item: CompleteReport | FailReport) -> Report:
    if isinstance(item, CompleteReport):
        fingerprint = legacy_fingerprint(item.dataset_fingerprint, item.metrics)
        return Report(item.trial_id, "complete", item.value, item.metrics, None, fingerprint)
    return Report(item.trial_id, item.kind, item.value, {}, item.reason, item.dataset_fingerprint)


@router.post(
    "/{worker_id}/reports",
    response_model=ReportsOut,
    responses={404: {"model": ErrorBody, "description": "Unknown worker"}},
)
def reports(
    worker_id: WorkerId,
    body: ReportsIn,
    request: Request,
    caller: WorkerRole,
    store: StoreDep,
    queue: QueueDep,
    background: BackgroundTasks,
) -> Response:
    """Report several results in one request (one transaction). Each item is judged as
    the single complete / fail route would judge it, and answered with that status: a
    lost lease or a contradicting result (409), an unknown trial (404) or a score outside
    the evaluator's range (422) refuses that item only; repeats answer the stored trial."""
    outcomes = store.report_many(worker_id, [_report(r) for r in body.reports], caller=caller)
    results = []
    counted = request.app.state.metrics.reports
    for item, outcome in zip(body.reports, outcomes, strict=True):
        if outcome.error is not None:
            err = outcome.error
            results.append(
                ReportResult(
                    trial_id=outcome.trial_id,
                    status=err.status_code,  # type: ignore[arg-type]  # 404 | 409 | 422
                    error=ItemError(code=err.code, message=err.message, field=err.field),
                )
            )
            continue
        assert outcome.trial is not None
        if outcome.first:
            counted.labels(kind=item.kind).inc()
        results.append(
            ReportResult(trial_id=outcome.trial_id, status=200, trial=trial_out(outcome.trial))
        )
    refill_after(background, queue, (o.trial.study_id for o in outcomes if o.first and o.trial))
    return json_response(ReportsOut(results=results))


@router.post(
    "/{worker_id}/heartbeat",
    response_model=HeartbeatsOut,
    responses={404: {"model": ErrorBody, "description": "Unknown worker"}},
)
def heartbeat(
    worker_id: WorkerId, body: TrialIdsIn, caller: WorkerRole, store: StoreDep
) -> Response:
    """Extend the leases of the trials this worker holds, in one statement. Each held
    trial is answered ``continue``, or ``stop`` when its study no longer runs it; trials
    it does not hold are listed in ``lost`` (stop working on them). Intermediate values
    (and so ``prune``) go through ``POST /trials/{id}/heartbeat``."""
    held, lost = store.heartbeat_many(worker_id, body.trial_ids, caller=caller)
    beats = [
        TrialBeat(
            trial_id=b.trial_id,
            action="continue" if runs_on(b.study_state, b.is_final) else "stop",
            lease_expires_at=b.lease_expires_at,  # type: ignore[arg-type]
        )
        for b in held
    ]
    return json_response(HeartbeatsOut(trials=beats, lost=lost))


@router.post(
    "/{worker_id}/releases",
    response_model=ReleasesOut,
    responses={404: {"model": ErrorBody, "description": "Unknown worker"}},
)
def releases(
    worker_id: WorkerId,
    body: ReleasesIn,
    caller: WorkerRole,
    store: StoreDep,
    queue: QueueDep,
    background: BackgroundTasks,
) -> Response:
    """Give back trials this worker holds (shutting down, study stopped, a batch it will
    not get to): WAITING again at once for another worker. A release uses up an attempt
    (FAILED after the last), unless ``unstarted`` says the worker never began them."""
    released, lost = store.release_many(
        worker_id, body.trial_ids, unstarted=body.unstarted, caller=caller
    )
    refill_after(background, queue, (t.study_id for t in released if t.state.is_finished()))
    return json_response(ReleasesOut(trials=[trial_out(t) for t in released], lost=lost))
