"""The one owner of a study's state: every study transition is decided here.

::

    running --search over--> finishing --finals over--> finished
       |  ^                     |
    pause resume              stop          (running, paused, finishing) --stop--> stopped
       v  |
    paused

* **running -> finishing**: the search is over (``max_trials`` search trials exist and all
  have finished, or the suggester has nothing new to propose) and the ``top_k`` best
  COMPLETE search trials were queued as final (test split) evaluations. With nothing to
  re-score the study goes straight to ``finished``.
* **finishing -> finished**: every final evaluation has finished.
* **stop** (the user): the top-k are queued for final evaluation at once; workers may
  still claim those (and only those); running search trials are told ``stop``. ``stopped``
  and ``finished`` are terminal.

Who calls: :class:`~service.trial_store.TrialStore` calls :func:`advance` inside the
transaction of every terminal trial transition (complete, fail, release past the attempt
limit, the reaper, an infeasible insertion), so a study can never miss the end of its last
trial; the suggestion queue calls :func:`end_search` when its suggester is exhausted and
:func:`suspend` when it fails for a study; the
API calls :func:`set_state` for a user's PATCH; the coordinator's maintenance loop calls
:func:`reconcile`, which heals any study left behind (a crash between two steps, a database
restored from a backup). Every function here runs in the caller's write transaction and
locks the study row first, so two last reports racing on PostgreSQL are serialised: the
second sees the first's trial finished. Raises :class:`~service.errors.NotFound` and
:class:`~service.errors.Conflict` (user transitions only).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from .errors import Conflict, NotFound
from .models import Study, StudyState, Trial, TrialSource, TrialState

if TYPE_CHECKING:
    from .trial_store import TrialStore

log = logging.getLogger("archsearch.lifecycle")

IS_FINAL = Trial.source == TrialSource.FINAL.value
IS_PENDING = Trial.state.in_(TrialState.pending())


def top_trials(study_id: int, k: int):  # -> Select[tuple[Trial]]
    """The ``k`` best COMPLETE search trials of a study, best first (ties: lower number).

    The one definition of "the top-k": final evaluations, ``GET /best`` and the
    leaderboards all use it.
    """
    return (
        select(Trial)
        .where(Trial.study_id == study_id, Trial.state == TrialState.COMPLETE, ~IS_FINAL)
        .order_by(Trial.value.desc(), Trial.number)
        .limit(k)
    )


def _locked_study(session: Session, study_id: int) -> Study | None:
    # FOR UPDATE on PostgreSQL (a no-op on SQLite, whose writers are serialised anyway).
    return session.scalars(
        select(Study)
        .where(Study.id == study_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def _queue_finals(store: TrialStore, session: Session, study: Study) -> int:
    """Queue final evaluations of the top-k not yet queued. Returns how many were added."""
    if study.top_k <= 0:
        return 0
    top = list(session.scalars(top_trials(study.id, study.top_k)))
    return len(store.add_finals(session, study.id, top))


def _pending(session: Session, study_id: int, *, finals: bool) -> bool:
    # An index seek on (study_id, state): most calls find work pending and stop here.
    kind = IS_FINAL if finals else ~IS_FINAL
    return (
        session.scalar(
            select(Trial.id).where(Trial.study_id == study_id, IS_PENDING, kind).limit(1)
        )
        is not None
    )


def _set(session: Session, study: Study, state: StudyState) -> StudyState:
    if study.state != state:
        log.info("study %s: %s -> %s", study.id, study.state.value, state.value)
        study.state = state
        session.flush()
    return state


def _finish_search(store: TrialStore, session: Session, study: Study) -> StudyState:
    """running -> finishing (finals queued) or finished (nothing to re-score)."""
    queued = _queue_finals(store, session, study)
    if queued or _pending(session, study.id, finals=True):
        return _set(session, study, StudyState.FINISHING)
    return _set(session, study, StudyState.FINISHED)


def advance(store: TrialStore, session: Session, study_id: int) -> StudyState | None:
    """Move the study on if the trials that just ended were the last of a phase.

    Idempotent: calling it again changes nothing. Returns the study's state afterwards
    (``None``: no such study).
    """
    study = _locked_study(session, study_id)
    if study is None:
        return None
    if study.state == StudyState.RUNNING:
        if _pending(session, study_id, finals=False):
            return study.state
        search_total = session.scalar(
            select(func.count()).where(Trial.study_id == study_id, ~IS_FINAL)
        )
        if (search_total or 0) < study.max_trials:
            return study.state  # the suggestion queue adds more (or calls end_search)
        return _finish_search(store, session, study)
    if study.state == StudyState.FINISHING and not _pending(session, study_id, finals=True):
        return _set(session, study, StudyState.FINISHED)
    return study.state


def end_search(
    store: TrialStore, session: Session, study_id: int, reason: str
) -> StudyState | None:
    """The suggester has nothing new to propose (grid exhausted, or only configurations
    already tried): a running study whose trials have all finished ends its search now,
    below ``max_trials``. Returns the state afterwards."""
    study = _locked_study(session, study_id)
    if study is None or study.state != StudyState.RUNNING:
        return study.state if study is not None else None
    if _pending(session, study_id, finals=False):
        return study.state
    log.info("study %s: search ends early: %s", study_id, reason)
    return _finish_search(store, session, study)


def set_state(store: TrialStore, session: Session, study_id: int, target: str) -> Study:
    """A user's PATCH: pause, resume or stop. Staying in the current state is allowed.

    Raises :class:`NotFound` for an unknown study and :class:`Conflict` (field ``state``)
    for a transition the study cannot make (a finished or stopped study is over; a
    finishing study can only be stopped).
    """
    study = _locked_study(session, study_id)
    if study is None:
        raise NotFound(f"study {study_id} does not exist", field="study_id")
    wanted = StudyState(target)
    if wanted == study.state:
        return study
    if wanted not in study.state.user_targets():
        allowed = [s.value for s in study.state.user_targets()] or "none"
        raise Conflict(
            f"study {study_id} is {study.state.value}; it cannot become {wanted.value} "
            f"(allowed: {allowed})",
            field="state",
        )
    _set(session, study, wanted)
    if wanted == StudyState.STOPPED:
        _queue_finals(store, session, study)
    elif wanted == StudyState.RUNNING:
        study.error = None  # a resume clears the reason the coordinator paused it for
        advance(store, session, study_id)  # trials may all have ended while it was paused
    return study


MAX_ERROR_CHARS = 500


def suspend(store: TrialStore, session: Session, study_id: int, reason: str) -> StudyState | None:
    """The coordinator pauses a study on its own: its suggester failed (a space that
    overflows when sampled, say). ``reason`` is stored, on one line, as the study's
    ``error``; a user's resume (PATCH running) clears it. Only a running or paused study
    is suspended (any other is left as it is). Returns the state afterwards (``None``: no
    such study)."""
    study = _locked_study(session, study_id)
    if study is None:
        return None
    if study.state not in (StudyState.RUNNING, StudyState.PAUSED):
        return study.state
    line = " ".join(str(reason).split()) or "the suggester failed"
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 3] + "..."
    log.warning("study %s: paused by the coordinator: %s", study_id, line)
    study.error = line
    session.flush()
    return _set(session, study, StudyState.PAUSED)


def reconcile(store: TrialStore) -> int:
    """Advance every running or finishing study whose trials of the current phase have
    all finished. Idempotent; any coordinator process may run it at any time (it is part
    of the maintenance loop). Returns the number of studies whose state changed."""
    stuck = (
        select(Study.id)
        .where(
            Study.state.in_([StudyState.RUNNING, StudyState.FINISHING]),
            ~exists().where(Trial.study_id == Study.id, IS_PENDING),
        )
        .order_by(Study.id)
    )
    with store.sessions() as s:
        ids = list(s.scalars(stuck))
    changed = 0
    for study_id in ids:
        with store.transaction() as s:
            before = s.scalar(select(Study.state).where(Study.id == study_id))
            after = advance(store, s, study_id)
        if after is not None and after != before:
            changed += 1
    return changed
