"""One suggestion round, as it runs in the suggester process, with each study's history
kept in memory between rounds.

The coordinator sends a :class:`SuggestJob` (plain data: it pickles into a process pool)
and gets back :class:`~service.trial_store.NewTrial` rows ready to insert. The round reads
the study's history from the database itself: every trial's ``(id, state, value)`` (small
columns, one range of the ``(study_id, ...)`` index), and the parameters only of trials
this process has not seen yet (parameters never change once stored). The history is kept
encoded (:class:`~search_space.EncodedHistory`) per study, so a round costs the suggester's
own work plus that delta, not a re-encoding of thousands of trials. A study this process
has not seen (a fresh process, another coordinator's study, an evicted entry) is rebuilt
from the database: any coordinator can serve any study, and since the encoded history is
the same whichever way it was built, equal history and seed give equal suggestions.

Lag: every round re-reads the states, so a round never works from a history older than
its own read. What another coordinator inserts between that read and this coordinator's
insert is caught by the store, which never adds a configuration twice.

Failures cross the process boundary as plain one-line exceptions, because one that cannot
be unpickled breaks the pool: :class:`SuggesterFailed` (this study's space or options break
the suggester: the study is paused) and :class:`HistoryUnavailable` (the database could not
be read: nobody's fault, the refill is retried later).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from protocol.options import EvaluatorOptions
from search_space import (
    EncodedHistory,
    HistoryItem,
    InfeasibleArchitecture,
    ShapeReport,
    Space,
    get_suggester,
    validate,
    walk,
)

from .db import make_engine
from .models import Trial, TrialSource, TrialState
from .studies import space_from_document
from .trial_store import NewTrial

log = logging.getLogger(__name__)

# Studies whose encoded history one process keeps (least recently used dropped first).
# 10,000 trials of a 33-label space take a few MB.
CACHED_STUDIES = 32
# Above this many unseen trials one range read is cheaper than a long IN list.
_IN_LIST_MAX = 500


class SuggesterFailed(Exception):
    """A suggestion round failed for one study. ``args`` is just the one-line reason, so
    it pickles both ways."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HistoryUnavailable(Exception):
    """The suggester could not read the study's history (database away): not the
    study's fault. ``args`` is the one-line reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def one_line(exc: BaseException) -> str:
    """``"Type: message"`` on one line: what a study's ``error`` says."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class SuggestJob:
    """One round for one study, as plain data.

    Attributes:
        study_id: the study.
        study_key: what tells this study apart from a study of the same id in another
            database (URL, id and creation time): the cache key.
        database_url: where the history is read (password included: the job never leaves
            the coordinator's own processes).
        space: the study's space document.
        algorithm, options: the suggester and its options.
        evaluator_options: the study's evaluator options (cost caps for the pre-check).
        n: how many configurations are wanted.
        seed: the round's seed.
        history: given, the history is this (oldest first) and the database is not read
            and nothing cached: the plain-data form for tests and tools.
    """

    study_id: int
    study_key: str
    database_url: str
    space: dict[str, Any]
    algorithm: str
    options: dict[str, Any]
    evaluator_options: dict[str, Any]
    n: int
    seed: int
    history: tuple[HistoryItem, ...] | None = None


def new_trial(
    options: EvaluatorOptions,
    space: Space,
    raw: dict[str, Any],
    *,
    source: TrialSource = TrialSource.SUGGESTED,
    priority: int = 1,
) -> NewTrial:
    """Resolve ``raw`` to an architecture, hash it, and pre-check that it can be built
    within the study's cost caps (an unbuildable one is stored INFEASIBLE with its reason).

    Raises ``ValueError`` (or ``KeyError`` / ``TypeError`` / ``IndexError``) when ``raw``
    is not a point of ``space``.
    """
    arch = space.to_arch(raw, input_channels=options.input_channels, seed=options.filter_seed)
    reason = None
    cost: dict[str, Any] = {}
    try:
        cost = _cost(
            validate(
                arch,
                max_features=options.max_features,
                max_gflops_per_image=options.max_gflops_per_image,
                max_activation_mb_per_image=options.max_activation_mb_per_image,
            )
        )
    except InfeasibleArchitecture as exc:
        reason = exc.reason
        # A cap refused it, or a map vanished; in the first case the cost is still known.
        with contextlib.suppress(InfeasibleArchitecture):
            cost = _cost(walk(arch))
    return NewTrial(
        params=raw,
        arch=arch.to_dict(),
        config_hash=arch.content_hash(),
        seed=arch.seed,
        source=source,
        priority=priority,
        infeasible_reason=reason,
        **cost,
    )


def _cost(report: ShapeReport) -> dict[str, Any]:
    """A trial's cost columns from the architecture's walk."""
    return {
        "gflops_per_image": report.gflops,
        "n_params": report.n_params,
        "n_features": report.n_features,
    }


