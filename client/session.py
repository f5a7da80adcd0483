"""Ask/tell: a user's own script as a worker of one study (docs/design.md section 7).

::

    with Client(url, token) as client:
        session = client.study_session(study_id)
        for trial in session.trials():           # claim, one at a time, until none waits
            with trial:                           # lease held, heart-beaten in a thread
                arch = trial.arch                 # Architecture dict of the candidate
                for epoch in range(3):
                    trial.report(epoch + 1, score)  # raises TrialPruned / TrialStopped
                trial.complete(score)             # raises TrialLost (409) if not ours

The session registers one worker (``register_worker``) on first use and claims with the
study filter (``claim_many(worker, 1, study=[id])``), exactly as a worker daemon does, so
the coordinator sees nothing new: the lease, the reaper, prune and stop all apply.

Leaving the ``with`` block:

* after :meth:`AskedTrial.complete` or :meth:`AskedTrial.fail`: nothing more to do;
* by :class:`TrialPruned` (raised by :meth:`~AskedTrial.report`): the trial is reported
  PRUNED with its last value and the exception is swallowed (the script goes on);
* by :class:`TrialStopped` (the study was stopped or paused) or :class:`TrialLost`: the
  lease is given back if still held and the exception propagates;
* by any other exception, ``KeyboardInterrupt`` (Ctrl-C) included: the trial is released
  (given back to the queue) and the exception propagates;
* normally, without a result: the trial is released and :class:`TrialError` is raised.

Transport errors (coordinator down or restarting) and 502/503/504 answers are retried
with exponential back-off (0.5 s doubling to 10 s) for up to ``retry_seconds``; a
complete that reached the coordinator before the connection broke is repeated safely (the
coordinator answers a repeat of the same value with the stored trial). The lease outlives
a restart as long as it is shorter than the lease (``ARCHSEARCH_LEASE_SECONDS``).

This module imports only :mod:`protocol` (and httpx): a model is built by the caller with
``search_space.model.build_model(Architecture.from_dict(trial.arch))``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from protocol.wire import ClaimOut, StudyBrief, TrialOut

if TYPE_CHECKING:
    from .http import Client

log = logging.getLogger("archsearch.client.session")
T = TypeVar("T")

RETRY_STATUSES = frozenset({502, 503, 504})
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 10.0

__all__ = [
    "AskedTrial",
    "NoTrialAvailable",
    "StudySession",
    "TrialError",
    "TrialLost",
    "TrialPruned",
    "TrialStopped",
]


class TrialError(RuntimeError):
    """Base of the ask/tell errors."""


class TrialPruned(TrialError):
    """The coordinator answered ``prune`` to a report: stop working on this trial. Leaving
    the ``with`` block with it records the trial PRUNED (with ``value``)."""

    def __init__(self, trial_id: int, value: float | None) -> None:
        super().__init__(f"trial {trial_id} was pruned by the coordinator")
        self.value = value


class TrialStopped(TrialError):
    """The study stopped running this trial (the study was stopped): it is given back."""


class TrialLost(TrialError):
    """This script no longer holds the trial (lease expired and reaped, or finished
    elsewhere): its result is not recorded. ``__cause__`` is the 409 ``ApiError`` if any."""


class NoTrialAvailable(TrialError):
    """Nothing to claim in the study within the wait."""


# -- retries ----------------------------------------------------------------------------
def _retryable(exc: BaseException) -> bool:
    from .http import ApiError

    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ApiError) and exc.status in RETRY_STATUSES


def retrying(
    call: Callable[[], T],
    *,
    seconds: float,
    what: str,
    stop: threading.Event | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """``call()``, retried on transport errors and 502/503/504 with exponential back-off
    for up to ``seconds``; then (or when ``stop`` is set) the last error is raised.
    Any other error is raised at once."""
    deadline = time.monotonic() + seconds
    wait = BACKOFF_FIRST
    while True:
        try:
            return call()
        except Exception as exc:
            if not _retryable(exc) or time.monotonic() + wait > deadline:
                raise
            if stop is not None and stop.is_set():
                raise
            log.warning("%s: %s; retrying in %.1f s", what, exc, wait)
            sleep(wait)
            wait = min(BACKOFF_CAP, wait * 2)


# -- one trial ----------------------------------------------------------------------------
class AskedTrial:
    """A claimed trial, held under a lease while the ``with`` block runs.

    Attributes: ``id``, ``number``, ``params`` (the raw space values), ``arch`` (the
    Architecture as a dict, ``None`` never for a suggested trial), ``is_final`` (a
    test-split re-score: score on the held-out test images), ``study`` (the
    :class:`~protocol.wire.StudyBrief`: dataset, options, seed), ``claim`` (the wire
    answer). Thread-safe for one user thread plus the heartbeat thread.
    """

    def __init__(self, session: StudySession, claim: ClaimOut) -> None:
        self._session = session
        self.claim = claim
        self.trial: TrialOut = claim.trial
        self.study: StudyBrief = claim.study
        self._lock = threading.Lock()
        self._done = False  # complete / fail / release went through (or lost)
        self._lost = False
        self._stop_action = False
        self._last_value: float | None = None
        self._stop = threading.Event()
        # A third of the lease between beats: two beats may fail before it expires.
        self._interval = max(0.2, claim.lease.seconds / 3)
        # The thread holds the trial only weakly: a trial object dropped without complete /
        # fail / release (a script's bug) stops its heartbeats, so its lease runs out and
        # the coordinator hands it to someone else instead of it staying RUNNING for ever.
        self._thread = threading.Thread(
            target=_beat_loop,
            args=(weakref.ref(self), self._stop, self._interval),
            name=f"heartbeat-{self.id}",
            daemon=True,
        )
        self._thread.start()

    # -- read-only views ------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.trial.id

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def params(self) -> dict[str, Any]:
        return self.trial.params

    @property
    def arch(self) -> dict[str, Any] | None:
        return self.trial.arch

    @property
    def is_final(self) -> bool:
        return self.trial.is_final

    @property
    def lost(self) -> bool:
        """True once a heartbeat or a report found that this script no longer holds it."""
        return self._lost

    # -- heart-beating ----------------------------------------------------------------------
    def _beat(self) -> bool:
        """One heartbeat (batch route: ``continue`` / ``stop``, or the trial listed as
        ``lost``); False once the trial is lost. A failed beat is logged only."""
        try:
            out = self._session.client.heartbeat_many(self._session.worker_id, [self.id])
        except Exception as exc:  # outage: the next beat tries again
            log.warning("heartbeat of trial %s failed: %s", self.id, exc)
            return True
        if self.id in out.lost:
            self._lost = True
            return False
        if any(b.action == "stop" for b in out.trials):
            self._stop_action = True
        return True

    def _finish(self) -> None:
        self._done = True
        self._stop.set()

    def _check_held(self) -> None:
        if self._done:
            raise TrialError(f"trial {self.id} is already finished here")
        if self._lost:
            raise TrialLost(f"trial {self.id}: this script no longer holds it (lease lost)")

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """``call`` with the session's retries; a 409 becomes :class:`TrialLost`."""
        from .http import ApiError

        try:
            return retrying(call, seconds=self._session.retry_seconds, what=what)
        except ApiError as exc:
            if exc.status == 409:
                self._lost = True
                self._finish()
                raise TrialLost(f"trial {self.id}: {exc.message}") from exc
            raise

    # -- the user's calls -------------------------------------------------------------------
    def report(self, step: int, value: float) -> None:
        """Record an intermediate ``value`` at ``step`` (>= 0) and extend the lease.

        Raises :class:`TrialPruned` (the coordinator says prune), :class:`TrialStopped`
        (the study no longer runs: stopped or paused), :class:`TrialLost` (409: not held),
        ``ApiError`` 422 for a value outside the evaluator's range.
        """
        with self._lock:
            self._check_held()
            wid = self._session.worker_id
            out = self._call(
                f"report of trial {self.id}",
                lambda: self._session.client.heartbeat(self.id, wid, step=step, value=value),
            )
            self._last_value = float(value)
        if out.action == "prune":
            raise TrialPruned(self.id, float(value))
        if out.action == "stop" or self._stop_action:
            raise TrialStopped(f"trial {self.id}: its study no longer runs it")

    def should_stop(self) -> bool:
        """True when the heartbeat thread heard ``stop`` or found the trial lost: check it
        between steps that do not report."""
        return self._stop_action or self._lost

    def complete(self, value: float, metrics: dict[str, Any] | None = None) -> TrialOut:
        """Record the score; returns the stored trial. Raises :class:`TrialLost` when this
        script no longer holds the trial (it never completes a trial it lost: the
        coordinator's 409), ``ApiError`` 422 for a refused value (NaN, out of range)."""
        with self._lock:
            self._check_held()
            wid = self._session.worker_id
            out = self._call(
                f"complete of trial {self.id}",
                lambda: self._session.client.complete(self.id, wid, value, metrics),
            )
            self._finish()
            return out

    def fail(self, reason: str, *, kind: str = "error", value: float | None = None) -> TrialOut:
        """Record the trial ``kind`` (``error`` -> FAILED, ``infeasible``, ``pruned``) for
        ``reason``. Raises like :meth:`complete`."""
        with self._lock:
            self._check_held()
            wid = self._session.worker_id
            out = self._call(
                f"fail of trial {self.id}",
                lambda: self._session.client.fail(self.id, wid, kind, reason, value),
            )
            self._finish()
            return out

    def release(self) -> None:
        """Give the trial back to the queue (another worker may take it). A trial no
        longer held is left alone. Never raises for an outage past the retries: the
        lease then expires on its own and the reaper gives the trial back."""
        with self._lock:
            if self._done:
                return
            self._stop.set()
            try:
                retrying(
                    lambda: self._session.client.release_many(self._session.worker_id, [self.id]),
                    seconds=min(30.0, self._session.retry_seconds),
                    what=f"release of trial {self.id}",
                )
            except Exception as exc:
                log.warning("could not release trial %s (%s): its lease will expire", self.id, exc)
            self._finish()

    # -- the with block ---------------------------------------------------------------------
    def __enter__(self) -> AskedTrial:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        try:
            if isinstance(exc, TrialPruned) and not self._done and not self._lost:
                with contextlib.suppress(TrialLost):  # lost meanwhile: nothing to record
                    self.fail(f"pruned by the coordinator: {exc}", kind="pruned", value=exc.value)
                return True  # pruning is the normal end of a poor trial
            if exc is not None:
                self.release()  # an error, Ctrl-C, stop, lost: give it back if still held
                return False
            if not self._done:
                self.release()
                raise TrialError(
                    f"trial {self.id}: the block ended without complete() or fail(); "
                    "it was given back"
                )
            return False
        finally:
            self._finish()
            self._thread.join(timeout=5)


