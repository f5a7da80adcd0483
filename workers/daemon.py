"""The worker daemon: register, claim, evaluate, heartbeat, report — and survive failures.

Contract with the coordinator (docs/design.md sections 5 and 9), spoken through the typed
:class:`client.Client` and the :mod:`protocol` models:
* trials are claimed in batches (``claim_many``) and evaluated one after the other. A
  batch holds a few seconds of work: one trial at first, then, while trials take less
  than ``FAST_TRIAL_SECONDS`` each, as many as take about ``BATCH_TARGET_SECONDS`` (at
  most doubling per claim, at most ``WorkerConfig.batch``); slow trials go one at a time.
  Against a coordinator without the batch routes the daemon claims one at a time;
* one heartbeat thread extends every held lease every ``lease/3`` seconds in one request
  and obeys the answers (``prune`` / ``stop``; a lost lease is ``stop``);
* a finished result is spooled to disk before it is sent and forgotten only once the
  coordinator answered (2xx, or a final 4xx such as a lost lease), so a coordinator outage
  loses nothing; transport errors are retried with exponential back-off and jitter. The
  results of a batch go in one request (``report_many``) at its end, or every
  ``REPORT_EVERY_SECONDS``; a batch the coordinator refuses as a whole is sent again one
  report at a time, where each is judged (and counted, see below) on its own;
* trials of a batch the daemon will not get to are given back unstarted (no attempt used)
  at once, not left to expire: on SIGTERM, when their study stopped or its data differ,
  and when at the recent pace they would wait more than ``IDLE_LEASE_SECONDS``;
* SIGTERM / SIGINT: the running trial is released at once (another worker takes it without
  waiting for the lease), with the rest of its batch, then the daemon exits. Python runs a
  signal handler only between bytecodes of the main thread, which may be deep in a long
  torch or numpy call, so the release is made by a watcher thread woken through
  ``signal.set_wakeup_fd`` the moment the signal arrives; the main thread's handler then
  only unwinds;
* a spooled report the coordinator keeps refusing (a 5xx or a 4xx other than the final
  ones and the transient 401/403/408/429/502/503/504) is tried ``MAX_DELIVERY_ATTEMPTS``
  times, counted on disk, then set aside as ``*.rejected`` so the worker claims again;
  reports are sanitised before they are sent (no NUL bytes, finite numbers only);
* a worker whose data differ from the study's fingerprint gives the trial back and stops
  claiming that study;
* a trial past its study's ``trial_timeout_seconds`` is reported FAILED with the reason
  "timed out after N s (trial_timeout_seconds)", no traceback.
* on a GPU (or with ``--group N``) consecutive ``screen`` trials of one study and split
  in a batch are evaluated together (:mod:`workers.screen_group`), each with its own
  heartbeat answers and report (and ``group`` x the study's timeout); the data of the
  batch's next study are loaded in the background while a trial runs (not under
  ``--max-memory``); every completed result carries the worker's ``threads`` and the
  peak memory of its evaluation (``peak_rss_mb``; a group's shared peak).
* a trial of source ``blend`` (``arch == {"members": [architectures]}``, ``params.weights``)
  runs alone through :func:`workers.blend.blend` with the study's options; its complete
  report carries the test score as ``metrics.test_value``.
Imports ``search_space``, ``protocol`` and ``client``, never ``service``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from client import MAX_BATCH, ApiError, Client, complete_report, fail_report
from protocol import TrialSource
from protocol.wire import MAX_REASON, ClaimOut, CompleteReport, FailReport, StudyBrief, TrialOut
from search_space import Architecture, InfeasibleArchitecture

from .feature_cache import DEFAULT_FEATURE_CACHE_BYTES, FeatureCache
from .memory import MiB, PeakMemory, resident_bytes
from .outcomes import Pruned, Stopped, TimedOut
from .plugins import PluginMissing, check_plugin
from .spool import Spool, SpoolEntry

log = logging.getLogger("archsearch.worker")

# 4xx answers that mean "this result will never be accepted": stop retrying it.
FINAL_REFUSALS = {400, 404, 409, 422}
# Answers that say nothing about the report itself (a token to fix, throttling, a
# coordinator or its database away): retried for ever, like transport errors. A 403 (this
# worker id belongs to another token, e.g. after a token change) counts like any refusal.
TRANSIENT = {401, 408, 429, 502, 503, 504}
# How long the signal handler waits for the watcher thread to release the trial.
SIGNAL_RELEASE_WAIT = 10.0
# Any other error answer to a spooled report counts; after this many it is set aside.
MAX_DELIVERY_ATTEMPTS = 5
# Batches: the most trials one claim asks for by default (``--batch``), the work a batch
# should hold, the trial time above which trials are claimed one at a time, how often the
# results of a long batch are reported, and how long an unstarted trial may wait.
DEFAULT_BATCH = 16
BATCH_TARGET_SECONDS = 4.0
FAST_TRIAL_SECONDS = 2.0
REPORT_EVERY_SECONDS = 5.0
IDLE_LEASE_SECONDS = 30.0
# The least room --max-memory must leave beside what the worker holds when it starts.
MIN_TRIAL_MEMORY = 64 * MiB
# Screen trials of one study a GPU worker evaluates together by default (workers/
# screen_group.py: one copy of each image batch, every model run on it before the next).
GPU_GROUP = 8


def _clean(value: Any) -> Any:
    """``value`` with NUL bytes removed from strings (keys too) and non-finite numbers
    dropped (from objects) or nulled (in lists): what both database backends store."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {
            _clean(str(k)): _clean(v)
            for k, v in value.items()
            if not (isinstance(v, float) and not math.isfinite(v))
        }
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def sanitise(entry: SpoolEntry) -> SpoolEntry:
    """The report as the coordinator accepts it: a non-finite score becomes an error
    report, NUL bytes go, non-finite metric values are dropped, the reason fits."""
    value = entry.value
    kind, reason = entry.kind, entry.reason
    if value is not None and not math.isfinite(value):
        if kind == "complete":
            kind, reason = "error", f"the evaluation returned a non-finite score ({value})"
        value = None
    if reason is not None:
        reason = reason.replace("\x00", "\\x00")[:MAX_REASON] or kind
    return replace(entry, kind=kind, value=value, reason=reason, metrics=_clean(entry.metrics))


