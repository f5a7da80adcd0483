"""The trial store: the only module that writes ``trials`` rows.

Ownership and states (docs/design.md section 5): a WAITING trial belongs to nobody. A claim
makes it RUNNING and gives it to one worker under a lease (``lease_expires_at``, database
clock). While RUNNING only that worker may heartbeat, complete, fail or release it. A lease
that runs out is reaped, and a trial its worker gives back is released: either way it
returns to WAITING with ``attempt + 1``, or becomes FAILED once ``max_attempts`` attempts
were used. COMPLETE, PRUNED, FAILED and INFEASIBLE are finished (``TrialState.finished()``).

Study state: every transition that finishes a trial records the trial's study, and the
transaction calls :func:`service.lifecycle.advance` for each such study before it commits,
so the study moves on (finals queued, finished) in the same transaction as its last
trial's end, whatever ended it.

Concurrency: a claim is one UPDATE of the first claimable row, chosen with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the whole claim runs in a
``BEGIN IMMEDIATE`` transaction, so claims are serialised by the database's write lock.
Either way no trial is RUNNING for two workers, whatever the number of workers and
coordinator processes. Reports lock the trial row before they read it.

Identity: given the caller (``caller=``, the API always passes it), claim, heartbeat,
complete, fail and release first check that the worker belongs to the caller's token
(``workers.token_id``; see :mod:`service.auth`): another token's worker is
:class:`~service.errors.Forbidden` (403, field ``worker_id``), and a revoked token is
:class:`~service.errors.Unauthorized` (401) at once, in the same transaction.

Scores: a reported value (complete, fail, heartbeat) must lie in the range of the study's
evaluator (:data:`SCORE_RANGES`), else :class:`~service.errors.InvalidInput` (field
``value``).

Errors: :class:`~service.errors.NotFound` (no such trial / worker),
:class:`~service.errors.Conflict` (lost lease, wrong worker, contradicting report) and
:class:`~service.errors.Unavailable` (database unreachable) are raised; a lost claim
race is not an error (the next candidate is taken, or ``None`` returned).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from . import lifecycle
from .auth import Caller
from .db import close_quietly, db_now_plus
from .errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized, Unavailable
from .models import ApiToken, Study, StudyState, Trial, TrialSource, TrialState, Worker
from .studies import record_fingerprint

# Study ids whose trials finished in this transaction (Session.info key).
_ENDED = "archsearch.ended_studies"

# The one table of score ranges, by study evaluator (closed intervals). Every current
# evaluator reports an accuracy; a new evaluator must add its row here.
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "screen": (0.0, 1.0),
    "train": (0.0, 1.0),
    "pairs": (0.0, 1.0),
}


@dataclass(frozen=True)
class NewTrial:
    """A configuration to add to a study's queue."""

    params: dict[str, Any]
    config_hash: str
    arch: dict[str, Any] | None = None
    seed: int = 42
    source: TrialSource = TrialSource.SUGGESTED
    # Lower runs first: user-enqueued configurations before suggested ones.
    priority: int = 1
    # A configuration known to be unbuildable is stored final right away (it is history).
    infeasible_reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    final_of_id: int | None = None