def watch_parent(interval: float = 1.0) -> None:
    """Pool ``initializer``: end this process once its coordinator is gone.

    A coordinator killed without its shutdown (SIGKILL, a crash) leaves its pool
    processes blocked on a queue that nobody will ever write to. ``PR_SET_PDEATHSIG``
    cannot be used: it follows the THREAD that started the process (a request thread,
    which the server retires when idle), not the coordinator process.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


# -- the process's state ----------------------------------------------------------------
_lock = threading.Lock()  # in-process rounds run in request threads
_engines: dict[tuple[int, str], Engine] = {}
_cache: OrderedDict[str, tuple[threading.Lock, EncodedHistory]] = OrderedDict()


def register_engine(url: str, engine: Engine) -> None:
    """Let rounds run in this process read through ``engine`` (the coordinator's own:
    an in-memory SQLite database exists only there). A pool process makes its own."""
    with _lock:
        _engines[(os.getpid(), url)] = engine


def _engine(url: str) -> Engine:
    key = (os.getpid(), url)  # never a connection pool inherited over fork
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url, pool_size=2, max_overflow=2)
        return engine


def _in_memory(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def _entry(key: str, space: Space) -> tuple[threading.Lock, EncodedHistory]:
    with _lock:
        entry = _cache.get(key)
        if entry is None:
            entry = _cache[key] = (threading.Lock(), EncodedHistory(space))
            while len(_cache) > CACHED_STUDIES:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
        return entry


def forget(study_key: str | None = None) -> None:
    """Drop the cached history of one study (all with ``None``): the next round rebuilds
    it from the database."""
    with _lock:
        if study_key is None:
            _cache.clear()
        else:
            for key in [k for k in _cache if k.startswith(f"{study_key}#")]:
                del _cache[key]


def _state_name(state: Any) -> str:
    return state.value if isinstance(state, TrialState) else str(state)


def read_history(engine: Engine, study_id: int, encoded: EncodedHistory) -> None:
    """Bring ``encoded`` up to the study's current search history (finals and blends left
    out): all states and values, the parameters of trials it does not know yet. One read
    transaction. Raises ``SQLAlchemyError``.

    With an ASHA schedule each configuration is one point, keyed by its rung-0 trial,
    whose value is the score at the configuration's highest COMPLETE rung (a promoted
    trial still running leaves the lower rung's score in place).
    """
    search = (Trial.study_id == study_id) & Trial.source.in_(
        [s.value for s in TrialSource.search()]
    )
    with engine.connect() as conn:
        everything = conn.execute(
            select(Trial.id, Trial.state, Trial.value, Trial.rung, Trial.rung_of_id)
            .where(search)
            .order_by(Trial.id)
        ).all()
        higher: dict[int, tuple[int, float]] = {}
        for _, state, value, rung, root in everything:
            complete = _state_name(state) == TrialState.COMPLETE.value
            if root is not None and complete and rung > higher.get(root, (-1, 0.0))[0]:
                higher[root] = (rung, value)
        rows = [
            (tid, state, higher[tid][1] if tid in higher else value)
            for tid, state, value, _, root in everything
            if root is None
        ]
        missing = encoded.missing([r[0] for r in rows])
        params: dict[int, Any] = {}
        if missing:
            query = select(Trial.id, Trial.params).where(search)
            if len(missing) <= _IN_LIST_MAX:
                query = query.where(Trial.id.in_(missing))
            else:
                query = query.where(Trial.id >= min(missing))
            params = {tid: raw for tid, raw in conn.execute(query)}
    encoded.sync([(tid, params.get(tid), _state_name(state), value) for tid, state, value in rows])


def run_job(job: SuggestJob) -> list[NewTrial]:
    """One round: up to ``job.n`` new trials for the study (fewer only when its space is
    used up). Raises only :class:`SuggesterFailed` or :class:`HistoryUnavailable`."""
    try:
        space = space_from_document(job.space)
        suggester = get_suggester(job.algorithm, **job.options)
        options = EvaluatorOptions.model_validate(job.evaluator_options)
    except Exception as exc:
        raise SuggesterFailed(one_line(exc)) from None
    try:
        if job.history is not None:
            encoded = EncodedHistory.from_history(space, job.history)
            raws = suggester.suggest_encoded(encoded, job.n, job.seed)
        else:
            raws = _cached_round(job, space, suggester)
        return [new_trial(options, space, raw) for raw in raws]
    except (HistoryUnavailable, SuggesterFailed):
        raise
    except Exception as exc:
        raise SuggesterFailed(one_line(exc)) from None


def _cached_round(job: SuggestJob, space: Space, suggester: Any) -> list[dict[str, Any]]:
    engine = _engine(job.database_url)
    if _in_memory(job.database_url):
        lock, encoded = threading.Lock(), EncodedHistory(space)
    else:
        lock, encoded = _entry(f"{job.study_key}#{space.digest()}", space)
    with lock:  # one round per study at a time: the encoded history is not thread-safe
        try:
            read_history(engine, job.study_id, encoded)
        except SQLAlchemyError as exc:
            raise HistoryUnavailable(one_line(getattr(exc, "orig", None) or exc)) from None
        return suggester.suggest_encoded(encoded, job.n, job.seed)


def run_suggester(
    space_doc: dict[str, Any],
    algorithm: str,
    options: dict[str, Any],
    history: Sequence[HistoryItem],
    n: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The raw suggestions of one round over a given history (no database, no cache).
    Raises only :class:`SuggesterFailed`."""
    try:
        space = space_from_document(space_doc)
        return get_suggester(algorithm, **options).suggest(space, list(history), n, seed=seed)
    except Exception as exc:
        raise SuggesterFailed(one_line(exc)) from None