class WorkerStopping(BaseException):
    """Raised inside an evaluation when the daemon was asked to stop (SIGTERM)."""


class DataMismatch(Exception):
    """This worker's copy of the data differs from the study's fingerprint."""


class OverBudget(Exception):
    """The worker holds (nearly) all of its ``--max-memory`` before a trial starts."""


def _torch_threads() -> int:
    import torch  # loaded by then; importing this module alone does not load it

    return torch.get_num_threads()


def pick_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; validates ``cuda:N``.

    Raises ``ValueError`` naming the problem for an unusable device.
    """
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA device is visible to torch")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return f"cuda:{index}"
    raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")


@dataclass
class WorkerConfig:
    """``batch``: the most trials one claim asks for (1..MAX_BATCH; 1 = one at a time);
    the daemon claims fewer while trials are slow (see the module docstring).
    ``max_memory``: the resident memory budget of the whole worker process, in bytes."""

    coordinator: str
    token: str | None
    data_dir: Path
    device: str = "auto"
    studies: list[int] | None = None
    max_trials: int | None = None
    idle_exit_seconds: float | None = None
    poll_seconds: float = 2.0
    batch: int = DEFAULT_BATCH
    # Bytes of resident memory this worker may use (``--max-memory``; None: no limit). A
    # candidate estimated to take more (workers.memory) is reported INFEASIBLE unstarted.
    max_memory: int | None = None
    # Screen trials of one study evaluated together (``--group``; 0: GPU_GROUP on a GPU,
    # 1 on a CPU, which has no idle gaps between models for grouping to fill).
    group: int = 0
    # Bytes of extracted screen features kept for promotions of a scheduled study
    # (``--feature-cache``; 0: none). Under max_memory at most a quarter of it.
    feature_cache: int = DEFAULT_FEATURE_CACHE_BYTES
    name: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{random.getrandbits(24):06x}"
    )

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"--batch must be 1..{MAX_BATCH}, got {self.batch}")
        if self.max_memory is not None and self.max_memory < 1:
            raise ValueError(f"--max-memory must be positive, got {self.max_memory}")
        if not 0 <= self.group <= MAX_BATCH:
            raise ValueError(f"--group must be 0..{MAX_BATCH}, got {self.group}")
        if self.feature_cache < 0:
            raise ValueError(f"--feature-cache must be >= 0, got {self.feature_cache}")


class Backoff:
    """Exponential back-off with full jitter, capped; ``reset`` after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def wait(self, stop: threading.Event) -> None:
        delay = random.uniform(0, min(self.cap, self.base * 2**self.failures))
        self.failures += 1
        stop.wait(delay)

    def reset(self) -> None:
        self.failures = 0


class Heartbeat:
    """Extends the leases of every trial the daemon holds, from one thread, every
    ``interval`` seconds, in one request (``heartbeat_many``; one request per trial
    against a coordinator without the batch routes), and remembers each trial's last
    action: ``continue``, ``prune`` or ``stop`` (the study stopped, or the lease is gone).

    ``held`` answers the ids to keep alive (the batch's unstarted, running and
    finished-but-unreported trials). A coordinator that cannot be reached changes no
    action: the trials go on and their results are spooled.
    """

    def __init__(
        self,
        client: Client,
        worker_id: int,
        interval: float,
        held: Callable[[], list[int]],
        *,
        batch_api: bool = True,
    ) -> None:
        self.client, self.worker_id, self.interval = client, worker_id, interval
        self.held, self.batch_api = held, batch_api
        self._actions: dict[int, str] = {}
        self._lost: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def action(self, trial_id: int) -> str:
        """The last action for this trial (``stop`` once its lease is known lost)."""
        return "stop" if trial_id in self._lost else self._actions.get(trial_id, "continue")

    def lost(self, trial_id: int) -> bool:
        """Whether the coordinator said this worker no longer holds the trial."""
        return trial_id in self._lost

    def beat(self, trial_id: int, step: int | None = None, value: float | None = None) -> str:
        """One heartbeat of one trial now (with an intermediate value when given: the
        median stopping rule may answer ``prune``); returns its action."""
        try:
            answer = self.client.heartbeat(trial_id, self.worker_id, step=step, value=value)
            self._actions[trial_id] = answer.action
        except ApiError as exc:
            if exc.status == 409:  # the lease is gone: someone else owns the trial now
                self._lost.add(trial_id)
            else:
                log.warning("heartbeat for trial %s refused: %s", trial_id, exc)
        except httpx.TransportError as exc:
            log.warning("heartbeat for trial %s failed (coordinator down?): %s", trial_id, exc)
        return self.action(trial_id)

    def beat_all(self) -> None:
        """One heartbeat of every held trial now."""
        ids = self.held()
        if not ids:
            return
        if not self.batch_api:
            for trial_id in ids:
                self.beat(trial_id)
            return
        try:
            answer = self.client.heartbeat_many(self.worker_id, ids)
        except ApiError as exc:
            log.warning("heartbeat for trials %s refused: %s", ids, exc)
            return
        except httpx.TransportError as exc:
            log.warning("heartbeat for trials %s failed (coordinator down?): %s", ids, exc)
            return
        for beat in answer.trials:
            self._actions[beat.trial_id] = beat.action
        self._lost.update(answer.lost)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat_all()


