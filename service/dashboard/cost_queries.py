"""A trial's cost and the study's Pareto front of score against cost.

Holds :func:`cost_of` (GFLOP, parameters and features per image: the trial's cost
columns, or for rows written before migration 0005, which left them null, the walk of
its architecture), :func:`seconds_per_image` (the worker's measurement in the metrics)
and :func:`pareto` (``GET /api/v1/studies/{id}/pareto``, the study page's accuracy
against GFLOPs chart and ``archsearch study best --pareto``).

The configurations are those of ``service.lifecycle.top_trials``: COMPLETE search
trials, each configuration once at its highest COMPLETE rung. The front itself is
``search_space.pareto.pareto_front``. Called by ``service.api.results`` and
``study_queries``; an unknown study raises :class:`~service.errors.NotFound`.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from protocol.wire import ParetoOut, ParetoPoint
from search_space.arch import Architecture, InfeasibleArchitecture, walk
from search_space.pareto import pareto_front

from .. import studies as studies_mod
from ..lifecycle import top_trials
from ..models import Trial
from .common import arch_summary

# The most configurations one answer considers (the best first, as top_trials orders
# them): bounds a request's work on a huge study.
MAX_CONFIGURATIONS = 20_000
Cost = tuple[float | None, int | None, int | None]


def cost_of(gflops: float | None, n_params: int | None, n_features: int | None, arch: Any) -> Cost:
    """``(GFLOP per image, filter parameters, output features)`` of a trial: its cost
    columns, or when they are null (a row from before migration 0005) the walk of
    ``arch`` at its own input size, as the coordinator computes them at insertion.
    ``(None, None, None)`` when neither is known (no architecture, an unreadable or
    unbuildable one, or a blend's list of members). Never raises."""
    if gflops is not None:
        return gflops, n_params, n_features
    if not isinstance(arch, dict):
        return None, None, None
    try:
        return _walked(json.dumps(arch, sort_keys=True))
    except (TypeError, ValueError):
        return None, None, None


@lru_cache(maxsize=4096)
def _walked(arch_json: str) -> Cost:
    try:
        report = walk(Architecture.from_dict(json.loads(arch_json)))
    except (InfeasibleArchitecture, ValueError, KeyError, TypeError):
        return None, None, None
    return report.gflops, report.n_params, report.n_features


def seconds_per_image(metrics: Any) -> float | None:
    """The worker's measured ``seconds_per_image`` (a finite number >= 0), else None."""
    if not isinstance(metrics, dict):
        return None
    value = metrics.get("seconds_per_image")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def pareto(session: Session, study_id: int, *, include_dominated: bool = False) -> ParetoOut:
    """The Pareto set of validation score (maximised) against GFLOP per image
    (minimised) over the study's COMPLETE configurations (see the module doc), each
    point with its cost, measured seconds per image, rung and architecture line; with
    ``include_dominated`` the other configurations too. Both lists by GFLOP per image.
    Configurations whose cost cannot be computed are counted in ``n_unknown_cost`` and
    left out. One query (at most :data:`MAX_CONFIGURATIONS` rows)."""
    study = studies_mod.get_study(session, study_id)
    rows = session.execute(
        top_trials(study_id, MAX_CONFIGURATIONS).with_only_columns(
            Trial.id,
            Trial.number,
            Trial.value,
            Trial.test_value,
            Trial.rung,
            Trial.gflops_per_image,
            Trial.n_params,
            Trial.n_features,
            Trial.metrics,
            Trial.arch,
        )
    ).all()
    points: list[ParetoPoint] = []
    unknown = 0
    for r in rows:
        if r.value is None:  # COMPLETE always carries one; be safe with old rows
            continue
        gflops, n_params, n_features = cost_of(r.gflops_per_image, r.n_params, r.n_features, r.arch)
        if gflops is None or not math.isfinite(gflops):
            unknown += 1
            continue
        points.append(
            ParetoPoint(
                id=r.id,
                number=r.number,
                value=r.value,
                test_value=r.test_value,
                gflops_per_image=gflops,
                n_params=n_params,
                n_features=n_features,
                seconds_per_image=seconds_per_image(r.metrics),
                rung=r.rung,
                arch_summary=arch_summary(r.arch),
                on_front=False,
            )
        )
    on_front = set(pareto_front([(p.gflops_per_image, p.value) for p in points]))
    for i in on_front:
        points[i].on_front = True

    def by_cost(p: ParetoPoint) -> tuple[float, float, int]:
        return (p.gflops_per_image, -p.value, p.number)

    return ParetoOut(
        study_id=study_id,
        scheduled=study.schedule is not None,
        n_configurations=len(points) + unknown,
        n_unknown_cost=unknown,
        front=sorted((p for p in points if p.on_front), key=by_cost),
        dominated=sorted((p for p in points if not p.on_front), key=by_cost)
        if include_dominated
        else [],
    )
