"""Pre-queued suggestions: each running study keeps up to ``max_parallel`` WAITING trials.

A claim only takes a WAITING row, so it never waits for TPE. Refills run after reports
and claims (in the background of the request), at study creation, and from the
coordinator's periodic loop. The suggester runs OUTSIDE the write transaction (TPE on a
long history takes a while, and on SQLite a write transaction blocks every claim); the
write transaction then re-counts under the study lock and inserts at most what is still
missing, so two coordinator processes refilling at once never over-fill and
``max_trials`` is never exceeded. Duplicate configurations are skipped by the store.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import Executor
from typing import Any

from sqlalchemy import select

from search_space import (
    HistoryItem,
    InfeasibleArchitecture,
    Space,
    get_suggester,
    validate,
)

from . import lifecycle
from .errors import InvalidInput
from .models import Study, StudyState, Trial, TrialSource, TrialState
from .studies import evaluator_options, space_from_document, study_space
from .trial_store import NewTrial, TrialStore

log = logging.getLogger(__name__)

MAX_ROUNDS = 8  # bounds the work when most suggestions are infeasible or duplicates


def make_new_trial(
    study: Study,
    space: Space,
    raw: dict[str, Any],
    *,
    source: TrialSource = TrialSource.SUGGESTED,
    priority: int = 1,
) -> NewTrial:
    """Resolve ``raw`` to an architecture, hash it, and pre-check that it can be built.

    Raises ``ValueError`` when ``raw`` is not a point of ``space``.
    """
    options = evaluator_options(study)
    arch = space.to_arch(raw, input_channels=options.input_channels, seed=options.filter_seed)
    reason = None
    try:
        validate(arch, max_features=options.max_features)
    except InfeasibleArchitecture as exc:
        reason = exc.reason
    return NewTrial(
        params=raw,
        arch=arch.to_dict(),
        config_hash=arch.content_hash(),
        seed=arch.seed,
        source=source,
        priority=priority,
        infeasible_reason=reason,
    )


def run_suggester(
    space_doc: dict[str, Any],
    algorithm: str,
    options: dict[str, Any],
    history: list[HistoryItem],
    n: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One suggestion round, from plain data (so that it can run in another process)."""
    space = space_from_document(space_doc)
    return get_suggester(algorithm, **options).suggest(space, history, n, seed=seed)


def derive_seed(study_seed: int, n_history: int, round_: int) -> int:
    """A distinct suggester seed per (study, history length, round)."""
    return (study_seed * 1_000_003 + n_history * 7_919 + round_ * 104_729) % (2**31 - 1)


