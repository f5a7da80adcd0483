"""The one owner of a study's state: every study transition is decided here.

::

    running --search over--> finishing --finals, then blend, over--> finished
       |  ^                     |      ^                                    |
    pause resume              stop     +------- blend by hand --------------+
       v  |                                 (running, paused, finishing) --stop--> stopped
    paused

* **running -> finishing**: the search is over (``max_trials`` search trials exist and all
  have finished, or the suggester has nothing new to propose; with an ASHA schedule
  ``max_trials`` counts first-rung trials, and promotions (:mod:`service.schedule`, made
  here in the transaction of each report) are search trials too) and the ``top_k`` best
  COMPLETE search trials were queued as final (test split) evaluations. With nothing to
  re-score the study goes straight to ``finished``.
* **finishing -> finished**: every final evaluation has finished, and then the blend
  (``blend_k`` > 0): once the finals have all finished the best ``blend_k`` COMPLETE
  search trials are queued as one blend trial (source ``blend``) and the study stays
  ``finishing`` until it ends. No COMPLETE search trial, no blend.
* **stop** (the user): the top-k are queued for final evaluation at once; workers may
  still claim those (and only those, and the blend, queued once the finals have
  finished); running search trials are told ``stop``. ``stopped`` and ``finished`` are
  terminal for the user's PATCH.
* **blend by hand** (:func:`queue_blend`, ``POST .../blend``): a finished study queues
  the blend and goes back to ``finishing`` until it ends; a stopped one just queues it.

The automatic blend is queued at most once: not when the study already has a blend
trial (one queued by hand on a stopped study before its finals ended takes its place).

Who calls: :class:`~service.trial_store.TrialStore` calls :func:`advance` inside the
transaction of every terminal trial transition (complete, fail, release past the attempt
limit, the reaper, an infeasible insertion), so a study can never miss the end of its last
trial; the suggestion queue calls :func:`end_search` when its suggester is exhausted and
:func:`suspend` when it fails for a study; the
API calls :func:`set_state` for a user's PATCH and :func:`queue_blend` for a blend asked
for by hand; the coordinator's maintenance loop calls
:func:`reconcile`, which heals any study left behind (a crash between two steps, a database
restored from a backup). Every function here runs in the caller's write transaction and
locks the study row first, so two last reports racing on PostgreSQL are serialised: the
second sees the first's trial finished. Raises :class:`~service.errors.NotFound`,
:class:`~service.errors.Conflict` and :class:`~service.errors.InvalidInput` (user
transitions only).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from protocol.options import BLENDABLE_EVALUATORS

from .errors import Conflict, InvalidInput, NotFound
from .models import Study, StudyState, Trial, TrialSource, TrialState
from .schedule import promote

if TYPE_CHECKING:
    from .trial_store import TrialStore

log = logging.getLogger("archsearch.lifecycle")

# Trials of the study's end phase (final re-scores and blends): never search history.
IS_FINAL = Trial.source.in_([s.value for s in TrialSource.finals()])
IS_PENDING = Trial.state.in_(TrialState.pending())
# A configuration's first evaluation: what max_trials counts (with a schedule, promoted
# configurations add rows at higher rungs).
IS_FIRST_RUNG = Trial.rung == 0
IS_BLEND = Trial.source == TrialSource.BLEND.value


def top_trials(study_id: int, k: int):  # -> Select[tuple[Trial]]
    """The ``k`` best COMPLETE search trials of a study, best first.

    Each configuration counts once, at its highest COMPLETE rung, and higher rungs come
    first (with an ASHA schedule the top-k are taken from the top rung, then the next);
    within a rung by value, ties by lower number. Without a schedule every trial is at
    rung 0, so this is simply the best values. The one definition of "the top-k": final
    evaluations, blends, ``GET /best`` and the leaderboards all use it.
    """
    higher = aliased(Trial)
    superseded = (
        select(higher.id)
        .where(
            higher.rung_of_id == func.coalesce(Trial.rung_of_id, Trial.id),
            higher.rung > Trial.rung,
            higher.state == TrialState.COMPLETE,
        )
        .exists()
    )
    return (
        select(Trial)
        .where(
            Trial.study_id == study_id,
            Trial.state == TrialState.COMPLETE,
            ~IS_FINAL,
            ~superseded,
        )
        .order_by(Trial.rung.desc(), Trial.value.desc(), Trial.number)
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


def _queue_auto_blend(store: TrialStore, session: Session, study: Study) -> bool:
    """Queue the study's automatic blend (its best ``blend_k``) if it is due: ``blend_k``
    > 0, no blend trial yet, at least one COMPLETE search trial. The caller checked that
    the finals have all finished. Returns whether a blend was queued."""
    if study.blend_k <= 0:
        return False
    # Once per study, whatever came later: in a stopped study a search trial that was
    # still running may complete after the blend and change the top-k.
    if session.scalar(select(Trial.id).where(Trial.study_id == study.id, IS_BLEND).limit(1)):
        return False
    members = list(session.scalars(top_trials(study.id, study.blend_k)))
    if not members:
        return False
    queued = store.add_blend(session, study.id, members, study.blend_weights)
    if queued is not None:
        log.info("study %s: blend of %d queued (trial %s)", study.id, len(members), queued.number)
    return queued is not None


def _end_phase(store: TrialStore, session: Session, study: Study) -> StudyState:
    """finishing (or running at the end of its search): finals, then the blend, then
    finished. Idempotent."""
    if _pending(session, study.id, finals=True) or _queue_auto_blend(store, session, study):
        return _set(session, study, StudyState.FINISHING)
    return _set(session, study, StudyState.FINISHED)


def _finish_search(store: TrialStore, session: Session, study: Study) -> StudyState:
    """running -> finishing (finals or the blend queued) or finished (nothing to do)."""
    _queue_finals(store, session, study)
    return _end_phase(store, session, study)


def advance(store: TrialStore, session: Session, study_id: int) -> StudyState | None:
    """Move the study on if the trials that just ended were the last of a phase.

    Idempotent: calling it again changes nothing. Returns the study's state afterwards
    (``None``: no such study).
    """
    study = _locked_study(session, study_id)
    if study is None:
        return None
    if study.schedule is not None and study.state in (StudyState.RUNNING, StudyState.PAUSED):
        # Before the pending check: a promotion is more search to do.
        promote(store, session, study)
    if study.state == StudyState.RUNNING:
        if _pending(session, study_id, finals=False):
            return study.state
        search_total = session.scalar(
            select(func.count()).where(Trial.study_id == study_id, ~IS_FINAL, IS_FIRST_RUNG)
        )
        if (search_total or 0) < study.max_trials:
            return study.state  # the suggestion queue adds more (or calls end_search)
        return _finish_search(store, session, study)
    if study.state == StudyState.FINISHING:
        return _end_phase(store, session, study)
    if (
        study.state == StudyState.STOPPED
        and study.blend_k > 0
        and not _pending(session, study_id, finals=True)
    ):
        _queue_auto_blend(store, session, study)  # stopped stays stopped; workers claim it
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
        if not _pending(session, study_id, finals=True):
            _queue_auto_blend(store, session, study)  # nothing to re-score: blend now
    elif wanted == StudyState.RUNNING:
        study.error = None  # a resume clears the reason the coordinator paused it for
        advance(store, session, study_id)  # trials may all have ended while it was paused
    return study


def complete_configurations(session: Session, study_id: int) -> int:
    """How many configurations have a COMPLETE search result (what a blend may take)."""
    return (
        session.scalar(
            select(func.count()).select_from(top_trials(study_id, 1).limit(None).subquery())
        )
        or 0
    )


def queue_blend(store: TrialStore, session: Session, study_id: int, k: int, weights: str) -> Trial:
    """A user's blend of the study's best ``k`` (:func:`top_trials`) with ``weights``.

    A finished study goes back to ``finishing`` until the blend ends; a stopped study
    stays stopped (its blend is claimed all the same). Returns the queued trial.
    Raises :class:`NotFound` (unknown study); :class:`InvalidInput` field ``evaluator``
    (a train or plugin study keeps no model to blend) or ``k`` (below 1, or more than
    the study's COMPLETE search configurations); :class:`Conflict` field ``state`` (the
    study is not finished or stopped) or ``k`` (this very blend is already a trial).
    """
    study = _locked_study(session, study_id)
    if study is None:
        raise NotFound(f"study {study_id} does not exist", field="study_id")
    if study.evaluator not in BLENDABLE_EVALUATORS:
        raise InvalidInput(
            f"study {study_id} uses the {study.evaluator} evaluator; a blend combines "
            f"fixed-filter features ({' or '.join(BLENDABLE_EVALUATORS)} studies only)",
            field="evaluator",
        )
    if study.state not in (StudyState.FINISHED, StudyState.STOPPED):
        raise Conflict(
            f"study {study_id} is {study.state.value}; a blend is queued only for a "
            "finished or stopped study (its search and finals over)",
            field="state",
        )
    have = complete_configurations(session, study_id)
    if not 1 <= k <= have:
        raise InvalidInput(
            f"k must be between 1 and the study's COMPLETE search configurations; "
            f"study {study_id} has {have}, got k={k}",
            field="k",
        )
    members = list(session.scalars(top_trials(study_id, k)))
    queued = store.add_blend(session, study_id, members, weights)
    if queued is None:
        from .trial_store import blend_hash  # the store imports this module

        number, state = session.execute(
            select(Trial.number, Trial.state).where(
                Trial.study_id == study_id,
                Trial.config_hash == blend_hash(weights, [t.id for t in members]),
            )
        ).one()
        raise Conflict(
            f"this blend (the best {k}, {weights} weights) is already trial {number} of "
            f"study {study_id} ({TrialState(state).value})",
            field="k",
        )
    if study.state == StudyState.FINISHED:
        _set(session, study, StudyState.FINISHING)  # finished again once the blend ends
    log.info("study %s: blend of %d queued by hand (trial %s)", study_id, k, queued.number)
    return queued


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
    all finished, and every stopped study whose blend is due but not queued. Idempotent;
    any coordinator process may run it at any time (it is part of the maintenance loop).
    Returns the number of studies whose state changed or whose blend was queued."""
    stuck = (
        select(Study.id)
        .where(
            Study.state.in_([StudyState.RUNNING, StudyState.FINISHING]),
            ~exists().where(Trial.study_id == Study.id, IS_PENDING),
        )
        .order_by(Study.id)
    )
    # A stopped study leaves its stopped search trials WAITING for good, so only its
    # end phase counts; once its blend exists (or it has nothing to blend) it drops out.
    unblended = (
        select(Study.id)
        .where(
            Study.state == StudyState.STOPPED,
            Study.blend_k > 0,
            ~exists().where(Trial.study_id == Study.id, IS_PENDING, IS_FINAL),
            ~exists().where(Trial.study_id == Study.id, IS_BLEND),
            exists().where(
                Trial.study_id == Study.id, Trial.state == TrialState.COMPLETE, ~IS_FINAL
            ),
        )
        .order_by(Study.id)
    )
    with store.sessions() as s:
        ids = sorted(set(s.scalars(stuck)) | set(s.scalars(unblended)))
    changed = 0
    for study_id in ids:
        with store.transaction() as s:
            before = _phase(s, study_id)
            advance(store, s, study_id)
            after = _phase(s, study_id)
        if after != before:
            changed += 1
    return changed


def _phase(session: Session, study_id: int) -> tuple[object, ...]:
    # What reconcile reports as a change: the state, or a blend queued.
    state = session.scalar(select(Study.state).where(Study.id == study_id))
    blend = session.scalar(select(Trial.id).where(Trial.study_id == study_id, IS_BLEND).limit(1))
    return (state, blend is not None)
