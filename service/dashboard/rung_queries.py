"""The rung view of a study with an ASHA schedule: per rung, how many configurations
reached it and what they scored there.

Holds :func:`rungs` (``GET /api/v1/studies/{id}/rungs`` and the study page's rung chart).
A configuration "reached" rung ``k`` when it has a search trial at rung ``k`` in any
state (a promotion still WAITING counts: the decision was made); its score there is that
trial's value once COMPLETE. Called by ``service.api.results``; an unknown study raises
:class:`~service.errors.NotFound`.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.options import ScheduleOptions

from .. import studies as studies_mod
from ..models import Trial, TrialState
from .common import IS_SEARCH
from .schemas import Rungs, RungScores


def rungs(session: Session, study_id: int) -> Rungs:
    """Every rung of the study's schedule, lowest first, with its resource, how many
    configurations reached it, how many of those are COMPLETE there and their scores
    (trial numbers and values in number order). Without a schedule (or one this version
    cannot read) the list is empty and ``note`` says why. Two queries."""
    study = studies_mod.get_study(session, study_id)
    if study.schedule is None:
        return Rungs(study_id=study_id, resource=None, note="the study has no schedule", rungs=[])
    try:
        schedule = ScheduleOptions.model_validate(study.schedule)
        resources = schedule.resources()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return Rungs(study_id=study_id, resource=None, note=f"unreadable schedule: {exc}", rungs=[])
    reached = dict(
        session.execute(
            select(Trial.rung, func.count())
            .where(Trial.study_id == study_id, IS_SEARCH)
            .group_by(Trial.rung)
        ).all()
    )
    scored = session.execute(
        select(Trial.rung, Trial.number, Trial.value)
        .where(
            Trial.study_id == study_id,
            IS_SEARCH,
            Trial.state == TrialState.COMPLETE,
            Trial.value.is_not(None),
        )
        .order_by(Trial.rung, Trial.number)
    ).all()
    out = [
        RungScores(
            rung=k, resource=resource, reached=reached.get(k, 0), complete=0, numbers=[], values=[]
        )
        for k, resource in enumerate(resources)
    ]
    for rung, number, value in scored:
        if 0 <= rung < len(out):  # a rung past the schedule's (edited by hand): not shown
            out[rung].numbers.append(number)
            out[rung].values.append(value)
    for r in out:
        r.complete = len(r.numbers)
    return Rungs(study_id=study_id, resource=schedule.resource, note=None, rungs=out)