class SuggestionQueue:
    """Keeps studies' queues full. One instance per coordinator process; thread-safe."""

    def __init__(self, store: TrialStore, executor: Executor | None = None) -> None:
        """``executor``: where the suggester runs. A process pool keeps TPE (pure Python,
        holding the GIL for tens of milliseconds on a long history) from stalling the
        claims this process answers meanwhile; ``None`` runs it in the calling thread."""
        self.store = store
        self.executor = executor
        self._locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
        self._dirty: set[int] = set()
        self._guard = threading.Lock()

    def refill(self, study_id: int) -> int:
        """Top up ``study_id``'s queue. Returns the number of trials added.

        Concurrent calls in one process coalesce: a call that finds a refill of the same
        study running marks it to run once more and returns 0 at once.
        """
        with self._guard:
            lock = self._locks[study_id]
            if not lock.acquire(blocking=False):
                self._dirty.add(study_id)
                return 0
        added = 0
        try:
            while True:
                with self._guard:
                    self._dirty.discard(study_id)
                added += self._refill_once(study_id)
                with self._guard:
                    if study_id not in self._dirty:
                        break
        finally:
            lock.release()
        return added

    def refill_quietly(self, study_id: int) -> None:
        """:meth:`refill` for background tasks: a failure is logged, never raised (the
        answer was already sent, and the periodic loop will refill later)."""
        try:
            self.refill(study_id)
        except Exception:
            log.warning(
                "refill of study %s failed; the maintenance loop retries", study_id, exc_info=True
            )

    def refill_all(self) -> int:
        """Top up every running study (the periodic safety net). Returns trials added."""
        with self.store.sessions() as s:
            ids = list(s.scalars(select(Study.id).where(Study.state == StudyState.RUNNING)))
        return sum(self.refill(sid) for sid in ids)

    def _refill_once(self, study_id: int) -> int:
        added = 0
        discrete = False
        for round_ in range(MAX_ROUNDS):
            with self.store.sessions() as s:
                study = s.get(Study, study_id)
                if study is None or study.state != StudyState.RUNNING:
                    return added
                # Cheap checks first: most refills (one after every claim) find the queue
                # full and must pay neither for counting nor for loading the history.
                if _waiting(s, study_id) >= study.max_parallel:
                    return added
                total, waiting = _counts(s, study_id)
                want = min(study.max_parallel - waiting, study.max_trials - total)
                if want <= 0:
                    return added
                rows = s.execute(
                    select(Trial.params, Trial.state, Trial.value).where(
                        Trial.study_id == study_id, ~lifecycle.IS_FINAL
                    )
                ).all()
            space = study_space(study)
            discrete = space.is_discrete
            history = [
                HistoryItem(raw=r.params, state=TrialState(r.state).value, value=r.value)
                for r in rows
            ]
            job = (
                study.space,
                study.algorithm,
                study.algorithm_options,
                history,
                want,
                derive_seed(study.seed, total, round_),
            )
            if self.executor is None:
                raws = run_suggester(*job)
            else:
                raws = self.executor.submit(run_suggester, *job).result()
            if not raws:  # grid exhausted
                self._end_search(study_id, "the suggester has no configuration left")
                return added
            new = [make_new_trial(study, space, raw) for raw in raws]
            with self.store.transaction(lock_study=study_id) as s:
                fresh = s.get(Study, study_id, populate_existing=True)
                if fresh is None or fresh.state != StudyState.RUNNING:
                    return added
                total, waiting_now = _counts(s, study_id)
                room = min(fresh.max_parallel - waiting_now, fresh.max_trials - total)
                if room <= 0:
                    return added
                rows_added = self.store.add_trials(s, study_id, new[:room])
            added += len(rows_added)
            n_waiting = sum(1 for t in rows_added if t.state == TrialState.WAITING)
            if n_waiting >= want:
                return added
        log.info("study %s: queue not full after %d rounds", study_id, MAX_ROUNDS)
        if added == 0 and discrete:
            # Every round proposed only configurations the study already has: a small
            # discrete space is used up. With nothing pending the search is over (a
            # continuous space cannot be used up; its next refill simply tries again).
            self._end_search(
                study_id, f"{MAX_ROUNDS} suggestion rounds proposed only configurations tried"
            )
        return added

    def _end_search(self, study_id: int, reason: str) -> None:
        with self.store.transaction(lock_study=study_id) as s:
            lifecycle.end_search(self.store, s, study_id, reason)

    def enqueue_user(self, study: Study, space: Space, raw: dict[str, Any]) -> Trial:
        """Add a user-given configuration, ahead of suggested ones.

        Raises :class:`InvalidInput` (field ``params``) for values that are not a point
        of the space, or when the configuration is already in the study, or when the
        study has no room left under ``max_trials``.
        """
        try:
            item = make_new_trial(study, space, raw, source=TrialSource.USER, priority=0)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InvalidInput(
                f"params are not a point of the study's space: {exc}", field="params"
            ) from None
        with self.store.transaction(lock_study=study.id) as s:
            total, _ = _counts(s, study.id)
            if total >= study.max_trials:
                raise InvalidInput(
                    f"study {study.id} already has max_trials={study.max_trials} trials",
                    field="params",
                )
            rows = self.store.add_trials(s, study.id, [item])
            if not rows:
                raise InvalidInput(
                    "this configuration is already a trial of the study "
                    f"(config_hash {item.config_hash[:12]})",
                    field="params",
                )
            return rows[0]


def _waiting(session: Any, study_id: int) -> int:
    """WAITING search trials: a range of the (study, state) index, not a scan."""
    from sqlalchemy import func

    return int(
        session.scalar(
            select(func.count()).where(
                Trial.study_id == study_id,
                Trial.state == TrialState.WAITING,
                ~lifecycle.IS_FINAL,
            )
        )
    )


def _counts(session: Any, study_id: int) -> tuple[int, int]:
    from sqlalchemy import func

    total, waiting = session.execute(
        select(
            func.count(),
            func.count().filter(Trial.state == TrialState.WAITING),
        ).where(Trial.study_id == study_id, ~lifecycle.IS_FINAL)
    ).one()
    return int(total), int(waiting)
