"""Asynchronous successive halving (ASHA; Li et al., MLSys 2020): promotions between rungs.

A study with a ``schedule`` (:class:`protocol.options.ScheduleOptions`) evaluates each new
configuration at rung 0 (the smallest resource). A configuration is promoted to rung
``k + 1`` as soon as it is in the top ``1/eta`` of the COMPLETE results that rung ``k``
has so far: with ``n`` results there, the best ``n // eta`` (by value, ties by lower trial
number) are promoted. Nobody waits for stragglers: a late good result at rung ``k`` is
promoted when it arrives, even if worse ones were promoted before it (ASHA's rule).

A promotion is a new WAITING trial of its own: the configuration's parameters, its
architecture and seed, ``rung = k + 1``, ``rung_of_id`` the configuration's rung-0 trial,
and priority 0 (ahead of new suggestions). Its ``config_hash`` is derived from the
promoted trial's, so the unique (study_id, config_hash) constraint makes each promotion
happen exactly once, whatever the number of coordinators and concurrent reports; and it
is made in the transaction that stores the report (:func:`service.lifecycle.advance`
calls :func:`promote`), so a coordinator restart cannot lose or repeat one.

Only :mod:`service.lifecycle` calls :func:`promote` (with the study row locked; see
there). The rules, and how rungs enter TPE's history: docs/design.md section 5.1.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from protocol.options import ScheduleOptions

from .models import Study, Trial, TrialSource, TrialState

if TYPE_CHECKING:
    from .trial_store import TrialStore

__all__ = ["promote", "promoted_hash"]

_SEARCH_SOURCES = [s.value for s in TrialSource.search()]
_SEARCH = Trial.source.in_(_SEARCH_SOURCES)


def promoted_hash(config_hash: str) -> str:
    """The ``config_hash`` of the promotion of a trial whose hash is ``config_hash``."""
    return hashlib.sha256(f"promote:{config_hash}".encode()).hexdigest()


def promote(store: TrialStore, session: Session, study: Study) -> int:
    """Queue every promotion the study's rungs call for and has not made yet, in the
    caller's transaction. Returns how many were queued.

    Only :func:`service.lifecycle.advance` calls it, with the study row locked (FOR
    UPDATE): every transaction that adds trials to a study holds that lock (the
    suggestion queue's refills and user enqueues take it too), so two reports racing on
    PostgreSQL are serialised and the second sees the first's promotions; the unique
    (study_id, config_hash) is the backstop. Raises ``pydantic.ValidationError`` /
    ``ValueError`` only for a stored schedule this version cannot read (the API
    validated it at creation).
    """
    from .trial_store import NewTrial  # the store imports the lifecycle, which imports us

    schedule = ScheduleOptions.model_validate(study.schedule)
    top_rung = len(schedule.resources()) - 1
    sizes = dict(
        session.execute(
            select(Trial.rung, func.count())
            .where(
                Trial.study_id == study.id,
                Trial.state == TrialState.COMPLETE,
                _SEARCH,
                Trial.rung < top_rung,
            )
            .group_by(Trial.rung)
        ).all()
    )
    new: list[NewTrial] = []
    for rung, n in sorted(sizes.items()):
        quota = n // schedule.eta
        if quota == 0:
            continue
        new.extend(
            NewTrial(
                params=t.params,
                arch=t.arch,
                config_hash=promoted_hash(t.config_hash),
                seed=t.seed,
                source=TrialSource(t.source),
                priority=0,
                rung=rung + 1,
                rung_of_id=t.rung_of_id or t.id,
                gflops_per_image=t.gflops_per_image,
                n_params=t.n_params,
                n_features=t.n_features,
            )
            for t in session.scalars(_due(study.id, rung, quota))
        )
    # add_trials skips a configuration already queued (the backstop of the NOT EXISTS).
    return len(store.add_trials(session, study.id, new))


def _due(study_id: int, rung: int, quota: int):  # -> Select[tuple[Trial]]
    """The trials of the best ``quota`` COMPLETE search results at ``rung`` (by value,
    ties by lower number) whose configuration has no trial at ``rung + 1`` yet, in that
    order. Only those rows are loaded: on a long study nearly every report finds the
    top of each rung already promoted, and loading it again would make each report cost
    as much as the rung is long."""
    ranked = aliased(Trial)  # its own FROM: not correlated with the outer query
    best = (
        select(ranked.id)
        .where(
            ranked.study_id == study_id,
            ranked.state == TrialState.COMPLETE,
            ranked.source.in_(_SEARCH_SOURCES),
            ranked.rung == rung,
        )
        .order_by(ranked.value.desc(), ranked.number)
        .limit(quota)
    )
    above = aliased(Trial)
    promoted = (
        select(above.id)
        .where(
            above.rung_of_id == func.coalesce(Trial.rung_of_id, Trial.id),
            above.rung == rung + 1,
        )
        .exists()
    )
    return (
        select(Trial)
        .where(Trial.id.in_(best), ~promoted)
        .order_by(Trial.value.desc(), Trial.number)
    )