class BatchSizer:
    """How many trials the next claim asks for.

    One until trials are known to be fast; then as many as take about
    :data:`BATCH_TARGET_SECONDS` at the recent pace (a moving average of trial times), at
    most twice the previous claim and never more than ``maximum``. Trials slower than
    :data:`FAST_TRIAL_SECONDS` are claimed one at a time: a batch should hold a few
    seconds of work, never long-idle leases.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.mean: float | None = None
        self.last = 1

    def record(self, seconds: float) -> None:
        """One more trial took ``seconds``."""
        self.mean = seconds if self.mean is None else 0.7 * self.mean + 0.3 * seconds

    def next(self) -> int:
        if self.maximum == 1 or self.mean is None or self.mean >= FAST_TRIAL_SECONDS:
            size = 1
        else:
            fit = int(BATCH_TARGET_SECONDS / max(self.mean, 1e-3))
            size = max(1, min(self.maximum, fit, 2 * self.last))
        self.last = size
        return size

    def keep(self) -> int | None:
        """How many unstarted trials of a batch may wait at the recent pace before their
        leases count as idle (:data:`IDLE_LEASE_SECONDS`); ``None`` while unknown."""
        if self.mean is None or self.mean <= 0:
            return None
        return max(0, int(IDLE_LEASE_SECONDS / self.mean))


def _rung_budget(claim: ClaimOut) -> tuple[int | None, int | None]:
    """``(train_per_class, epochs)`` of a claimed trial under its study's ASHA schedule:
    its rung's resource (a final: the schedule's max), ``None`` for what the schedule
    does not set. Raises ``ValueError`` for a rung past the schedule's last."""
    schedule = claim.study.schedule
    if schedule is None:
        return None, None
    amount = schedule.resource_of(claim.trial.rung, final=claim.trial.is_final)
    if schedule.resource == "train_per_class":
        return amount, None
    return None, amount


def _is_blend(trial: TrialOut) -> bool:
    return trial.source == TrialSource.BLEND


@dataclass(frozen=True)
class _BlendOutcome:
    """A finished blend as :meth:`WorkerDaemon._entry` reads a result."""

    value: float
    metrics: dict[str, Any]


def _route_missing(exc: ApiError) -> bool:
    """A coordinator without this route (older than the batch routes) answered: 404 or
    405 naming no field (an unknown worker names ``worker_id``)."""
    return exc.status in (404, 405) and exc.field is None


def _report_item(entry: SpoolEntry) -> CompleteReport | FailReport:
    """A sanitised spool entry as an item of a batch report (``ValueError`` if the
    coordinator would refuse it: pydantic checks the same rules)."""
    if entry.kind == "complete":
        assert entry.value is not None
        return complete_report(
            entry.trial_id,
            entry.value,
            entry.metrics,
            dataset_fingerprint=entry.dataset_fingerprint,
        )
    return fail_report(
        entry.trial_id,
        entry.kind,
        entry.reason or entry.kind,
        entry.value,
        dataset_fingerprint=entry.dataset_fingerprint,
    )


