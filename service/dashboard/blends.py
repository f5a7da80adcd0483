"""A study's blend trials as the dashboard shows them: the blend's scores and its members.

A blend trial (source ``blend``) stores ``params = {"members": [trial ids, best first],
"weights": "uniform" | "validation"}`` and, once it ran, its validation score as
``value``, its test score as ``test_value`` (also in ``metrics.test_value``) and the
members' weights in ``metrics.weights``. Holds :func:`blend_rows` (the study page's
leaderboard) and :func:`blend_row` (one blend, the trial page). Called by
``study_queries``; reads only, never raises for a malformed stored row (its fields are
shown as unknown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import Trial, TrialSource
from .common import arch_summary
from .schemas import BlendMember, BlendRow

IS_BLEND = Trial.source == TrialSource.BLEND.value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def member_ids(params: Any) -> list[int]:
    """The member trial ids of a blend's ``params`` (an empty list when unreadable)."""
    members = params.get("members") if isinstance(params, dict) else None
    if not isinstance(members, list):
        return []
    return [m for m in members if isinstance(m, int) and not isinstance(m, bool)]


def blend_rows(session: Session, study_id: int, limit: int = 20) -> list[BlendRow]:
    """The ``limit`` newest blend trials of the study with their members. Two queries."""
    blends = session.scalars(
        select(Trial)
        .where(Trial.study_id == study_id, IS_BLEND)
        .order_by(Trial.number.desc())
        .limit(limit)
    ).all()
    return _rows(session, study_id, blends)


def blend_row(session: Session, trial: Trial) -> BlendRow:
    """``trial`` (a blend) with its members. One query."""
    return _rows(session, trial.study_id, [trial])[0]


def _rows(session: Session, study_id: int, blends: Sequence[Trial]) -> list[BlendRow]:
    wanted = {i for b in blends for i in member_ids(b.params)}
    columns = (Trial.id, Trial.number, Trial.value, Trial.test_value, Trial.arch)
    found = (
        session.execute(
            select(*columns).where(Trial.study_id == study_id, Trial.id.in_(wanted))
        ).all()
        if wanted
        else []
    )
    members = {t.id: t for t in found}
    out = []
    for b in blends:
        metrics = b.metrics if isinstance(b.metrics, dict) else {}
        weights = metrics.get("weights")
        weights = weights if isinstance(weights, list) else []
        ids = member_ids(b.params)
        rows = []
        for i, tid in enumerate(ids):
            m = members.get(tid)
            rows.append(
                BlendMember(
                    id=tid,
                    number=m.number if m else None,
                    value=m.value if m else None,
                    test_value=m.test_value if m else None,
                    arch_summary=arch_summary(m.arch) if m else None,
                    weight=_finite(weights[i]) if i < len(weights) else None,
                )
            )
        kind = b.params.get("weights") if isinstance(b.params, dict) else None
        out.append(
            BlendRow(
                number=b.number,
                state=b.state,
                value=b.value,
                test_value=b.test_value
                if b.test_value is not None
                else _finite(metrics.get("test_value")),
                weights=kind if isinstance(kind, str) else None,
                members=rows,
                reason=b.reason,
            )
        )
    return out
