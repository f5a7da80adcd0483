"""The results-dashboard queries as JSON: /api/v1/studies/{id}/history|parallel|pareto|
rungs|... and /api/v1/workers/status.

Each route is the data of one dashboard chart or table, computed by
``service.dashboard.study_queries``, ``.importance``, ``.cost_queries``, ``.rung_queries``
or ``.worker_queries`` (the pages use the same functions). Reader role; with
``open_reads`` no token is needed, and a browser may send the ``archsearch_token``
cookie instead of the header.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from protocol.wire import ParetoOut

from ..dashboard import cost_queries, rung_queries, study_queries, worker_queries
from ..dashboard import importance as importance_queries
from ..dashboard.schemas import (
    History,
    Importance,
    Parallel,
    Rungs,
    StudySummary,
    WorkersStatus,
)
from ..deps import Reader, SessionDep, StudyId
from ..errors import ErrorBody

ERRORS = {401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 422: {"model": ErrorBody}}
NOT_FOUND = {404: {"model": ErrorBody, "description": "No such study"}}
router = APIRouter(prefix="/api/v1", tags=["results"], responses=ERRORS)


def _json(model: BaseModel) -> Response:
    """``model`` serialised once (pydantic-core), skipping FastAPI's re-validation of the
    return value: the large answers (10,000 history points) stay cheap. The declared
    ``response_model`` still documents the body."""
    return Response(model.model_dump_json(), media_type="application/json")


@router.get("/studies/{study_id}/history", response_model=History, responses=NOT_FOUND)
def history(study_id: StudyId, _: Reader, session: SessionDep) -> Response:
    """Every search trial in number order: state, score and the best score so far
    (the best-so-far curve and the score-by-trial chart)."""
    return _json(study_queries.history(session, study_id))


@router.get("/studies/{study_id}/importance", response_model=Importance, responses=NOT_FOUND)
def importance(study_id: StudyId, _: Reader, session: SessionDep) -> Response:
    """Random-forest parameter importance for the score over the COMPLETE trials (cached
    per number of COMPLETE trials)."""
    return _json(importance_queries.importance(session, study_id))


@router.get("/studies/{study_id}/parallel", response_model=Parallel, responses=NOT_FOUND)
def parallel(
    study_id: StudyId,
    _: Reader,
    session: SessionDep,
    labels: Annotated[
        list[str] | None,
        Query(
            max_length=200,
            description="Only these parameter labels (repeat the parameter), "
            "in this order; unknown or constant labels are skipped.",
        ),
    ] = None,
) -> Response:
    """Parameters and score of every COMPLETE search trial, column by column (the
    parallel-coordinates chart; it asks for its few most important labels)."""
    return _json(study_queries.parallel(session, study_id, labels))


@router.get("/studies/{study_id}/pareto", response_model=ParetoOut, responses=NOT_FOUND)
def pareto(
    study_id: StudyId,
    _: Reader,
    session: SessionDep,
    include_dominated: Annotated[
        bool, Query(description="Also list the configurations off the front (the chart).")
    ] = False,
) -> Response:
    """The Pareto set of validation score (higher is better) against GFLOP per image
    (lower is better) over the COMPLETE search configurations, each at its highest
    COMPLETE rung (with a schedule, lower rungs score on less data), by GFLOP per image:
    trial number and id, scores, cost (GFLOPs, parameters, features, measured seconds
    per image), rung and architecture line."""
    return _json(cost_queries.pareto(session, study_id, include_dominated=include_dominated))


@router.get("/studies/{study_id}/rungs", response_model=Rungs, responses=NOT_FOUND)
def rungs(study_id: StudyId, _: Reader, session: SessionDep) -> Response:
    """Per rung of the study's ASHA schedule: its resource, how many configurations
    reached it and their scores there (empty without a schedule)."""
    return _json(rung_queries.rungs(session, study_id))


@router.get("/studies/{study_id}/summary", response_model=StudySummary, responses=NOT_FOUND)
def summary(study_id: StudyId, _: Reader, session: SessionDep) -> StudySummary:
    """Progress, counts by state, leaderboard (architecture line, test score) and
    failures with their reasons (the study page's tables)."""
    return study_queries.summary(session, study_id)


@router.get("/workers/status", response_model=WorkersStatus)
def workers_status(request: Request, _: Reader, session: SessionDep) -> WorkersStatus:
    """Every worker: alive (seen within 2 x the lease, database clock), device, the trial
    it runs now, last heartbeat and trials done."""
    return worker_queries.workers_status(session, request.app.state.settings.lease_seconds)