class WorkerDaemon:
    """Runs trials until told to stop, ``max_trials`` are done, or idle too long.

    ``evaluate``, ``load_data``, ``evaluate_group`` and ``blend`` are injectable for
    tests; by default they are :func:`workers.evaluators.evaluate`, a
    :class:`workers.datasets.DatasetCache`, :func:`workers.screen_group.screen_group` and
    :func:`workers.blend.blend`.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        client: Client | None = None,
        evaluate: Callable[..., Any] | None = None,
        load_data: Callable[..., Any] | None = None,
        evaluate_group: Callable[..., Any] | None = None,
        blend: Callable[..., Any] | None = None,
    ) -> None:
        self.config = config
        self.client = client or Client(config.coordinator, config.token, timeout=60)
        self.device = pick_device(config.device)
        if evaluate is None:
            from .evaluators import evaluate as default_evaluate

            evaluate = default_evaluate
        if load_data is None:
            from .datasets import DatasetCache

            load_data = DatasetCache().get
        if evaluate_group is None:
            from .screen_group import screen_group as evaluate_group
        if blend is None:
            from .blend import blend
        self.blend = blend
        self.evaluate = evaluate
        self.load_data = load_data
        self.evaluate_group = evaluate_group
        # Grouped screening makes no memory estimate per candidate: under --max-memory
        # every trial is evaluated alone, so that each is checked against the budget.
        self.group = config.group or (GPU_GROUP if self.device.startswith("cuda") else 1)
        if config.max_memory is not None:
            self.group = 1
        if config.max_memory is not None:
            held = resident_bytes()
            if held + MIN_TRIAL_MEMORY > config.max_memory:
                raise ValueError(
                    f"--max-memory {config.max_memory / MiB:.0f} MiB leaves no room for a "
                    f"trial: this worker already holds {held / MiB:.0f} MiB (torch and the "
                    f"libraries); give it at least {(held + MIN_TRIAL_MEMORY) / MiB:.0f} MiB"
                )
        cache = config.feature_cache
        if config.max_memory is not None:
            cache = min(cache, config.max_memory // 4)
        # Features of scheduled screen trials, for their promotions and finals.
        self.features = FeatureCache(cache)
        # The background load of the next trial's dataset (one at a time).
        self._prefetch: threading.Thread | None = None
        self.spool = Spool(config.data_dir / "spool")
        self.stop_event = threading.Event()
        self.worker_id: int | None = None
        self.done = 0
        self.sizer = BatchSizer(config.batch)
        # The sizes of the claims made, and how many trials each brought (for logs, tests).
        self.claims: list[tuple[int, int]] = []
        self._excluded: set[int] = set()
        # Whether the coordinator has the batch routes (None: not asked yet).
        self._batch_api: bool | None = None
        # The batch being worked on: trials claimed and not started yet, the one being
        # evaluated, and every id whose lease is kept alive (those two plus the finished
        # ones not yet acknowledged). Guarded by _signal_lock.
        self._pending: list[ClaimOut] = []
        self._current: list[ClaimOut] = []
        self._held: set[int] = set()
        self._evaluating = False
        # The trial given back because of a signal (by the watcher or the handler).
        self._released_on_signal: set[int] = set()
        self._signal_lock = threading.RLock()
        self._released_event = threading.Event()

    # -- signals ---------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: give the running trial and the rest of the batch back now, then
        unwind (main thread only).

        The C-level handler writes the signal number to a pipe at once, wherever the main
        thread is; a watcher thread reading it releases the trials. The Python handler runs
        when the main thread next executes bytecode, waits for the watcher, and unwinds the
        evaluation."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        threading.Thread(
            target=self._watch_signals, args=(read_fd,), name="signal-watcher", daemon=True
        ).start()

    def _watch_signals(self, read_fd: int) -> None:
        stopping = {int(signal.SIGTERM), int(signal.SIGINT)}
        while True:
            try:
                received = os.read(read_fd, 64)
            except OSError:
                return
            if not received:
                return
            if stopping.intersection(received):
                log.info("signal received: releasing the running trial and the rest of the batch")
                self.stop_event.set()
                self._release_on_signal()

    def _release_on_signal(self) -> bool:
        """Give back, once, the trials being evaluated (an attempt used) and the batch's
        unstarted trials (no attempt used), whichever thread comes first; True when a
        trial was being evaluated."""
        with self._signal_lock:
            unstarted = [c.trial.id for c in self._pending]
            self._pending = []
            current = list(self._current) if self._evaluating else []
            for claim in current:
                if claim.trial.id not in self._released_on_signal:
                    self._released_on_signal.add(claim.trial.id)
                    self._release(claim.trial.id)
            self._give_back(unstarted)
            if not current:
                return False
            self._released_event.set()
            return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Runs on the main thread, which may be anywhere, even inside the HTTP client:
        # it makes no HTTP call itself. The watcher thread releases the trials (it read the
        # same signal from the wake-up fd); the handler waits for that, then unwinds.
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stop_event.set()
        if self._evaluating and self._current:
            if not self._released_event.wait(SIGNAL_RELEASE_WAIT):
                log.warning("the trial was not released in time; its lease will expire")
            self._evaluating = False
            raise WorkerStopping

    def _release(self, trial_id: int) -> None:
        """Give back a trial this worker began (an attempt is used up)."""
        try:
            self.client.release(trial_id, self._worker_id())
            log.info("trial %s released", trial_id)
        except (ApiError, httpx.TransportError) as exc:
            log.warning("could not release trial %s (its lease will expire): %s", trial_id, exc)
        with self._signal_lock:
            self._held.discard(trial_id)

    def _give_back(self, trial_ids: list[int]) -> None:
        """Give back trials of the batch this worker never began, in one request (their
        attempt is not used up), so that another worker takes them without waiting for
        the leases to run out."""
        if not trial_ids:
            return
        with self._signal_lock:
            self._pending = [c for c in self._pending if c.trial.id not in trial_ids]
            self._held.difference_update(trial_ids)
        if not self._batch_api:
            for trial_id in trial_ids:  # a coordinator without batches: one at a time
                self._release(trial_id)
            return
        try:
            self.client.release_many(self._worker_id(), trial_ids, unstarted=True)
            log.info("gave back %d unstarted trial(s): %s", len(trial_ids), trial_ids)
        except (ApiError, httpx.TransportError) as exc:
            log.warning(
                "could not give back trials %s (their leases will expire): %s", trial_ids, exc
            )

    def _worker_id(self) -> int:
        assert self.worker_id is not None, "register() first"
        return self.worker_id

    # -- coordinator calls with retries --------------------------------------------------
    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        backoff = Backoff()
        while not self.stop_event.is_set():
            try:
                result = call()
                backoff.reset()
                return result
            except httpx.TransportError as exc:
                log.warning("%s: coordinator unreachable (%s); retrying", what, exc)
            except ApiError as exc:
                if exc.status < 500:
                    raise
                log.warning("%s: coordinator answered %s; retrying", what, exc.status)
            backoff.wait(self.stop_event)
        raise WorkerStopping

    def register(self) -> int:
        answer = self._retrying(
            "register",
            lambda: self.client.register_worker(
                self.config.name, host=socket.gethostname(), device=self.device
            ),
        )
        self.worker_id = answer.id
        log.info(
            "registered as worker %s (%s) on %s", self.worker_id, self.config.name, self.device
        )
        return self.worker_id

    def _claim(self, n: int) -> list[ClaimOut]:
        """Claim up to ``n`` trials (retrying while the coordinator is away); falls back
        to one-at-a-time claims against a coordinator without the batch routes."""
        wid, studies, excluded = self._worker_id(), self.config.studies, sorted(self._excluded)
        if self._batch_api is not False:
            try:
                got = self._retrying(
                    "claim", lambda: self.client.claim_many(wid, n, studies, excluded)
                )
                self._batch_api = True
                self.claims.append((n, len(got)))
                return got
            except ApiError as exc:
                if not _route_missing(exc):
                    raise
                log.info("the coordinator has no batch routes: claiming one trial at a time")
                self._batch_api = False
        one = self._retrying("claim", lambda: self.client.claim(wid, studies, excluded))
        self.claims.append((1, 1 if one else 0))
        return [one] if one is not None else []

    # -- the spool -------------------------------------------------------------------------
    def deliver_spool(self) -> int:
        """Send every spooled result: up to MAX_BATCH per request through the batch route,
        each alone otherwise. Returns how many the coordinator took (or refused for good).
        Stops at the first transport error or transient answer (the coordinator is away).
        """
        pending = self.spool.pending()
        if not pending:
            return 0
        if not self._batch_api:
            # Unknown (nothing claimed yet in this life) or absent: one at a time.
            return self._deliver_singly(pending)
        delivered = 0
        by_worker: dict[int, list[SpoolEntry]] = {}
        for entry in pending:  # a spool may hold reports of an earlier registration
            by_worker.setdefault(entry.worker_id, []).append(entry)
        for worker_id, entries in by_worker.items():
            for start in range(0, len(entries), MAX_BATCH):
                chunk = entries[start : start + MAX_BATCH]
                taken, complete = self._deliver_batch(worker_id, chunk)
                delivered += taken
                if not complete:
                    return delivered
        return delivered

    def _deliver_batch(self, worker_id: int, chunk: list[SpoolEntry]) -> tuple[int, bool]:
        """One batch report of ``chunk``; ``(delivered, whether to go on)``."""
        items: list[CompleteReport | FailReport] = []
        sendable: list[SpoolEntry] = []
        for entry in chunk:
            try:
                items.append(_report_item(sanitise(entry)))
                sendable.append(entry)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                # The coordinator would refuse it (422) whatever it is sent with.
                log.warning(
                    "trial %s: the %s report cannot be sent: %s", entry.trial_id, entry.kind, exc
                )
                self._acked(entry)
        if not sendable:
            return len(chunk), True
        try:
            results = self.client.report_many(worker_id, items)
        except httpx.TransportError:
            return len(chunk) - len(sendable), False
        except ApiError as exc:
            if exc.status in TRANSIENT:
                return len(chunk) - len(sendable), False
            if _route_missing(exc):
                self._batch_api = False
            else:
                log.warning(
                    "a batch of %d reports was refused (%s); sending them one by one",
                    len(sendable),
                    exc,
                )
            # Each report alone, where a bad one is counted and set aside on its own.
            taken = self._deliver_singly(sendable)
            return len(chunk) - len(sendable) + taken, taken == len(sendable)
        for entry, result in zip(sendable, results, strict=True):
            if result.status != 200:
                error = result.error.message if result.error else str(result.status)
                log.warning(
                    "trial %s: coordinator refused the %s report for good (%s): %s",
                    entry.trial_id,
                    entry.kind,
                    result.status,
                    error,
                )
            self._acked(entry)
        return len(chunk), True

    def _acked(self, entry: SpoolEntry) -> None:
        self.spool.ack(entry)
        with self._signal_lock:
            self._held.discard(entry.trial_id)

    def _deliver_singly(self, entries: list[SpoolEntry]) -> int:
        """Send ``entries`` one per request (complete / fail routes); returns how many the
        coordinator took or refused for good, stopping at the first transport error or
        transient answer."""
        delivered = 0
        for entry in entries:
            sent = sanitise(entry)
            try:
                if sent.kind == "complete":
                    assert sent.value is not None
                    self.client.complete(
                        sent.trial_id,
                        sent.worker_id,
                        sent.value,
                        sent.metrics,
                        dataset_fingerprint=sent.dataset_fingerprint,
                    )
                else:
                    self.client.fail(
                        sent.trial_id,
                        sent.worker_id,
                        sent.kind,
                        sent.reason or sent.kind,
                        value=sent.value,
                        dataset_fingerprint=sent.dataset_fingerprint,
                    )
            except httpx.TransportError:
                return delivered
            except ApiError as exc:
                if exc.status in TRANSIENT:
                    return delivered
                if exc.status not in FINAL_REFUSALS:
                    entry = self.spool.count_attempt(entry)
                    if entry.attempts < MAX_DELIVERY_ATTEMPTS:
                        log.warning(
                            "trial %s: the %s report was refused (%s), attempt %s of %s",
                            entry.trial_id,
                            entry.kind,
                            exc,
                            entry.attempts,
                            MAX_DELIVERY_ATTEMPTS,
                        )
                        return delivered
                    where = self.spool.reject(
                        entry, f"refused {entry.attempts} times; last answer: {exc}"
                    )
                    log.error(
                        "trial %s: the %s report was refused %s times (last: %s); set aside as %s",
                        entry.trial_id,
                        entry.kind,
                        entry.attempts,
                        exc,
                        where,
                    )
                    with self._signal_lock:
                        self._held.discard(entry.trial_id)
                    delivered += 1
                    continue
                log.warning(
                    "trial %s: coordinator refused the %s report for good: %s",
                    entry.trial_id,
                    entry.kind,
                    exc.message,
                )
            self._acked(entry)
            delivered += 1
        return delivered

    # -- the loop --------------------------------------------------------------------
    def run(self) -> int:
        """Work until stopped; returns the number of trials this run finished."""
        try:
            self.register()
            idle_since = time.monotonic()
            backoff = Backoff()
            while not self.stop_event.is_set():
                if self.spool.pending():
                    self.deliver_spool()
                    if self.spool.pending():
                        backoff.wait(self.stop_event)  # coordinator down: keep results
                        continue
                backoff.reset()
                n = self.sizer.next()
                if self.config.max_trials is not None:
                    n = min(n, self.config.max_trials - self.done)
                    if n <= 0:
                        break
                claimed = self._claim(n)
                if not claimed:
                    idle = time.monotonic() - idle_since
                    if (
                        self.config.idle_exit_seconds is not None
                        and idle >= self.config.idle_exit_seconds
                    ):
                        log.info("no work for %.0f s: exiting", idle)
                        break
                    self.stop_event.wait(self.config.poll_seconds * random.uniform(0.5, 1.5))
                    continue
                idle_since = time.monotonic()
                self._run_batch(claimed)
                self.deliver_spool()
        except WorkerStopping:
            pass
        finally:
            self.deliver_spool()
        return self.done

    def _run_batch(self, claimed: list[ClaimOut]) -> None:
        """Evaluate the claimed trials one after the other under one heartbeat thread.

        Results are spooled as they come and reported together (at the end, or every
        :data:`REPORT_EVERY_SECONDS`). Trials the daemon will not get to -- it is
        stopping, their study stopped or its data differ, or at the recent pace they
        would wait longer than :data:`IDLE_LEASE_SECONDS` -- are given back unstarted.
        """
        lease = min(c.lease.seconds for c in claimed)
        with self._signal_lock:
            self._pending = list(claimed)
            self._held = {c.trial.id for c in claimed}
        first_unreported: float | None = None
        hb = Heartbeat(
            self.client,
            self._worker_id(),
            max(0.5, lease / 3),
            self._held_ids,
            batch_api=bool(self._batch_api),
        )
        try:
            with hb:
                while True:
                    with self._signal_lock:
                        if self.stop_event.is_set() or not self._pending:
                            break
                        claim = self._pending.pop(0)
                    trial = claim.trial
                    if hb.lost(trial.id):
                        log.info("trial %s: lease lost before it started; skipped", trial.id)
                        with self._signal_lock:
                            self._held.discard(trial.id)
                        continue
                    if hb.action(trial.id) == "stop" or claim.study.id in self._excluded:
                        self._give_back([trial.id])
                        continue
                    if self._run_trials(self._group_with(claim, hb), hb):
                        first_unreported = first_unreported or time.monotonic()
                    self._skip_excluded()
                    self._trim_idle()
                    if (
                        first_unreported is not None
                        and time.monotonic() - first_unreported >= REPORT_EVERY_SECONDS
                    ):
                        self.deliver_spool()
                        first_unreported = None
        finally:
            with self._signal_lock:
                rest = [c.trial.id for c in self._pending]
            self._give_back(rest)

    def _data_args(self, study: StudyBrief) -> tuple[str, dict[str, Any]]:
        options = study.evaluator_options
        return study.dataset, {
            "color": options.color,
            "seed": study.seed,
            "max_per_class": options.max_per_class,
        }

    def _prefetch_next(self, current: StudyBrief) -> None:
        """Load the dataset of the next unstarted trial of the batch in the background
        while a trial of ``current`` runs (its own data loaded already), when the next
        one needs other data. The load goes through
        ``load_data`` (a :class:`~workers.datasets.DatasetCache`: the trial that needs it
        takes the loaded copy, or waits for the load in flight). A failure here is only
        logged: the trial's own load raises it again and reports it."""
        with self._signal_lock:
            upcoming = [c for c in self._pending if c.study.id not in self._excluded]
        if not upcoming or (self._prefetch is not None and self._prefetch.is_alive()):
            return
        nxt = upcoming[0]
        if self._data_args(nxt.study) == self._data_args(current):
            return
        uri, kwargs = self._data_args(nxt.study)

        def load() -> None:
            try:
                check_plugin(nxt.study.evaluator)  # no load for a plugin this worker lacks
                self.load_data(uri, **kwargs)
            except Exception as exc:  # the trial that needs it reports the error
                log.debug("prefetch of %s failed: %s", uri, exc)

        self._prefetch = threading.Thread(target=load, name="data-prefetch", daemon=True)
        self._prefetch.start()

    def _held_ids(self) -> list[int]:
        with self._signal_lock:
            return sorted(self._held)

    def _skip_excluded(self) -> None:
        """Give back the unstarted trials of studies this worker just excluded."""
        with self._signal_lock:
            ids = [c.trial.id for c in self._pending if c.study.id in self._excluded]
        self._give_back(ids)

    def _trim_idle(self) -> None:
        """Give back the unstarted trials that, at the recent pace, would wait longer than
        :data:`IDLE_LEASE_SECONDS` (a batch claimed when trials were faster)."""
        keep = self.sizer.keep()
        if keep is None:
            return
        with self._signal_lock:
            ids = [c.trial.id for c in self._pending[keep:]]
        if ids:
            log.info("trials got slower: giving back %d unstarted trial(s)", len(ids))
            self._give_back(ids)

    def _group_with(self, first: ClaimOut, hb: Heartbeat) -> list[ClaimOut]:
        """``first`` and, when this worker screens in groups (``group`` > 1: a GPU),
        the unstarted trials right behind it in the batch that can share its evaluation:
        ``screen`` trials of the same study and split. They leave the batch here."""
        group = [first]
        if self.group < 2 or first.study.evaluator != "screen" or _is_blend(first.trial):
            return group
        with self._signal_lock:
            while self._pending and len(group) < self.group:
                nxt = self._pending[0]
                if (
                    nxt.study.id != first.study.id
                    or nxt.trial.is_final != first.trial.is_final
                    or nxt.trial.rung != first.trial.rung  # one resource per group
                    or _is_blend(nxt.trial)  # a blend always runs alone
                    or hb.lost(nxt.trial.id)
                    or hb.action(nxt.trial.id) == "stop"
                ):
                    break
                group.append(self._pending.pop(0))
        return group

    def _run_trials(self, claims: list[ClaimOut], hb: Heartbeat) -> int:
        """Evaluate one trial, or a group of one study's screen trials together (see
        :meth:`_group_with`), and spool the results; returns how many there are to
        report. Each trial has its own deadline, heartbeat answers and reports."""
        started = time.monotonic()
        controls = [self._control(c, hb, started, len(claims)) for c in claims]
        with self._signal_lock:
            # A signal between taking the trials from the batch and here found them in
            # neither place: they are given back now instead of being started.
            stopping = self.stop_event.is_set()
            if not stopping:
                self._current = list(claims)
                self._evaluating = True
        if stopping:
            self._give_back([c.trial.id for c in claims])
            raise WorkerStopping
        try:
            entries = self._evaluate(claims, controls)
        finally:
            with self._signal_lock:
                self._evaluating = False
                self._current = []
        if any(c.trial.id in self._released_on_signal for c in claims):
            raise WorkerStopping  # given back on a signal: not ours now
        seconds = time.monotonic() - started
        reported = 0
        for claim, entry in zip(claims, entries, strict=True):
            if entry is None:  # released (stop, data mismatch): nothing to report
                continue
            self.spool.put(entry)
            self.done += 1
            reported += 1
            self.sizer.record(seconds / len(claims))
            self._log_result(claim.trial, entry, seconds)
        return reported

    def _control(
        self, claim: ClaimOut, hb: Heartbeat, started: float, group: int = 1
    ) -> tuple[Callable[[], str], Callable[[int, float], str], float]:
        """The trial's ``tick``, ``report`` and deadline for the evaluator. In a group of
        ``group`` trials each one's time includes the others' interleaved work, so each
        gets ``group`` times the study's timeout from the group's start."""
        trial_id = claim.trial.id
        deadline = started + group * claim.study.evaluator_options.trial_timeout_seconds

        def tick() -> str:
            if time.monotonic() > deadline:
                raise TimedOut("the trial ran past its deadline")
            return hb.action(trial_id)

        def report(step: int, value: float) -> str:
            tick()
            return hb.beat(trial_id, step, value)

        return tick, report, deadline

    def _log_result(self, trial: TrialOut, entry: SpoolEntry, seconds: float) -> None:
        if _is_blend(trial):
            arch = f"blend of {len((trial.arch or {}).get('members') or [])}"
        else:
            arch = Architecture.from_dict(trial.arch).summary() if trial.arch else "-"
        score = f"{entry.value:.4f}" if entry.value is not None else entry.kind.upper()
        ips = entry.metrics.get("images_per_s")
        group = entry.metrics.get("group_size")
        log.info(
            "trial %s #%s [%s] %s score=%s %.1fs%s%s",
            trial.id,
            trial.number,
            trial.source.value,
            arch,
            score,
            seconds,
            f" {ips:.0f} img/s" if isinstance(ips, int | float) else "",
            f" (group of {group})" if isinstance(group, int) and group > 1 else "",
        )

    def _evaluate(
        self,
        claims: list[ClaimOut],
        controls: list[tuple[Callable[[], str], Callable[[int, float], str], float]],
    ) -> list[SpoolEntry | None]:
        """Load the study's data once and evaluate the trials (one: ``evaluate``; a
        group: ``evaluate_group``); one spool entry per trial, None for a trial given
        back (stopped, data mismatch)."""
        study = claims[0].study
        options = study.evaluator_options
        fingerprint: str | None = None
        peak = PeakMemory(self.device)
        try:
            archs = []
            for claim in claims:
                if claim.trial.arch is None:
                    raise ValueError(f"trial {claim.trial.id} carries no architecture")
                if not _is_blend(claim.trial):  # a blend's members are read by _blend
                    archs.append(Architecture.from_dict(claim.trial.arch))
            check_plugin(study.evaluator)  # a missing plugin: skip the study before any load
            uri, data_kwargs = self._data_args(study)
            data = self.load_data(uri, **data_kwargs)
            if self.config.max_memory is None:
                # Under a memory budget nothing loads beside a trial: the budget it was
                # given (below) would not hold.
                self._prefetch_next(study)
            fingerprint = data.fingerprint
            expected = study.dataset_fingerprint
            if expected and expected != data.fingerprint:
                raise DataMismatch(
                    f"this worker's copy of {study.dataset} has fingerprint "
                    f"{data.fingerprint[:12]}, the study's is {expected[:12]}"
                )
            budget = None
            if self.config.max_memory is not None:
                held = resident_bytes()
                budget = self.config.max_memory - held
                if budget < MIN_TRIAL_MEMORY and self.features.nbytes:
                    # Cached features are the one thing the worker can give up for a trial.
                    self.features.clear()
                    held = resident_bytes()
                    budget = self.config.max_memory - held
                if budget < MIN_TRIAL_MEMORY:
                    # The worker itself (its cached data) fills the budget: no candidate
                    # is to blame, so none is refused; the trials go back to others.
                    raise OverBudget(
                        f"this worker holds {held / MiB:.0f} MiB of its --max-memory "
                        f"{self.config.max_memory / MiB:.0f} MiB before any trial"
                    )
            shared: dict[str, Any] = {
                "final": claims[0].trial.is_final,
                "validation_fraction": options.validation_fraction,
                "seed": study.seed,
                "device": self.device,
                "max_features": options.max_features,
                "max_gflops_per_image": options.max_gflops_per_image,
                "max_activation_mb_per_image": options.max_activation_mb_per_image,
            }
            if options.plugin_options is not None:  # only a plugin study has them
                shared["plugin_options"] = options.plugin_options
            train_per_class, epochs = _rung_budget(claims[0])
            if train_per_class is not None:
                shared["train_per_class"] = train_per_class
            # A scheduled screen trial's promotions and final see its images again.
            cached = {}
            if train_per_class is not None and self.features.capacity:
                cached = {"feature_cache": self.features}
            with peak:
                if _is_blend(claims[0].trial):  # alone: _group_with never groups a blend
                    outcomes = [self._blend(claims[0], data, budget, controls[0], shared)]
                elif len(claims) == 1:
                    tick, report, deadline = controls[0]
                    outcomes: list[Any] = []
                    try:
                        outcomes.append(
                            self.evaluate(
                                study.evaluator,
                                archs[0],
                                data,
                                readout=options.readout,
                                epochs=options.epochs if epochs is None else epochs,
                                memory_budget=budget,
                                report=report,
                                tick=tick,
                                deadline=deadline,
                                **cached,
                                **shared,
                            )
                        )
                    except Exception as exc:
                        outcomes.append(exc)
                else:
                    from .screen_group import GroupCandidate

                    candidates = [
                        GroupCandidate(arch, options.readout, tick, report, deadline)
                        for arch, (tick, report, deadline) in zip(archs, controls, strict=True)
                    ]
                    outcomes = self.evaluate_group(candidates, data, **cached, **shared)
        except WorkerStopping:
            raise
        except Exception as exc:
            outcomes = [exc] * len(claims)
        extra = {"device": self.device, "threads": _torch_threads(), **peak.metrics()}
        return [
            self._entry(claim, outcome, fingerprint, extra)
            for claim, outcome in zip(claims, outcomes, strict=True)
        ]

    def _blend(
        self,
        claim: ClaimOut,
        data: Any,
        budget: int | None,
        control: tuple[Callable[[], str], Callable[[int, float], str], float],
        shared: dict[str, Any],
    ) -> Any:
        """Run one blend trial with the study's options; the result (its test score in
        ``metrics.test_value``) or the exception that ended it, for :meth:`_entry`."""
        trial, study = claim.trial, claim.study
        tick, _, deadline = control
        # A scheduled study's members ran their top rung and finals at its max.
        capped = {k: shared[k] for k in ("train_per_class",) if k in shared}
        try:
            members = (trial.arch or {}).get("members")
            if not isinstance(members, list) or not members:
                raise ValueError(f"blend trial {trial.id} carries no member architectures")
            result = self.blend(
                study.evaluator,
                [Architecture.from_dict(a) for a in members],
                data,
                weights=trial.params.get("weights", "uniform"),
                readout=study.evaluator_options.readout,
                validation_fraction=shared["validation_fraction"],
                seed=shared["seed"],
                device=shared["device"],
                max_features=shared["max_features"],
                max_gflops_per_image=shared["max_gflops_per_image"],
                max_activation_mb_per_image=shared["max_activation_mb_per_image"],
                memory_budget=budget,
                tick=tick,
                deadline=deadline,
                **capped,
            )
        except Exception as exc:
            return exc
        return _BlendOutcome(result.value, {**result.metrics, "test_value": result.test_value})

    def _entry(
        self, claim: ClaimOut, outcome: Any, fingerprint: str | None, extra: dict[str, Any]
    ) -> SpoolEntry | None:
        """The spool entry of one trial's outcome (a result or the exception that ended
        it), or None when the trial is given back instead (stopped, data mismatch, a
        missing plugin, a worker over its memory budget)."""
        trial, study = claim.trial, claim.study
        wid = self._worker_id()

        def fail(kind: str, reason: str, value: float | None = None) -> SpoolEntry:
            return SpoolEntry(trial.id, wid, kind, value, {}, reason, fingerprint)  # type: ignore[arg-type]

        if not isinstance(outcome, BaseException):
            metrics = {**outcome.metrics, **extra}
            return SpoolEntry(
                trial.id, wid, "complete", float(outcome.value), metrics, None, fingerprint
            )
        try:
            raise outcome
        except InfeasibleArchitecture as exc:
            return fail("infeasible", exc.reason)
        except Pruned as exc:
            last = trial.intermediate
            value = exc.value if exc.value is not None else (last[-1][1] if last else None)
            return fail("pruned", f"pruned by the coordinator: {exc}", value)
        except Stopped:
            self._release(trial.id)
            return None
        except OverBudget as exc:
            log.error("%s: giving trial %s back and stopping", exc, trial.id)
            self.stop_event.set()
            self._give_back([trial.id])
            return None
        except (DataMismatch, PluginMissing) as exc:  # not runnable here: skip the study
            if study.id not in self._excluded:
                log.error("%s: not running study %s here", exc, study.id)
            self._excluded.add(study.id)
            self._give_back([trial.id])  # nothing of it ran: no attempt used
            return None
        except TimedOut:
            timeout = study.evaluator_options.trial_timeout_seconds
            return fail("error", f"timed out after {timeout:g} s (trial_timeout_seconds)")
        except Exception as exc:
            tail = "".join(traceback.format_exception(exc)[-6:])
            return fail("error", f"{type(exc).__name__}: {exc}\n{tail}"[:20_000])
