"""Pre-queued suggestions: each running study keeps up to ``max_parallel`` WAITING trials.

A claim only takes a WAITING row, so it never waits for TPE. Refills run after reports
and claims (in the background of the request), at study creation, and from the
coordinator's periodic loop. The suggester runs OUTSIDE the write transaction (on SQLite a
write transaction blocks every claim), in the suggester process
(:mod:`service.suggester_process`), which reads the history itself and keeps it encoded
between rounds; one round proposes up to ``CHUNK`` configurations from one density fit
(docs/design.md section 3). The write transaction then re-counts under the study lock
and inserts at most what is still missing, so two coordinator processes refilling at once
never over-fill and ``max_trials`` is never exceeded. Duplicate configurations are skipped
by the store.

The suggester can fail only for one study: whatever it raises (a space whose lognormal
overflows when sampled, say) crosses the process boundary as a plain
:class:`SuggesterFailed`, and the study is paused with the reason
(:func:`~service.lifecycle.suspend`). A process pool that breaks anyway (its process was
killed) is replaced and the round retried once; a pool that breaks again on the retry
blames the study. Only a pool that cannot be created at all is the coordinator's problem
(:class:`~service.errors.Unavailable`, and ``/healthz`` says so).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError, Executor
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from search_space import Space

from . import lifecycle
from .errors import InvalidInput, Unavailable
from .models import Study, StudyState, Trial, TrialSource, TrialState
from .studies import evaluator_options, study_space
from .suggester_process import (
    HistoryUnavailable,
    SuggesterFailed,
    SuggestJob,
    new_trial,
    one_line,
    register_engine,
    run_job,
    run_suggester,
)
from .trial_store import NewTrial, TrialStore

__all__ = ["SuggesterFailed", "SuggestionQueue", "one_line", "run_suggester"]

log = logging.getLogger(__name__)

MAX_ROUNDS = 8  # bounds the work when most suggestions are infeasible or duplicates
# One suggester job asks for at most this many configurations, so that a study with a deep
# queue takes its turn in the (shared, first-come) suggester pool in small pieces.
CHUNK = 64
# WAITING search trials kept per study at most, whatever its max_parallel.
QUEUE_CAP = 1024
# How long one study's refill may take in the maintenance pass before the next study's.
PASS_SECONDS_PER_STUDY = 2.0
PROBE_TIMEOUT = 60.0  # seconds a fresh pool may take to start its first process


def derive_seed(study_seed: int, n_history: int, round_: int) -> int:
    """A distinct suggester seed per (study, history length, round)."""
    return (study_seed * 1_000_003 + n_history * 7_919 + round_ * 104_729) % (2**31 - 1)


class SuggestionQueue:
    """Keeps studies' queues full. One instance per coordinator process; thread-safe."""

    def __init__(
        self,
        store: TrialStore,
        executor: Executor | None = None,
        *,
        executor_factory: Callable[[], Executor] | None = None,
    ) -> None:
        """``executor``: where the suggester runs. A process pool keeps TPE (pure Python,
        holding the GIL for tens of milliseconds on a long history) from stalling the
        claims this process answers meanwhile; ``None`` runs it in the calling thread.
        ``executor_factory`` makes a pool (the first one too, when ``executor`` is not
        given) and the replacement of a broken one; without it a broken pool cannot be
        replaced."""
        self.store = store
        self._factory = executor_factory
        if executor is None and executor_factory is not None:
            executor = executor_factory()
        self.executor = executor
        self.pool_error: str | None = None  # why no working pool could be made, if so
        # Where rounds read the history: the store's database (a pool process opens its own
        # engine on the URL; a round run here reads through the store's engine).
        self.database_url = ""
        if store is not None:
            engine = store.sessions.kw["bind"]
            self.database_url = engine.url.render_as_string(hide_password=False)
            register_engine(self.database_url, engine)
        self._pool_lock = threading.Lock()
        self._locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
        self._dirty: set[int] = set()
        self._guard = threading.Lock()

    # -- the suggester and its pool ------------------------------------------------------
    def _suggest(self, job: SuggestJob) -> list[NewTrial]:
        """Run one round. Raises :class:`SuggesterFailed` (the study's fault: also when
        the pool breaks again on the retry) or :class:`Unavailable` (no pool can be made,
        the coordinator is stopping, or the history could not be read)."""
        try:
            return self._run(job)
        except HistoryUnavailable as exc:
            raise Unavailable(f"the suggester could not read the history: {exc.reason}") from None

    def _run(self, job: SuggestJob) -> list[NewTrial]:
        executor = self.executor
        if executor is None:
            return run_job(job)
        try:
            return self._submit(executor, job)
        except BrokenExecutor as exc:
            log.warning("suggester pool broken (%s); replacing it and retrying once", exc)
        executor = self._replace_pool(executor)
        try:
            return self._submit(executor, job)
        except BrokenExecutor as exc:
            self._replace_pool(executor)  # for the next study: this one is to blame
            raise SuggesterFailed(
                f"the suggester process died twice while proposing for this study ({exc})"
            ) from None

    def _submit(self, executor: Executor, job: SuggestJob) -> list[NewTrial]:
        try:
            future = executor.submit(run_job, job)
        except BrokenExecutor:
            raise  # (a RuntimeError too) the caller replaces the pool
        except RuntimeError as exc:
            # "cannot schedule new futures after shutdown": another thread replaced this
            # pool (use the new one), or the coordinator is stopping.
            current = self.executor
            if current is executor or current is None:
                raise Unavailable(f"the suggester pool is shut down ({exc})") from None
            return self._submit(current, job)
        return future.result()

    def _replace_pool(self, broken: Executor) -> Executor:
        """The working pool that replaces ``broken`` (made now, unless another thread
        already did). Raises :class:`Unavailable` when no working pool can be made."""
        with self._pool_lock:
            if self.executor is not broken and self.pool_error is None:
                return self.executor  # type: ignore[return-value]
            if self._factory is None:
                self.pool_error = "the suggester pool is broken and cannot be replaced"
                raise Unavailable(self.pool_error)
            broken.shutdown(wait=False)
            fresh = None
            try:
                fresh = self._factory()
                fresh.submit(os.getpid).result(timeout=PROBE_TIMEOUT)
            except Exception as exc:
                if fresh is not None:
                    fresh.shutdown(wait=False, cancel_futures=True)
                self.pool_error = f"the suggester pool cannot be created: {one_line(exc)}"
                log.error("%s", self.pool_error)
                raise Unavailable(self.pool_error) from None
            self.executor = fresh
            self.pool_error = None
            log.info("suggester pool replaced")
            return fresh

    def suggester_health(self) -> str | None:
        """``None`` when the suggester can run, else why not. A broken pool is replaced
        here (so a health check heals it); only one that cannot be made is reported."""
        executor = self.executor
        if executor is None:
            return None
        if self.pool_error is None and not getattr(executor, "_broken", False):
            return None
        try:
            self._replace_pool(executor)
        except Unavailable as exc:
            return exc.message
        return None

    def close(self) -> None:
        """Shut the pool down (the coordinator is stopping)."""
        with self._pool_lock:
            if self.executor is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)

    def refill(self, study_id: int, *, budget_seconds: float | None = None) -> int:
        """Top up ``study_id``'s queue (to ``min(max_parallel, QUEUE_CAP)`` WAITING
        trials), in suggester jobs of at most ``CHUNK`` configurations. Returns the number
        of trials added. With ``budget_seconds`` it stops after the job that passes it
        (the rest is left to later refills).

        Concurrent calls in one process coalesce: a call that finds a refill of the same
        study running marks it to run once more and returns 0 at once.
        """
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
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
                added += self._refill_once(study_id, deadline)
                with self._guard:
                    if study_id not in self._dirty:
                        break
                if deadline is not None and time.monotonic() > deadline:
                    break
        finally:
            lock.release()
        return added

    def refill_quietly(self, study_id: int, *, budget_seconds: float | None = None) -> None:
        """:meth:`refill` for background tasks: a failure is logged, never raised (the
        answer was already sent, and the periodic loop will refill later)."""
        try:
            self.refill(study_id, budget_seconds=budget_seconds)
        except Exception:
            log.warning(
                "refill of study %s failed; the maintenance loop retries", study_id, exc_info=True
            )

    def refill_all(self) -> int:
        """Top up every running study (the periodic safety net), each for at most
        ``PASS_SECONDS_PER_STUDY`` a pass, so one deep queue cannot hold up the others.
        Returns trials added."""
        with self.store.sessions() as s:
            ids = list(s.scalars(select(Study.id).where(Study.state == StudyState.RUNNING)))
        return sum(self.refill(sid, budget_seconds=PASS_SECONDS_PER_STUDY) for sid in ids)

    def _refill_once(self, study_id: int, deadline: float | None = None) -> int:
        added = 0
        discrete = False
        unproductive = 0
        round_ = -1  # the first round is round 0 (its seed: derive_seed(..., 0))
        while unproductive < MAX_ROUNDS:
            round_ += 1
            if deadline is not None and time.monotonic() > deadline:
                return added
            with self.store.sessions() as s:
                study = s.get(Study, study_id)
                if study is None or study.state != StudyState.RUNNING:
                    return added
                # Cheap checks first: most refills (one after every claim) find the queue
                # full and must pay neither for counting nor for loading the history.
                depth = min(study.max_parallel, QUEUE_CAP)
                if _waiting(s, study_id) >= depth:
                    return added
                total, waiting = _counts(s, study_id)
                want = min(depth - waiting, study.max_trials - total, CHUNK)
                if want <= 0:
                    return added
                job = self.job(study, want, derive_seed(study.seed, total, round_))
            try:
                discrete = study_space(study).is_discrete
                new = self._suggest(job)
            except (Unavailable, SQLAlchemyError, CancelledError):
                raise  # not the study's fault: the refill fails, a later one retries
            except Exception as exc:
                # This study's space or options break the suggester: pause it, with the
                # reason, and let every other study go on.
                reason = exc.reason if isinstance(exc, SuggesterFailed) else one_line(exc)
                self._suspend(study_id, f"the suggester failed: {reason}")
                return added
            if not new:  # grid exhausted
                self._end_search(study_id, "the suggester has no configuration left")
                return added
            with self.store.transaction(lock_study=study_id) as s:
                fresh = _locked_study(s, study_id)
                if fresh is None or fresh.state != StudyState.RUNNING:
                    return added
                total, waiting_now = _counts(s, study_id)
                depth = min(fresh.max_parallel, QUEUE_CAP)
                room = min(depth - waiting_now, fresh.max_trials - total)
                if room <= 0:
                    return added
                rows_added = self.store.add_trials(s, study_id, new[:room])
            added += len(rows_added)
            n_waiting = sum(1 for t in rows_added if t.state == TrialState.WAITING)
            # A round that queued all it asked for made progress; one of duplicates or
            # infeasible candidates counts towards MAX_ROUNDS.
            unproductive = 0 if n_waiting >= want else unproductive + 1
        log.info("study %s: queue not full after %d rounds", study_id, MAX_ROUNDS)
        if added == 0 and discrete:
            # Every round proposed only configurations the study already has: a small
            # discrete space is used up. With nothing pending the search is over (a
            # continuous space cannot be used up; its next refill simply tries again).
            self._end_search(
                study_id, f"{MAX_ROUNDS} suggestion rounds proposed only configurations tried"
            )
        return added

    def job(self, study: Study, n: int, seed: int) -> SuggestJob:
        """The suggester job of one round for ``study``: ``n`` configurations, ``seed``."""
        return SuggestJob(
            study_id=study.id,
            study_key=f"{self.database_url}|{study.id}|{study.created_at.isoformat()}",
            database_url=self.database_url,
            space=study.space,
            algorithm=study.algorithm,
            options=study.algorithm_options,
            evaluator_options=evaluator_options(study).model_dump(),
            n=n,
            seed=seed,
        )

    def _suspend(self, study_id: int, reason: str) -> None:
        with self.store.transaction(lock_study=study_id) as s:
            lifecycle.suspend(self.store, s, study_id, reason)

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
            item = new_trial(
                evaluator_options(study), space, raw, source=TrialSource.USER, priority=0
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InvalidInput(
                f"params are not a point of the study's space: {exc}", field="params"
            ) from None
        with self.store.transaction(lock_study=study.id) as s:
            _locked_study(s, study.id)
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
            if rows[0].state == TrialState.INFEASIBLE:
                # Its finished_at is the database clock (an SQL expression): read it back
                # while the session is open, or the detached row cannot answer it (a 500).
                s.refresh(rows[0], ["finished_at"])
            return rows[0]


def _locked_study(session: Any, study_id: int) -> Study | None:
    """The study row, locked FOR UPDATE for the rest of the transaction (PostgreSQL).

    Every transaction that adds trials to a study holds this lock -- the lifecycle takes
    it before it queues promotions and finals -- because trial numbers are the study's
    max + 1: two inserters not serialised on one lock would pick the same number, and
    the unique (study_id, number) would fail a worker's report. The advisory lock this
    module also takes only serialises refills among themselves. Lock order: advisory,
    then the study row (a report's transaction holds trial rows, then the study row,
    and never the advisory lock). The lifecycle's own lock, so both take it alike.
    """
    return lifecycle._locked_study(session, study_id)


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

    # total: configurations (first-rung trials; promotions are not new configurations).
    total, waiting = session.execute(
        select(
            func.count().filter(lifecycle.IS_FIRST_RUNG),
            func.count().filter(Trial.state == TrialState.WAITING),
        ).where(Trial.study_id == study_id, ~lifecycle.IS_FINAL)
    ).one()
    return int(total), int(waiting)
