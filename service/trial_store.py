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

Concurrency: a claim is one UPDATE of up to N claimable rows, chosen with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the whole claim runs in a
``BEGIN IMMEDIATE`` transaction, so claims are serialised by the database's write lock.
Either way no trial is RUNNING for two workers, whatever the number of workers and
coordinator processes. Reports lock their trial rows (in id order) before they read them;
the reaper skips rows another transaction holds. Every worker-side transaction locks in
one order -- the worker row, then trial rows by id, then study rows by id (lifecycle) --
so none of them can deadlock another.

Batches: :meth:`TrialStore.claim_many`, :meth:`~TrialStore.report_many`,
:meth:`~TrialStore.heartbeat_many` and :meth:`~TrialStore.release_many` do for N trials
of one worker what the single methods do for one, each in one transaction with a fixed
number of statements (the single methods are the batch code with one trial). The
worker-side methods answer detached :class:`TrialRow` values read with ``UPDATE ...
RETURNING`` (Core, no ORM identity map), never live ORM objects.

Identity: given the caller (``caller=``, the API always passes it), every worker-side
method first marks the worker seen and checks that it belongs to the caller's token
(``workers.token_id``; see :mod:`service.auth`), in one statement: another token's worker
is :class:`~service.errors.Forbidden` (403, field ``worker_id``), and a revoked token is
:class:`~service.errors.Unauthorized` (401) at once, in the same transaction.

Scores: a reported value (complete, fail, heartbeat) must lie in the range of the study's
evaluator (:data:`SCORE_RANGES`), else :class:`~service.errors.InvalidInput` (field
``value``); a blend's complete report must carry its test score the same way (field
``metrics.test_value``), stored as the blend's ``test_value``.

Errors: :class:`~service.errors.NotFound` (no such trial / worker),
:class:`~service.errors.Conflict` (lost lease, wrong worker, contradicting report) and
:class:`~service.errors.Unavailable` (database unreachable) are raised; a batch report
carries each item's error in its outcome instead. A lost claim race is not an error (the
next candidate is taken, or fewer trials, or none, returned).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Literal, NoReturn

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    any_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    null,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import ARRAY

from . import lifecycle
from .auth import Caller
from .db import close_quietly, db_now_plus
from .errors import (
    ArchsearchError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unavailable,
)
from .models import ApiToken, Study, StudyState, Trial, TrialSource, TrialState, Worker
from .studies import evaluator_options, record_fingerprint

# Study ids whose trials finished in this transaction (Session.info key).
_ENDED = "archsearch.ended_studies"

# The one table of score ranges, by study evaluator (closed intervals). Every current
# evaluator reports an accuracy; a new evaluator must add its row here.
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "screen": (0.0, 1.0),
    "train": (0.0, 1.0),
    "pairs": (0.0, 1.0),
}


_TRIALS = Trial.__table__
_STUDIES = Study.__table__
_WORKERS = Worker.__table__
# Correlated subqueries for RETURNING clauses. SQLAlchemy writes SQLite's RETURNING
# columns without their table, subqueries included, and there an unqualified name means
# the innermost table that has it: so the outer row's columns are spelled out in full
# (literal_column), and the inner tables are aliases.
_TOKENS = ApiToken.__table__.alias("tok")
_REVOKED_AT = (
    select(_TOKENS.c.revoked_at)
    .where(_TOKENS.c.id == literal_column("workers.token_id"))
    .scalar_subquery()
)
_HELD = Trial.__table__.alias("held")
_HOLDS = (  # whether the worker holds a RUNNING trial
    select(_HELD.c.id)
    .where(_HELD.c.worker_id == literal_column("workers.id"), _HELD.c.state == TrialState.RUNNING)
    .exists()
)
_STUDY = _STUDIES.alias("st")
_STUDY_STATE = (
    select(_STUDY.c.state).where(_STUDY.c.id == literal_column("trials.study_id")).scalar_subquery()
)
_STUDY_FINGERPRINT = (
    select(_STUDY.c.dataset_fingerprint)
    .where(_STUDY.c.id == literal_column("trials.study_id"))
    .scalar_subquery()
)
# Trials a worker may claim: search trials of running studies, finals of studies that
# still run their finals (docs/design.md section 5).
_CLAIMABLE = _STUDIES.c.state.in_([s for s in StudyState if s.claims_search()]) | (
    _STUDIES.c.state.in_([s for s in StudyState if s.claims_finals()])
    & _TRIALS.c.source.in_([s.value for s in TrialSource.finals()])
)
_KIND_STATE = {
    "complete": TrialState.COMPLETE,
    "infeasible": TrialState.INFEASIBLE,
    "error": TrialState.FAILED,
    "pruned": TrialState.PRUNED,
}
_FACTS_CACHE_SIZE = 4096
_ID_ARRAY = ARRAY(BigInteger())


@dataclass(frozen=True, slots=True)
class TrialRow:
    """A trial row as stored, detached from any session: what the worker-side methods
    answer. Fields are the ``trials`` columns, in table order."""

    id: int
    study_id: int
    number: int
    state: TrialState
    priority: int
    source: str
    final_of_id: int | None
    params: dict[str, Any]
    arch: dict[str, Any] | None
    config_hash: str
    seed: int
    value: float | None
    test_value: float | None
    metrics: dict[str, Any]
    intermediate: list[Any]
    reason: str | None
    worker_id: int | None
    attempt: int
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rung: int
    rung_of_id: int | None
    gflops_per_image: float | None
    n_params: int | None
    n_features: int | None

    @property
    def is_final(self) -> bool:
        """A trial of the study's end phase (a final re-score or a blend)."""
        return TrialSource(self.source).is_final()