class TrialStore:
    """Transactions over the ``trials`` table. Safe to share between threads."""

    def __init__(
        self, sessions: sessionmaker[Session], *, lease_seconds: float, max_attempts: int
    ) -> None:
        self.sessions = sessions
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._postgres = sessions.kw["bind"].dialect.name == "postgresql"
        # SQLite has one writer at a time. Queueing this process's writers on a Python
        # lock wakes the next one the moment the previous commits; leaving it to SQLite's
        # busy handler makes them sleep-and-retry with back-off (up to 100 ms a try).
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            contextlib.nullcontext() if self._postgres else threading.Lock()
        )

    # -- transactions -----------------------------------------------------------------
    @contextmanager
    def transaction(self, *, lock_study: int | None = None) -> Iterator[Session]:
        """A write transaction: commit on success, roll back on error.

        On SQLite it begins IMMEDIATE (takes the write lock first). On PostgreSQL,
        ``lock_study`` takes the study's transaction-scoped advisory lock, which
        serialises queue refills of one study across coordinator processes.
        Raises :class:`Unavailable` when the database connection fails.
        """
        with self._write_lock:
            yield from self._transaction(lock_study)

    def _transaction(self, lock_study: int | None) -> Iterator[Session]:
        session = self.sessions()
        try:
            session.connection(execution_options={"sqlite_immediate": True})
            if lock_study is not None and self._postgres:
                session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_study})
            yield session
            self._advance_ended(session)
            session.commit()
        except (OperationalError, DBAPIError) as exc:
            close_quietly(session)
            if isinstance(exc, IntegrityError) or not _is_connection_error(exc):
                raise
            raise Unavailable(f"database unavailable: {str(exc.orig).splitlines()[0]}") from exc
        except BaseException:
            close_quietly(session)
            raise
        finally:
            close_quietly(session)

    def _advance_ended(self, session: Session) -> None:
        # Drained in a loop: advancing may (in principle) end more trials.
        while ended := session.info.pop(_ENDED, None):
            for study_id in sorted(ended):  # one lock order across transactions
                lifecycle.advance(self, session, study_id)

    @staticmethod
    def _ended(session: Session, study_ids: int | Sequence[int]) -> None:
        ids = [study_ids] if isinstance(study_ids, int) else study_ids
        session.info.setdefault(_ENDED, set()).update(ids)

    def _locked_trial(self, session: Session, trial_id: int) -> Trial:
        trial = session.scalars(
            select(Trial).where(Trial.id == trial_id).with_for_update()
        ).one_or_none()
        if trial is None:
            raise NotFound(f"trial {trial_id} does not exist", field="trial_id")
        return trial

    @staticmethod
    def _check_owner(s: Session, worker_id: int, caller: Caller | None) -> bool:
        """Refuse a caller acting for a worker registered by another token (403) or with a
        revoked token (401). Returns whether the worker exists; ``caller=None`` (in-process
        use) skips the check."""
        row = s.execute(
            select(Worker.token_id, ApiToken.revoked_at)
            .outerjoin(ApiToken, ApiToken.id == Worker.token_id)
            .where(Worker.id == worker_id)
        ).first()
        if row is None or caller is None:
            return row is not None
        if row.token_id != caller.token_id:
            raise Forbidden(
                f"worker {worker_id} was registered with another token; a token may act "
                "only for the workers it registered",
                field="worker_id",
            )
        if row.revoked_at is not None:
            raise Unauthorized("unknown or revoked token", field="Authorization")
        return True

    @staticmethod
    def _check_value(s: Session, trial: Trial, value: float | None) -> None:
        """The value must lie in the score range of the study's evaluator (422)."""
        if value is None:
            return
        evaluator = s.scalar(select(Study.evaluator).where(Study.id == trial.study_id))
        low, high = SCORE_RANGES.get(evaluator or "", (-math.inf, math.inf))
        if not (math.isfinite(value) and low <= value <= high):
            raise InvalidInput(
                f"value {value!r} is outside [{low}, {high}], the score range of the "
                f"{evaluator} evaluator",
                field="value",
            )

    # -- queue ------------------------------------------------------------------------
    def add_trials(self, session: Session, study_id: int, new: Sequence[NewTrial]) -> list[Trial]:
        """Add ``new`` to the study in the caller's transaction; skip known configurations.

        A configuration whose ``config_hash`` is already in the study is not added
        twice (docs/design.md: a duplicate config is not evaluated twice). Returns the rows
        added, numbered after the study's last trial.
        """
        if not new:
            return []
        hashes = {n.config_hash for n in new}
        known = set(
            session.scalars(
                select(Trial.config_hash).where(
                    Trial.study_id == study_id, Trial.config_hash.in_(hashes)
                )
            )
        )
        number = (
            session.scalar(select(func.max(Trial.number)).where(Trial.study_id == study_id)) or 0
        )
        added: list[Trial] = []
        for item in new:
            if item.config_hash in known:
                continue
            known.add(item.config_hash)
            number += 1
            infeasible = item.infeasible_reason is not None
            trial = Trial(
                study_id=study_id,
                number=number,
                state=TrialState.INFEASIBLE if infeasible else TrialState.WAITING,
                priority=item.priority,
                source=TrialSource(item.source).value,
                final_of_id=item.final_of_id,
                params=item.params,
                arch=item.arch,
                config_hash=item.config_hash,
                seed=item.seed,
                reason=item.infeasible_reason,
                metrics=item.metrics,
                intermediate=[],
                attempt=1,
            )
            if infeasible:
                trial.finished_at = db_now_plus(0)
                self._ended(session, study_id)
            session.add(trial)
            added.append(trial)
        session.flush()
        return added

    def add_finals(self, session: Session, study_id: int, top: Sequence[Trial]) -> list[Trial]:
        """Queue a final (test split) evaluation of each of ``top`` not queued yet, ahead
        of everything else. Only :mod:`service.lifecycle` calls it."""
        new = [
            NewTrial(
                params=t.params,
                arch=t.arch,
                config_hash=hashlib.sha256(f"final:{t.config_hash}".encode()).hexdigest(),
                seed=t.seed,
                source=TrialSource.FINAL,
                priority=0,
                final_of_id=t.id,
            )
            for t in top
        ]
        return self.add_trials(session, study_id, new)

    # -- worker side --------------------------------------------------------------------
    def claim(
        self,
        worker_id: int,
        study_ids: Sequence[int] | None = None,
        exclude: Sequence[int] | None = None,
        *,
        caller: Caller | None = None,
    ) -> Trial | None:
        """Give the worker a trial: its own RUNNING one if it has one, else the next WAITING
        trial of a running study (or a final evaluation of a stopped one).

        The lease is (re)set to now + ``lease_seconds``. Expired leases are reaped first.
        Returns ``None`` when no running study has a WAITING trial. Raises
        :class:`NotFound` for an unknown worker, :class:`Forbidden` for another token's.
        """
        with self.transaction() as s:
            self._reap(s)
            if not self._check_owner(s, worker_id, caller):
                raise NotFound(f"worker {worker_id} is not registered", field="worker_id")
            s.execute(
                update(Worker).where(Worker.id == worker_id).values(last_seen_at=db_now_plus(0))
            )
            own = s.scalars(
                select(Trial)
                .where(Trial.worker_id == worker_id, Trial.state == TrialState.RUNNING)
                .order_by(Trial.id)
                .limit(1)
                .with_for_update()
            ).first()
            if own is not None:
                own.lease_expires_at = db_now_plus(self.lease_seconds)
                s.flush()
                s.refresh(own)
                return own
            claimable_study = Study.state.in_([s for s in StudyState if s.claims_search()]) | (
                Study.state.in_([s for s in StudyState if s.claims_finals()])
                & (Trial.source == TrialSource.FINAL.value)
            )
            candidate = (
                select(Trial.id)
                .join(Study, Study.id == Trial.study_id)
                .where(Trial.state == TrialState.WAITING, claimable_study)
                .order_by(Trial.priority, Trial.id)
                .limit(1)
                .with_for_update(skip_locked=True, of=Trial)
            )
            if study_ids:
                candidate = candidate.where(Trial.study_id.in_(list(study_ids)))
            if exclude:
                candidate = candidate.where(Trial.study_id.not_in(list(exclude)))
            claimed_id = s.scalar(
                update(Trial)
                .where(Trial.id == candidate.scalar_subquery(), Trial.state == TrialState.WAITING)
                .values(
                    state=TrialState.RUNNING,
                    worker_id=worker_id,
                    lease_expires_at=db_now_plus(self.lease_seconds),
                    started_at=db_now_plus(0),
                )
                .returning(Trial.id)
            )
            if claimed_id is None:
                return None
            return s.get(Trial, claimed_id, populate_existing=True)

    def _running_for(self, s: Session, trial_id: int, worker_id: int, verb: str) -> Trial:
        trial = self._locked_trial(s, trial_id)
        if trial.state != TrialState.RUNNING or trial.worker_id != worker_id:
            raise Conflict(
                f"cannot {verb} trial {trial_id}: worker {worker_id} does not hold its lease "
                f"(state {trial.state.value}, attempt {trial.attempt})",
                field="worker_id",
            )
        return trial

    def heartbeat(
        self,
        trial_id: int,
        worker_id: int,
        step: int | None = None,
        value: float | None = None,
        *,
        caller: Caller | None = None,
    ) -> Trial:
        """Extend the lease; record ``(step, value)`` as an intermediate value if given.

        Raises :class:`Conflict` when the worker no longer holds the trial.
        """
        with self.transaction() as s:
            self._check_owner(s, worker_id, caller)
            trial = self._running_for(s, trial_id, worker_id, "heartbeat")
            self._check_value(s, trial, value)
            trial.lease_expires_at = db_now_plus(self.lease_seconds)
            if value is not None:
                trial.intermediate = [*trial.intermediate, [step, value]]
            s.execute(
                update(Worker).where(Worker.id == worker_id).values(last_seen_at=db_now_plus(0))
            )
            s.flush()
            s.refresh(trial)
            return trial

    def complete(
        self,
        trial_id: int,
        worker_id: int,
        value: float,
        metrics: dict[str, Any],
        fingerprint: str | None = None,
        *,
        caller: Caller | None = None,
    ) -> tuple[Trial, bool]:
        """Record the score. Returns ``(trial, first)``; ``first`` is False for a repeat.

        ``fingerprint`` (the worker's dataset hash) becomes the study's if it has none.
        Idempotent: the same worker reporting the same value again gets the stored trial.
        Raises :class:`Conflict` for a different second result, a report on a FAILED /
        INFEASIBLE / PRUNED trial, or a worker that lost its lease.
        """
        if not math.isfinite(value):
            raise ValueError("value must be finite")
        with self.transaction() as s:
            trial = self._locked_trial(s, trial_id)
            self._check_owner(s, worker_id, caller)
            self._check_value(s, trial, value)
            if trial.state == TrialState.COMPLETE:
                if trial.worker_id == worker_id and trial.value == value:
                    return trial, False
                raise Conflict(
                    f"trial {trial_id} is already COMPLETE with value {trial.value} "
                    f"(by worker {trial.worker_id}); a different result is refused",
                    field="value",
                )
            trial = self._running_for(s, trial_id, worker_id, "complete")
            trial.state = TrialState.COMPLETE
            trial.value = value
            trial.metrics = metrics
            if trial.final_of_id is not None:
                # A final evaluation's score is the search trial's test score.
                s.execute(
                    update(Trial).where(Trial.id == trial.final_of_id).values(test_value=value)
                )
            self._finish(s, trial, fingerprint)
            return trial, True

    def _finish(self, s: Session, trial: Trial, fingerprint: str | None) -> None:
        trial.lease_expires_at = None
        trial.finished_at = db_now_plus(0)
        if fingerprint:
            record_fingerprint(s, trial.study_id, fingerprint)
        self._ended(s, trial.study_id)
        s.flush()
        s.refresh(trial)

    def fail(
        self,
        trial_id: int,
        worker_id: int,
        kind: Literal["infeasible", "error", "pruned"],
        reason: str,
        value: float | None = None,
        fingerprint: str | None = None,
        *,
        caller: Caller | None = None,
    ) -> tuple[Trial, bool]:
        """End the trial INFEASIBLE, FAILED (``error``) or PRUNED. Same contract as complete.

        A worker-reported error is final (a deterministic crash would only repeat); a lost
        worker is retried by the reaper instead.
        """
        target = {
            "infeasible": TrialState.INFEASIBLE,
            "error": TrialState.FAILED,
            "pruned": TrialState.PRUNED,
        }[kind]
        with self.transaction() as s:
            trial = self._locked_trial(s, trial_id)
            self._check_owner(s, worker_id, caller)
            self._check_value(s, trial, value)
            if trial.state.is_finished():
                if trial.state == target and trial.worker_id == worker_id:
                    return trial, False
                raise Conflict(
                    f"trial {trial_id} already ended {trial.state.value}; "
                    f"a {kind} report is refused",
                    field="kind",
                )
            trial = self._running_for(s, trial_id, worker_id, f"report {kind} for")
            trial.state = target
            trial.reason = reason
            if value is not None:
                trial.value = value
            self._finish(s, trial, fingerprint)
            return trial, True

    def release(self, trial_id: int, worker_id: int, *, caller: Caller | None = None) -> Trial:
        """Give a RUNNING trial back at once (worker shutting down, data mismatch): it is
        WAITING again with ``attempt + 1``, or FAILED when that was its last attempt (a
        trial every worker gives back must not circle for ever).

        Releasing a trial the worker no longer holds raises :class:`Conflict`.
        """
        with self.transaction() as s:
            self._check_owner(s, worker_id, caller)
            trial = self._running_for(s, trial_id, worker_id, "release")
            if trial.attempt >= self.max_attempts:
                trial.state = TrialState.FAILED
                trial.reason = f"released by its worker on all {self.max_attempts} attempts"
                self._finish(s, trial, None)
                return trial
            trial.state = TrialState.WAITING
            trial.attempt += 1
            trial.worker_id = None
            trial.lease_expires_at = None
            trial.started_at = None
            trial.reason = "previous attempt was released by its worker"
            s.flush()
            s.refresh(trial)
            return trial

    def reap_expired(self) -> int:
        """Return RUNNING trials whose lease ran out to WAITING (attempt + 1), or FAILED.

        Returns the number of trials reaped. Any process may call it at any time.
        """
        with self.transaction() as s:
            return self._reap(s)

    def _reap(self, s: Session) -> int:
        expired = (Trial.state == TrialState.RUNNING) & (Trial.lease_expires_at < db_now_plus(0))
        failed_studies = s.scalars(
            update(Trial)
            .where(expired, Trial.attempt >= self.max_attempts)
            .values(
                state=TrialState.FAILED,
                reason=f"lease expired on all {self.max_attempts} attempts (worker lost)",
                lease_expires_at=None,
                finished_at=db_now_plus(0),
            )
            .returning(Trial.study_id)
        ).all()
        self._ended(s, sorted(set(failed_studies)))
        retried = s.execute(
            update(Trial)
            .where(expired)
            .values(
                state=TrialState.WAITING,
                attempt=Trial.attempt + 1,
                worker_id=None,
                lease_expires_at=None,
                started_at=None,
                reason="previous attempt's lease expired (worker lost)",
            )
        ).rowcount
        return len(failed_studies) + int(retried or 0)


def _is_connection_error(exc: DBAPIError) -> bool:
    return bool(exc.connection_invalidated) or isinstance(exc, OperationalError)