def _beat_loop(trial: weakref.ref[AskedTrial], stop: threading.Event, interval: float) -> None:
    """Extend the trial's lease every ``interval`` s until it is finished, lost or gone."""
    while not stop.wait(interval):
        held = trial()
        if held is None or not held._beat():
            return
        del held  # no strong reference between beats


# -- the session ----------------------------------------------------------------------------
class StudySession:
    """The ask/tell side of one study for one script: see the module docstring.

    ``client.study_session(study_id)`` makes one. ``name``: the worker name the
    coordinator shows (default ``script-<host>``); ``retry_seconds``: how long calls
    ride out an outage before raising.
    """

    def __init__(
        self,
        client: Client,
        study_id: int,
        *,
        name: str | None = None,
        retry_seconds: float = 120.0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.client = client
        self.study_id = int(study_id)
        self.name = name or f"script-{socket.gethostname()}"
        self.retry_seconds = float(retry_seconds)
        self.poll_seconds = float(poll_seconds)
        self._worker_id: int | None = None
        self._lock = threading.Lock()

    @property
    def worker_id(self) -> int:
        """This script's worker id, registered on first use."""
        with self._lock:
            if self._worker_id is None:
                w = retrying(
                    lambda: self.client.register_worker(self.name, host=socket.gethostname()),
                    seconds=self.retry_seconds,
                    what="register",
                )
                self._worker_id = w.id
            return self._worker_id

    def trial(self, *, wait: float = 0.0) -> AskedTrial:
        """Claim one trial of the study (lease held from now; use it in a ``with`` block).

        ``wait``: seconds to keep polling (every ``poll_seconds``) while nothing waits.
        Raises :class:`NoTrialAvailable` when nothing was claimed in time, ``ApiError``
        for a refused claim (403 a token without the worker role, ...).
        """
        deadline = time.monotonic() + wait
        wid = self.worker_id
        while True:
            claims = retrying(
                lambda: self.client.claim_many(wid, 1, study=[self.study_id]),
                seconds=self.retry_seconds,
                what=f"claim in study {self.study_id}",
            )
            if claims:
                return AskedTrial(self, claims[0])
            if time.monotonic() >= deadline:
                raise NoTrialAvailable(f"no trial of study {self.study_id} is waiting")
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def trials(self, *, wait: float = 30.0, max_trials: int | None = None) -> Iterator[AskedTrial]:
        """Claim trials one after the other (use each in a ``with`` block before the next)
        until the study is over (finished, or stopped with its finals done), nothing came
        for ``wait`` seconds (the coordinator queues the next suggestion in the background,
        so a claim right after a report may find none yet), or ``max_trials`` were handed
        out."""
        n = 0
        while max_trials is None or n < max_trials:
            deadline = time.monotonic() + wait
            while True:
                try:
                    trial = self.trial()
                    break
                except NoTrialAvailable:
                    study = retrying(
                        lambda: self.client.study(self.study_id),
                        seconds=self.retry_seconds,
                        what=f"study {self.study_id}",
                    )
                    if study.is_over() or time.monotonic() >= deadline:
                        return
                    time.sleep(self.poll_seconds)
            n += 1
            yield trial