# A row of ``select(*_TRIALS.c)`` is a TrialRow's positional arguments.
assert [f.name for f in fields(TrialRow)] == [c.name for c in _TRIALS.c], "TrialRow drifted"


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """What claims and reports need of a study: its brief for the worker and its
    evaluator (the score range). ``evaluator_options`` are resolved (defaults filled,
    colour decided: :func:`service.studies.evaluator_options`)."""

    id: int
    name: str
    dataset: str
    dataset_fingerprint: str | None
    evaluator: str
    evaluator_options: dict[str, Any]
    seed: int
    schedule: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: Any) -> StudyFacts:
        # evaluator_options() reads .evaluator_options and .dataset of the row.
        options = evaluator_options(row).model_dump()
        return cls(
            row.id,
            row.name,
            row.dataset,
            row.dataset_fingerprint,
            row.evaluator,
            options,
            row.seed,
            row.schedule,
        )


_FACT_COLUMNS = [
    _STUDIES.c[name]
    for name in (
        "id",
        "name",
        "dataset",
        "dataset_fingerprint",
        "evaluator",
        "evaluator_options",
        "seed",
        "schedule",
    )
]


@dataclass(frozen=True, slots=True)
class Claimed:
    """The answer of :meth:`TrialStore.claim_many`: the trials (the worker's own first,
    then new ones in queue order) and the facts of their studies."""

    trials: list[TrialRow]
    studies: dict[int, StudyFacts]


@dataclass(frozen=True, slots=True)
class Beat:
    """The answer of :meth:`TrialStore.beat`: the trial, its study's state (for the
    heartbeat's action) and the study's facts."""

    trial: TrialRow
    study_state: StudyState
    study: StudyFacts


@dataclass(frozen=True, slots=True)
class BeatBrief:
    """One held trial of :meth:`TrialStore.heartbeat_many`."""

    trial_id: int
    study_id: int
    source: str
    lease_expires_at: datetime
    study_state: StudyState

    @property
    def is_final(self) -> bool:
        return TrialSource(self.source).is_final()


@dataclass(frozen=True, slots=True)
class Report:
    """One result to record: ``kind`` "complete" (``value`` and ``metrics``) or a fail
    kind (``reason``, ``value`` optional); ``fingerprint`` the worker's data hash."""

    trial_id: int
    kind: Literal["complete", "infeasible", "error", "pruned"]
    value: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What became of one :class:`Report`: the stored ``trial`` (``first`` False for a
    repeat of the stored result), or the ``error`` that refused it."""

    trial_id: int
    trial: TrialRow | None
    first: bool = False
    error: ArchsearchError | None = None


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
    # ASHA: the rung, and for a promoted configuration (rung > 0) its rung-0 trial.
    rung: int = 0
    rung_of_id: int | None = None
    # The candidate's cost per image (search_space.arch.walk); None when unknown.
    gflops_per_image: float | None = None
    n_params: int | None = None
    n_features: int | None = None


def blend_hash(weights: str, member_ids: Sequence[int]) -> str:
    """The ``config_hash`` of a blend: the same members (in order) and weights are the
    same blend, which the unique (study_id, config_hash) keeps from being queued twice."""
    key = f"blend:{weights}:{','.join(str(i) for i in member_ids)}"
    return hashlib.sha256(key.encode()).hexdigest()


def _cost_sum(costs: Sequence[float | int | None]) -> Any:
    # A blend extracts every member's features: its cost is theirs added up.
    return None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]


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
        # Study facts by id (see study_facts); per store, so per database.
        self._facts: dict[int, StudyFacts] = {}
        # The worker-side statements, built once (see _statement); lease_seconds and
        # max_attempts are baked into them, so both are fixed once the store exists.
        self._statements: dict[str, Any] = {}

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
                rung=item.rung,
                rung_of_id=item.rung_of_id,
                gflops_per_image=item.gflops_per_image,
                n_params=item.n_params,
                n_features=item.n_features,
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
                gflops_per_image=t.gflops_per_image,
                n_params=t.n_params,
                n_features=t.n_features,
            )
            for t in top
        ]
        return self.add_trials(session, study_id, new)

    def add_blend(
        self, session: Session, study_id: int, members: Sequence[Trial], weights: str
    ) -> Trial | None:
        """Queue a blend of ``members`` (search trials, best first) ahead of everything
        else, unless the same blend (members in that order and weights) is already a trial
        of the study: then ``None``. Only :mod:`service.lifecycle` calls it.

        The row (docs/design.md section 5): source ``blend``, params ``{"members": [trial
        ids], "weights": ...}``, arch ``{"members": [their architectures]}``, the cost
        columns the members' sums (unknown when one member's is). Raises ``ValueError`` for
        no members."""
        if not members:
            raise ValueError("a blend needs at least one member")
        ids = [t.id for t in members]
        item = NewTrial(
            params={"members": ids, "weights": weights},
            arch={"members": [t.arch for t in members]},
            config_hash=blend_hash(weights, ids),
            seed=members[0].seed,
            source=TrialSource.BLEND,
            priority=0,
            gflops_per_image=_cost_sum([t.gflops_per_image for t in members]),
            n_params=_cost_sum([t.n_params for t in members]),
            n_features=_cost_sum([t.n_features for t in members]),
        )
        added = self.add_trials(session, study_id, [item])
        return added[0] if added else None

    # -- worker side: shared steps ---------------------------------------------------------
    def _touch_worker(
        self, s: Session, worker_id: int, caller: Caller | None, *, holds: bool = False
    ) -> bool | None:
        """Mark the worker seen now and refuse a caller acting for a worker registered by
        another token (403) or with a revoked token (401), in one statement. Returns
        ``None`` when the worker does not exist, else (with ``holds``) whether it holds a
        RUNNING trial, or True. ``caller=None`` (in-process use) skips the identity check.

        Takes the worker row's lock (PostgreSQL) for the rest of the transaction: the
        worker's own requests (a heartbeat thread and the main loop) are serialised, and
        every worker-side transaction locks worker -> trials (id order) -> studies, one
        order, so they cannot deadlock.
        """
        stmt = self._statement(
            f"touch holds={holds}",
            lambda: (
                update(_WORKERS)
                .where(_WORKERS.c.id == bindparam("b_worker"))
                .values(last_seen_at=db_now_plus(0))
                .returning(_WORKERS.c.token_id, _REVOKED_AT, _HOLDS if holds else literal(True))
            ),
        )
        row = s.execute(stmt, {"b_worker": worker_id}).first()
        if row is None:
            return None
        token_id, revoked_at, holding = row
        if caller is None:
            return bool(holding)
        if token_id != caller.token_id:
            raise Forbidden(
                f"worker {worker_id} was registered with another token; a token may act "
                "only for the workers it registered",
                field="worker_id",
            )
        if revoked_at is not None:
            raise Unauthorized("unknown or revoked token", field="Authorization")
        return bool(holding)

    def _known_worker(
        self, s: Session, worker_id: int, caller: Caller | None, *, holds: bool = False
    ) -> bool:
        holding = self._touch_worker(s, worker_id, caller, holds=holds)
        if holding is None:
            raise NotFound(f"worker {worker_id} is not registered", field="worker_id")
        return holding

    def study_facts(
        self,
        s: Session,
        study_ids: Iterable[int],
        fingerprints: dict[int, str | None] | None = None,
    ) -> dict[int, StudyFacts]:
        """The :class:`StudyFacts` of these studies (unknown ids are left out).

        Cached per store (per database): everything but the dataset fingerprint is fixed
        at creation, and the fingerprint, once set by the first report, never changes.
        Studies not cached yet are read in one query. A cached fingerprint that is still
        unknown is taken from ``fingerprints`` (read in the caller's statement) when
        given: what a claim answers is never staler than the database.
        """
        wanted = set(study_ids)
        found = {i: f for i in wanted if (f := self._facts.get(i)) is not None}
        stale = [i for i in wanted if i not in found]
        if stale:
            rows = s.execute(select(*_FACT_COLUMNS).where(_STUDIES.c.id.in_(stale))).all()
            if len(self._facts) > _FACTS_CACHE_SIZE:
                self._facts.clear()  # bounded; refilled on demand
            for row in rows:
                found[row.id] = self._facts[row.id] = StudyFacts.of(row)
        for i, fingerprint in (fingerprints or {}).items():
            known = found.get(i)
            if known is not None and known.dataset_fingerprint is None and fingerprint:
                found[i] = self._facts[i] = replace(known, dataset_fingerprint=fingerprint)
        return found

    def _check_range(self, facts: StudyFacts, value: float | None) -> None:
        """The value must lie in the score range of the study's evaluator (422)."""
        if value is None:
            return
        low, high = SCORE_RANGES.get(facts.evaluator, (-math.inf, math.inf))
        if not (math.isfinite(value) and low <= value <= high):
            raise InvalidInput(
                f"value {value!r} is outside [{low}, {high}], the score range of the "
                f"{facts.evaluator} evaluator",
                field="value",
            )

    def _check_blend_test_value(self, facts: StudyFacts, metrics: dict[str, Any]) -> None:
        """A blend's result carries its test score (``metrics["test_value"]``), a finite
        number in the evaluator's range: stored as the blend's ``test_value``, it is the
        blend's end result. Anything else is :class:`InvalidInput` (field
        ``metrics.test_value``)."""
        test = metrics.get("test_value")
        low, high = SCORE_RANGES.get(facts.evaluator, (-math.inf, math.inf))
        if (
            isinstance(test, bool)
            or not isinstance(test, int | float)
            or not (math.isfinite(test) and low <= test <= high)
        ):
            raise InvalidInput(
                f"a blend's complete report needs metrics.test_value, its test score: a "
                f"number in [{low}, {high}] (the {facts.evaluator} evaluator's range); "
                f"got {test!r}",
                field="metrics.test_value",
            )

    def _statement(self, key: str, build: Callable[[], Any]) -> Any:
        """The statement ``key``, built by ``build`` once per store. Building SQLAlchemy
        expressions costs more than running the cached SQL of a small statement; what
        changes per call is a bind parameter (named ``b_*``: an UPDATE takes parameters
        named like its columns as SET values)."""
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

    def _held(self) -> ColumnElement[bool]:
        """``trials.id`` is one of the trials ``b_ids`` (a list) that worker ``b_worker``
        holds (RUNNING, its worker), rows locked in id order."""
        t = _TRIALS.c
        return self._among(
            select(t.id)
            .where(
                t.id.in_(bindparam("b_ids", expanding=True)),
                t.worker_id == bindparam("b_worker"),
                t.state == TrialState.RUNNING,
            )
            .order_by(t.id)
            .with_for_update()
        )

    def _among(self, ids: Select[Any]) -> ColumnElement[bool]:
        """``trials.id`` is one of the ids the subquery ``ids`` selects, the subquery run
        once, before the UPDATE that uses this touches any row. On PostgreSQL that is
        ``= ANY(ARRAY(subquery))`` (an InitPlan): ``IN (subquery)`` may be planned as a
        semi-join that runs a ``LIMIT ... FOR UPDATE SKIP LOCKED`` subquery again for each
        row and so claims more rows than asked for."""
        if self._postgres:
            return _TRIALS.c.id == any_(func.array(ids.scalar_subquery(), type_=_ID_ARRAY))
        return _TRIALS.c.id.in_(ids)

    def _not_held(self, s: Session, trial_id: int, worker_id: int, verb: str) -> NoReturn:
        """Raise the error for a trial the worker does not hold: :class:`NotFound` when it
        does not exist, else :class:`Conflict` naming its state."""
        row = s.execute(
            select(_TRIALS.c.state, _TRIALS.c.attempt).where(_TRIALS.c.id == trial_id)
        ).first()
        if row is None:
            raise NotFound(f"trial {trial_id} does not exist", field="trial_id")
        raise _lease_conflict(trial_id, worker_id, verb, TrialState(row.state), row.attempt)

    # -- claims -----------------------------------------------------------------------------
    def claim(
        self,
        worker_id: int,
        study_ids: Sequence[int] | None = None,
        exclude: Sequence[int] | None = None,
        *,
        caller: Caller | None = None,
    ) -> TrialRow | None:
        """Give the worker a trial: its own RUNNING one if it has one, else the next WAITING
        trial of a running study (or a final evaluation of a stopped one).

        :meth:`claim_many` with ``max_trials=1``; ``None`` when nothing is waiting. Raises
        :class:`NotFound` for an unknown worker, :class:`Forbidden` for another token's.
        """
        claimed = self.claim_many(worker_id, 1, study_ids, exclude, caller=caller)
        return claimed.trials[0] if claimed.trials else None

    def claim_many(
        self,
        worker_id: int,
        max_trials: int,
        study_ids: Sequence[int] | None = None,
        exclude: Sequence[int] | None = None,
        *,
        caller: Caller | None = None,
    ) -> Claimed:
        """Claim up to ``max_trials`` trials for the worker, each with its own lease (now +
        ``lease_seconds``), in one transaction.

        First come the worker's own RUNNING trials (a worker whose previous answer was
        lost gets back what it holds, leases renewed), by id; then WAITING trials of
        running studies (finals also of finishing and stopped ones), by priority and id,
        up to ``max_trials`` in all. Expired leases are reaped first. Each trial goes to
        exactly one worker: candidates are locked ``FOR UPDATE SKIP LOCKED`` on
        PostgreSQL (concurrent claims take different rows), and SQLite serialises writers.

        Any caller may use it; ``caller`` (the API passes it) must own the worker.
        Raises :class:`NotFound` (unknown worker), :class:`Forbidden` (another token's
        worker), :class:`Unauthorized` (revoked token), :class:`Unavailable`.
        """
        if max_trials < 1:
            raise InvalidInput("max_trials must be at least 1", field="max_trials")
        with self.transaction() as s:
            # The worker row first (the lock order of every worker-side transaction; the
            # reaper then only skips rows others hold). It also says whether the worker
            # holds anything: a worker claims when it has nothing to do, so the renewal
            # below is usually skipped.
            holds = self._known_worker(s, worker_id, caller, holds=True)
            self._reap(s)
            own: list[Any] = []
            if holds:
                own = s.execute(
                    self._statement("renew own", self._renew_own),
                    {"b_worker": worker_id, "b_n": max_trials},
                ).all()
                own.sort(key=lambda r: r[0])
            need = max_trials - len(own)
            new: list[Any] = []
            if need > 0:
                studies, excluded = bool(study_ids), bool(exclude)
                stmt = self._statement(
                    f"claim studies={studies} exclude={excluded}",
                    lambda: self._claim_new(studies, excluded),
                )
                params: dict[str, Any] = {"b_worker": worker_id, "b_n": need}
                if studies:
                    params["b_studies"] = list(study_ids or ())
                if excluded:
                    params["b_exclude"] = list(exclude or ())
                new = s.execute(stmt, params).all()
                new.sort(key=lambda r: (r.priority, r.id))
            rows = own + new
            trials = [TrialRow(*r[:-1]) for r in rows]
            fingerprints = {r.study_id: r[-1] for r in rows}
            studies = self.study_facts(s, fingerprints, fingerprints) if rows else {}
            return Claimed(trials, studies)

    def _renew_own(self) -> Any:
        """UPDATE: renew the leases of the first ``b_n`` RUNNING trials of worker
        ``b_worker``, by id; RETURNING them with their study's fingerprint."""
        t = _TRIALS.c
        own = (
            select(t.id)
            .where(t.worker_id == bindparam("b_worker"), t.state == TrialState.RUNNING)
            .order_by(t.id)
            .limit(bindparam("b_n"))
            .with_for_update()
        )
        return (
            update(_TRIALS)
            .where(
                self._among(own),
                t.worker_id == bindparam("b_worker"),
                t.state == TrialState.RUNNING,
            )
            .values(lease_expires_at=db_now_plus(self.lease_seconds))
            .returning(*_TRIALS.c, _STUDY_FINGERPRINT)
        )

    def _claim_new(self, studies: bool, exclude: bool) -> Any:
        """UPDATE: the first ``b_n`` claimable WAITING trials (by priority, id; only of
        studies ``b_studies``, none of ``b_exclude``) become RUNNING for ``b_worker``;
        RETURNING them with their study's fingerprint."""
        t = _TRIALS.c
        candidates = (
            select(t.id)
            .join(_STUDIES, _STUDIES.c.id == t.study_id)
            .where(t.state == TrialState.WAITING, _CLAIMABLE)
            .order_by(t.priority, t.id)
            .limit(bindparam("b_n"))
            .with_for_update(skip_locked=True, of=_TRIALS)
        )
        if studies:
            candidates = candidates.where(t.study_id.in_(bindparam("b_studies", expanding=True)))
        if exclude:
            candidates = candidates.where(t.study_id.not_in(bindparam("b_exclude", expanding=True)))
        return (
            update(_TRIALS)
            .where(self._among(candidates), t.state == TrialState.WAITING)
            .values(
                state=TrialState.RUNNING,
                worker_id=bindparam("b_worker"),
                lease_expires_at=db_now_plus(self.lease_seconds),
                started_at=db_now_plus(0),
            )
            .returning(*_TRIALS.c, _STUDY_FINGERPRINT)
        )

    # -- heartbeats ---------------------------------------------------------------------------
    def heartbeat(
        self,
        trial_id: int,
        worker_id: int,
        step: int | None = None,
        value: float | None = None,
        *,
        caller: Caller | None = None,
    ) -> TrialRow:
        """Extend the lease; record ``(step, value)`` as an intermediate value if given
        (not again when it is the last one recorded: a repeated heartbeat).

        Raises :class:`Conflict` when the worker no longer holds the trial,
        :class:`NotFound` for an unknown trial, :class:`InvalidInput` for a value outside
        the evaluator's range.
        """
        return self.beat(trial_id, worker_id, step, value, caller=caller).trial

    def beat(
        self,
        trial_id: int,
        worker_id: int,
        step: int | None = None,
        value: float | None = None,
        *,
        caller: Caller | None = None,
    ) -> Beat:
        """:meth:`heartbeat`, also answering the state of the trial's study (what the
        heartbeat's ``action`` is decided from) and the study's facts."""
        t = _TRIALS.c
        params: dict[str, Any] = {"b_ids": [trial_id], "b_worker": worker_id}
        with self.transaction() as s:
            self._touch_worker(s, worker_id, caller)
            extend = self._statement(
                "beat",
                lambda: (
                    update(_TRIALS)
                    .where(self._held())
                    .values(lease_expires_at=db_now_plus(self.lease_seconds))
                    .returning(*_TRIALS.c, _STUDY_STATE)
                ),
            )
            if value is not None:
                # The value is checked against the study's range before anything changes,
                # and appended to the intermediate values read under the row lock.
                read = self._statement(
                    "beat read", lambda: select(t.study_id, t.intermediate).where(self._held())
                )
                row = s.execute(read, params).first()
                if row is None:
                    self._not_held(s, trial_id, worker_id, "heartbeat")
                self._check_range(self.study_facts(s, [row.study_id])[row.study_id], value)
                extend = self._statement(
                    "beat value",
                    lambda: (
                        update(_TRIALS)
                        .where(self._held())
                        .values(
                            lease_expires_at=db_now_plus(self.lease_seconds),
                            intermediate=bindparam("b_intermediate"),
                        )
                        .returning(*_TRIALS.c, _STUDY_STATE)
                    ),
                )
                # A heartbeat sent again after its answer was lost must not record the
                # value twice (the median rule reads one value per step).
                seen = bool(row.intermediate) and list(row.intermediate[-1]) == [step, value]
                params["b_intermediate"] = (
                    row.intermediate if seen else [*row.intermediate, [step, value]]
                )
            got = s.execute(extend, params).first()
            if got is None:
                self._not_held(s, trial_id, worker_id, "heartbeat")
            trial = TrialRow(*got[:-1])
            facts = self.study_facts(s, [trial.study_id])[trial.study_id]
            return Beat(trial, StudyState(got[-1]), facts)

    def heartbeat_many(
        self, worker_id: int, trial_ids: Sequence[int], *, caller: Caller | None = None
    ) -> tuple[list[BeatBrief], list[int]]:
        """Extend the leases of those of ``trial_ids`` the worker holds, in one statement.

        Returns ``(held, lost)``: for each held trial its new lease and its study's state,
        by trial id; ``lost`` lists the ids it does not hold (finished, reaped, another
        worker's, unknown), ascending. Raises :class:`NotFound` for an unknown worker and
        the identity errors of :meth:`claim_many`.
        """
        t = _TRIALS.c
        ids = sorted(set(trial_ids))
        with self.transaction() as s:
            self._known_worker(s, worker_id, caller)
            stmt = self._statement(
                "heartbeat many",
                lambda: (
                    update(_TRIALS)
                    .where(self._held())
                    .values(lease_expires_at=db_now_plus(self.lease_seconds))
                    .returning(t.id, t.study_id, t.source, t.lease_expires_at, _STUDY_STATE)
                ),
            )
            rows = s.execute(stmt, {"b_ids": ids, "b_worker": worker_id}).all()
        held = sorted(
            (BeatBrief(r[0], r[1], r[2], r[3], StudyState(r[4])) for r in rows),
            key=lambda b: b.trial_id,
        )
        got = {b.trial_id for b in held}
        return held, [i for i in ids if i not in got]

    # -- reports ------------------------------------------------------------------------------
    def complete(
        self,
        trial_id: int,
        worker_id: int,
        value: float,
        metrics: dict[str, Any],
        fingerprint: str | None = None,
        *,
        caller: Caller | None = None,
    ) -> tuple[TrialRow, bool]:
        """Record the score. Returns ``(trial, first)``; ``first`` is False for a repeat.

        ``fingerprint`` (the worker's dataset hash) becomes the study's if it has none.
        Idempotent: the same worker reporting the same value again gets the stored trial.
        Raises :class:`Conflict` for a different second result, a report on a FAILED /
        INFEASIBLE / PRUNED trial, or a worker that lost its lease.
        """
        if not math.isfinite(value):
            raise ValueError("value must be finite")
        report = Report(trial_id, "complete", value, metrics, None, fingerprint)
        return self._report_one(worker_id, report, caller)

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
    ) -> tuple[TrialRow, bool]:
        """End the trial INFEASIBLE, FAILED (``error``) or PRUNED. Same contract as complete.

        A worker-reported error is final (a deterministic crash would only repeat); a lost
        worker is retried by the reaper instead.
        """
        return self._report_one(
            worker_id, Report(trial_id, kind, value, {}, reason, fingerprint), caller
        )

    def _report_one(
        self, worker_id: int, report: Report, caller: Caller | None
    ) -> tuple[TrialRow, bool]:
        with self.transaction() as s:
            # The single routes never said 404 for an unknown worker: its report meets
            # a trial it does not hold (409), as before.
            self._touch_worker(s, worker_id, caller)
            (outcome,) = self._report(s, worker_id, [report])
        if outcome.error is not None:
            raise outcome.error
        assert outcome.trial is not None
        return outcome.trial, outcome.first

    def report_many(
        self, worker_id: int, reports: Sequence[Report], *, caller: Caller | None = None
    ) -> list[ReportOutcome]:
        """Record several results of one worker in one transaction; one outcome per
        report, in order.

        Each report follows the rules of :meth:`complete` / :meth:`fail` on its own: a
        refused one (unknown trial -> :class:`NotFound`, lost lease or contradicting
        result -> :class:`Conflict`, score out of range -> :class:`InvalidInput`) carries
        its error and changes nothing, the others are stored all the same. Raises (for
        the whole request) :class:`NotFound` for an unknown worker and the identity
        errors of :meth:`claim_many`.
        """
        with self.transaction() as s:
            self._known_worker(s, worker_id, caller)
            return self._report(s, worker_id, reports)

    def _report(self, s: Session, worker_id: int, reports: Sequence[Report]) -> list[ReportOutcome]:
        t = _TRIALS.c
        if not reports:
            return []
        # Lock every trial of the batch at once, in id order, and read the database clock
        # once: finished_at of this transaction's reports.
        lock = self._statement(
            "report lock",
            lambda: (
                select(*_TRIALS.c, db_now_plus(0))
                .where(t.id.in_(bindparam("b_ids", expanding=True)))
                .order_by(t.id)
                .with_for_update()
            ),
        )
        rows = s.execute(lock, {"b_ids": sorted({r.trial_id for r in reports})}).all()
        now = rows[0][-1] if rows else None
        stored = {r[0]: TrialRow(*r[:-1]) for r in rows}
        facts = self.study_facts(s, {r.study_id for r in stored.values()})
        outcomes: list[ReportOutcome] = []
        accepted: dict[int, tuple[TrialRow, Report]] = {}
        for report in reports:
            trial = stored.get(report.trial_id)
            try:
                if trial is None:
                    raise NotFound(f"trial {report.trial_id} does not exist", field="trial_id")
                self._check_range(facts[trial.study_id], report.value)
                if report.kind == "complete" and trial.source == TrialSource.BLEND:
                    self._check_blend_test_value(facts[trial.study_id], report.metrics)
                if _is_repeat(trial, report, worker_id):
                    outcomes.append(ReportOutcome(report.trial_id, trial, first=False))
                    continue
                _check_reportable(trial, report, worker_id)
            except ArchsearchError as exc:
                outcomes.append(ReportOutcome(report.trial_id, None, error=exc))
                continue
            done = replace(
                trial,
                state=_KIND_STATE[report.kind],
                value=trial.value if report.value is None else report.value,
                metrics=report.metrics if report.kind == "complete" else trial.metrics,
                reason=trial.reason if report.kind == "complete" else report.reason,
                test_value=_reported_test_value(trial, report),
                lease_expires_at=None,
                finished_at=now,
            )
            stored[trial.id] = done  # a second report of it in this batch sees it ended
            accepted[trial.id] = (done, report)
            outcomes.append(ReportOutcome(report.trial_id, done, first=True))
        if accepted:
            self._store_reports(s, list(accepted.values()), facts)
        return outcomes

    def _store_reports(
        self,
        s: Session,
        accepted: list[tuple[TrialRow, Report]],
        facts: dict[int, StudyFacts],
    ) -> None:
        """Write checked results: one executemany for the trials, the search trials'
        ``test_value`` for finals and a blend's own, the first fingerprint of a study that
        has none."""
        t = _TRIALS.c
        store = self._statement(
            "report store",
            lambda: (
                update(_TRIALS)
                .where(t.id == bindparam("b_id"))
                .values(
                    state=bindparam("b_state"),
                    value=bindparam("b_value"),
                    metrics=bindparam("b_metrics"),
                    reason=bindparam("b_reason"),
                    lease_expires_at=None,
                    finished_at=bindparam("b_finished_at"),
                )
            ),
        )
        rows = [
            {
                "b_id": done.id,
                "b_state": done.state,
                "b_value": done.value,
                "b_metrics": done.metrics,
                "b_reason": done.reason,
                "b_finished_at": done.finished_at,
            }
            for done, _ in accepted
        ]
        # One row is a plain execute: the driver's executemany has a set-up cost of its own.
        s.execute(store, rows[0] if len(rows) == 1 else rows)
        # A final evaluation's score is the search trial's test score; a blend reports
        # its own test score (checked in _report) beside its validation value.
        finals = [
            {"b_id": done.final_of_id, "b_test_value": done.value}
            for done, _ in accepted
            if done.final_of_id is not None and done.state == TrialState.COMPLETE
        ] + [
            {"b_id": done.id, "b_test_value": done.test_value}
            for done, _ in accepted
            if done.source == TrialSource.BLEND and done.state == TrialState.COMPLETE
        ]
        if finals:
            test_value = self._statement(
                "report test_value",
                lambda: (
                    update(_TRIALS)
                    .where(t.id == bindparam("b_id"))
                    .values(test_value=bindparam("b_test_value"))
                ),
            )
            s.execute(test_value, finals)
        fingerprints: dict[int, str] = {}
        for done, report in accepted:
            if report.fingerprint and facts[done.study_id].dataset_fingerprint is None:
                fingerprints.setdefault(done.study_id, report.fingerprint)
        for study_id, fingerprint in fingerprints.items():
            record_fingerprint(s, study_id, fingerprint)
        self._ended(s, sorted({done.study_id for done, _ in accepted}))

    # -- releases -----------------------------------------------------------------------------
    def release(self, trial_id: int, worker_id: int, *, caller: Caller | None = None) -> TrialRow:
        """Give a RUNNING trial back at once (worker shutting down, data mismatch): it is
        WAITING again with ``attempt + 1``, or FAILED when that was its last attempt (a
        trial every worker gives back must not circle for ever).

        Releasing a trial the worker no longer holds raises :class:`Conflict` (and an
        unknown trial :class:`NotFound`).
        """
        with self.transaction() as s:
            self._touch_worker(s, worker_id, caller)
            released = self._release(s, [trial_id], worker_id, unstarted=False)
            if not released:
                self._not_held(s, trial_id, worker_id, "release")
            return released[0]

    def release_many(
        self,
        worker_id: int,
        trial_ids: Sequence[int],
        *,
        unstarted: bool = False,
        caller: Caller | None = None,
    ) -> tuple[list[TrialRow], list[int]]:
        """Give back those of ``trial_ids`` the worker holds, in one statement.

        As :meth:`release`, or, with ``unstarted`` (the worker never began them: the
        rest of a batch it will not get to), WAITING again with the attempt unchanged: an
        attempt counts a try, and these were not tried. Returns ``(released, lost)``,
        ``lost`` being the ids the worker did not hold. Raises :class:`NotFound` for an
        unknown worker and the identity errors of :meth:`claim_many`.
        """
        ids = sorted(set(trial_ids))
        with self.transaction() as s:
            self._known_worker(s, worker_id, caller)
            released = self._release(s, ids, worker_id, unstarted=unstarted)
        got = {r.id for r in released}
        return released, [i for i in ids if i not in got]

    def _release(
        self, s: Session, trial_ids: Sequence[int], worker_id: int, *, unstarted: bool
    ) -> list[TrialRow]:
        stmt = self._statement(f"release unstarted={unstarted}", lambda: self._give_back(unstarted))
        rows = s.execute(stmt, {"b_ids": list(trial_ids), "b_worker": worker_id}).all()
        released = sorted((TrialRow(*r) for r in rows), key=lambda r: r.id)
        self._ended(s, sorted({r.study_id for r in released if r.state.is_finished()}))
        return released

    def _give_back(self, unstarted: bool) -> Any:
        """UPDATE: the trials ``b_ids`` that worker ``b_worker`` holds go back: WAITING
        with the attempt unchanged when ``unstarted``, else as :meth:`_retry_or_fail`."""
        if unstarted:
            values: dict[str, Any] = {
                "state": TrialState.WAITING,
                "worker_id": None,
                "lease_expires_at": None,
                "started_at": None,
                "reason": "given back unstarted by its worker",
            }
        else:
            values = self._retry_or_fail(
                f"released by its worker on all {self.max_attempts} attempts",
                "previous attempt was released by its worker",
            )
        return update(_TRIALS).where(self._held()).values(**values).returning(*_TRIALS.c)

    def _retry_or_fail(self, failed_reason: str, retry_reason: str) -> dict[str, Any]:
        """SET values that return a RUNNING trial to WAITING with ``attempt + 1``, or end
        it FAILED when it was on its last attempt (it keeps its worker then)."""
        t = _TRIALS.c
        last = t.attempt >= self.max_attempts
        return {
            "state": case((last, TrialState.FAILED.value), else_=TrialState.WAITING.value),
            "attempt": case((last, t.attempt), else_=t.attempt + 1),
            "worker_id": case((last, t.worker_id), else_=null()),
            "reason": case((last, literal(failed_reason)), else_=literal(retry_reason)),
            "lease_expires_at": None,
            "started_at": case((last, t.started_at), else_=null()),
            "finished_at": case((last, db_now_plus(0)), else_=t.finished_at),
        }

    def reap_expired(self) -> int:
        """Return RUNNING trials whose lease ran out to WAITING (attempt + 1), or FAILED.

        Returns the number of trials reaped. Any process may call it at any time.
        """
        with self.transaction() as s:
            return self._reap(s)

    def _reap_expired(self) -> Any:
        """UPDATE: every RUNNING trial whose lease ran out goes back (or ends FAILED, see
        :meth:`_retry_or_fail`); RETURNING study id and new state."""
        t = _TRIALS.c
        expired = select(t.id).where(
            t.state == TrialState.RUNNING, t.lease_expires_at < db_now_plus(0)
        )
        if self._postgres:
            # (On SQLite, writers are serialised, and an ORDER BY id there makes the
            # planner walk the whole table in id order instead of the lease index.)
            expired = expired.order_by(t.id).with_for_update(skip_locked=True)
        return (
            update(_TRIALS)
            .where(self._among(expired), t.state == TrialState.RUNNING)
            .values(
                **self._retry_or_fail(
                    f"lease expired on all {self.max_attempts} attempts (worker lost)",
                    "previous attempt's lease expired (worker lost)",
                )
            )
            .returning(t.study_id, t.state)
        )

    def _reap(self, s: Session) -> int:
        # One statement for both outcomes. SKIP LOCKED: a trial whose row another
        # transaction holds (its worker's report or heartbeat in flight) is left to that
        # transaction, and the reaper never waits on, or deadlocks with, anybody.
        rows = s.execute(self._statement("reap", self._reap_expired)).all()
        self._ended(s, sorted({sid for sid, state in rows if state == TrialState.FAILED}))
        return len(rows)


def _lease_conflict(
    trial_id: int, worker_id: int, verb: str, state: TrialState, attempt: int
) -> Conflict:
    return Conflict(
        f"cannot {verb} trial {trial_id}: worker {worker_id} does not hold its lease "
        f"(state {state.value}, attempt {attempt})",
        field="worker_id",
    )


def _reported_test_value(trial: TrialRow, report: Report) -> float | None:
    # A blend's complete report carries its own test score (checked in _report); a final
    # re-score's value is written to its search trial instead (_store_reports).
    if report.kind == "complete" and trial.source == TrialSource.BLEND:
        return float(report.metrics["test_value"])
    return trial.test_value


def _is_repeat(trial: TrialRow, report: Report, worker_id: int) -> bool:
    """The same worker sending the same result again (its answer was lost)."""
    if trial.worker_id != worker_id:
        return False
    if report.kind == "complete":
        return trial.state == TrialState.COMPLETE and trial.value == report.value
    return trial.state == _KIND_STATE[report.kind]


def _check_reportable(trial: TrialRow, report: Report, worker_id: int) -> None:
    """Raise :class:`Conflict` unless the worker may end this trial with this report."""
    if report.kind == "complete" and trial.state == TrialState.COMPLETE:
        raise Conflict(
            f"trial {trial.id} is already COMPLETE with value {trial.value} "
            f"(by worker {trial.worker_id}); a different result is refused",
            field="value",
        )
    if report.kind != "complete" and trial.state.is_finished():
        raise Conflict(
            f"trial {trial.id} already ended {trial.state.value}; "
            f"a {report.kind} report is refused",
            field="kind",
        )
    if trial.state != TrialState.RUNNING or trial.worker_id != worker_id:
        verb = "complete" if report.kind == "complete" else f"report {report.kind} for"
        raise _lease_conflict(trial.id, worker_id, verb, trial.state, trial.attempt)


def _is_connection_error(exc: DBAPIError) -> bool:
    return bool(exc.connection_invalidated) or isinstance(exc, OperationalError)
