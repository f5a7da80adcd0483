"""The worker daemon: register, claim, evaluate, heartbeat, report — and survive failures.

Contract with the coordinator (docs/design.md section 5), spoken through the typed
:class:`client.Client` and the :mod:`protocol` models:
* one trial at a time; a heartbeat thread extends the lease every ``lease/3`` seconds and
  obeys the answer (``prune`` / ``stop``);
* a finished result is spooled to disk before it is sent and forgotten only once the
  coordinator answered (2xx, or a final 4xx such as a lost lease), so a coordinator outage
  loses nothing; transport errors are retried with exponential back-off and jitter;
* SIGTERM / SIGINT: the running trial is released at once (another worker takes it without
  waiting for the lease), then the daemon exits. Python runs a signal handler only between
  bytecodes of the main thread, which may be deep in a long torch or numpy call, so the
  release is made by a watcher thread woken through ``signal.set_wakeup_fd`` the moment
  the signal arrives; the main thread's handler then only unwinds;
* a spooled report the coordinator keeps refusing (a 5xx or a 4xx other than the final
  ones and the transient 401/403/408/429/502/503/504) is tried ``MAX_DELIVERY_ATTEMPTS``
  times, counted on disk, then set aside as ``*.rejected`` so the worker claims again;
  reports are sanitised before they are sent (no NUL bytes, finite numbers only);
* a worker whose data differ from the study's fingerprint gives the trial back and stops
  claiming that study;
* a trial past its study's ``trial_timeout_seconds`` is reported FAILED with the reason
  "timed out after N s (trial_timeout_seconds)", no traceback.
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

from client import ApiError, Client
from protocol.wire import MAX_REASON, ClaimOut, StudyBrief, TrialOut
from search_space import Architecture, InfeasibleArchitecture

from .outcomes import Pruned, Stopped, TimedOut
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
    coordinator: str
    token: str | None
    data_dir: Path
    device: str = "auto"
    studies: list[int] | None = None
    max_trials: int | None = None
    idle_exit_seconds: float | None = None
    poll_seconds: float = 2.0
    name: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{random.getrandbits(24):06x}"
    )


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
    """Extends the lease from a thread and remembers the last action the coordinator sent."""

    def __init__(self, client: Client, trial_id: int, worker_id: int, interval: float) -> None:
        self.client, self.trial_id, self.worker_id = client, trial_id, worker_id
        self.interval = interval
        self.action = "continue"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self, step: int | None = None, value: float | None = None) -> str:
        """One heartbeat now (with an intermediate value when given); returns the action.

        A coordinator that cannot be reached keeps the last action: the trial goes on and
        its result is spooled.
        """
        try:
            answer = self.client.heartbeat(self.trial_id, self.worker_id, step=step, value=value)
            self.action = answer.action
        except ApiError as exc:
            if exc.status == 409:  # the lease is gone: someone else owns the trial now
                self.action = "stop"
            else:
                log.warning("heartbeat for trial %s refused: %s", self.trial_id, exc)
        except httpx.TransportError as exc:
            log.warning("heartbeat for trial %s failed (coordinator down?): %s", self.trial_id, exc)
        return self.action

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()


class WorkerDaemon:
    """Runs trials until told to stop, ``max_trials`` are done, or idle too long.

    ``evaluate`` and ``load_data`` are injectable for tests; by default they are
    :func:`workers.evaluators.evaluate` and a :class:`workers.datasets.DatasetCache`.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        client: Client | None = None,
        evaluate: Callable[..., Any] | None = None,
        load_data: Callable[..., Any] | None = None,
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
        self.evaluate = evaluate
        self.load_data = load_data
        self.spool = Spool(config.data_dir / "spool")
        self.stop_event = threading.Event()
        self.worker_id: int | None = None
        self.done = 0
        self._excluded: set[int] = set()
        self._current: ClaimOut | None = None
        self._evaluating = False
        # The trial given back because of a signal (by the watcher or the handler).
        self._released_on_signal: int | None = None
        self._signal_lock = threading.RLock()
        self._released_event = threading.Event()

    # -- signals ---------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: give the running trial back now, then unwind (main thread only).

        The C-level handler writes the signal number to a pipe at once, wherever the main
        thread is; a watcher thread reading it releases the trial. The Python handler runs
        when the main thread next executes bytecode, releases if the watcher has not, and
        unwinds the evaluation."""
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
                log.info("signal received: releasing the running trial")
                self.stop_event.set()
                self._release_on_signal()

    def _release_on_signal(self) -> bool:
        """Give the running trial back once (watcher or handler, whichever comes first);
        True when a trial was being evaluated."""
        with self._signal_lock:
            current = self._current
            if not self._evaluating or current is None:
                return False
            if self._released_on_signal != current.trial.id:
                self._released_on_signal = current.trial.id
                self._release(current.trial.id)
            self._released_event.set()
            return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Runs on the main thread, which may be anywhere, even inside the HTTP client:
        # it makes no HTTP call itself. The watcher thread releases the trial (it read the
        # same signal from the wake-up fd); the handler waits for that, then unwinds.
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stop_event.set()
        if self._evaluating and self._current is not None:
            if not self._released_event.wait(SIGNAL_RELEASE_WAIT):
                log.warning("the trial was not released in time; its lease will expire")
            self._evaluating = False
            raise WorkerStopping

    def _release(self, trial_id: int) -> None:
        try:
            self.client.release(trial_id, self._worker_id())
            log.info("trial %s released", trial_id)
        except (ApiError, httpx.TransportError) as exc:
            log.warning("could not release trial %s (its lease will expire): %s", trial_id, exc)

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

    def deliver_spool(self) -> int:
        """Send every spooled result; returns how many the coordinator took (or refused
        for good). Stops at the first transport error (the coordinator is down)."""
        delivered = 0
        for entry in self.spool.pending():
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
                    delivered += 1
                    continue
                log.warning(
                    "trial %s: coordinator refused the %s report for good: %s",
                    entry.trial_id,
                    entry.kind,
                    exc.message,
                )
            self.spool.ack(entry)
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
                if self.config.max_trials is not None and self.done >= self.config.max_trials:
                    break
                claimed = self._retrying(
                    "claim",
                    lambda: self.client.claim(
                        self._worker_id(), self.config.studies, sorted(self._excluded)
                    ),
                )
                if claimed is None:
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
                self._run_trial(claimed)
                self.deliver_spool()
        except WorkerStopping:
            pass
        finally:
            self.deliver_spool()
        return self.done

    def _run_trial(self, claimed: ClaimOut) -> None:
        trial, study = claimed.trial, claimed.study
        self._current = claimed
        started = time.monotonic()
        deadline = started + study.evaluator_options.trial_timeout_seconds
        entry: SpoolEntry | None = None
        with Heartbeat(
            self.client, trial.id, self._worker_id(), max(0.5, claimed.lease.seconds / 3)
        ) as hb:

            def tick() -> str:
                if time.monotonic() > deadline:
                    raise TimedOut("the trial ran past its deadline")
                return hb.action

            def report(step: int, value: float) -> str:
                tick()
                return hb.beat(step, value)

            try:
                self._evaluating = True
                entry = self._evaluate(trial, study, tick, report, deadline)
            except WorkerStopping:
                raise
            finally:
                with self._signal_lock:
                    self._evaluating = False
                    self._current = None
        if self._released_on_signal == trial.id:  # given back on a signal: not ours now
            raise WorkerStopping
        if entry is None:  # released (stop, data mismatch): nothing to report
            return
        self.spool.put(entry)
        self.done += 1
        seconds = time.monotonic() - started
        arch = Architecture.from_dict(trial.arch).summary() if trial.arch else "-"
        score = f"{entry.value:.4f}" if entry.value is not None else entry.kind.upper()
        ips = entry.metrics.get("images_per_s")
        log.info(
            "trial %s #%s [%s] %s score=%s %.1fs%s",
            trial.id,
            trial.number,
            trial.source.value,
            arch,
            score,
            seconds,
            f" {ips:.0f} img/s" if isinstance(ips, int | float) else "",
        )

    def _evaluate(
        self,
        trial: TrialOut,
        study: StudyBrief,
        tick: Callable[[], str],
        report: Callable[[int, float], str],
        deadline: float,
    ) -> SpoolEntry | None:
        wid = self._worker_id()
        options = study.evaluator_options
        fingerprint: str | None = None

        def fail(kind: str, reason: str, value: float | None = None) -> SpoolEntry:
            return SpoolEntry(trial.id, wid, kind, value, {}, reason, fingerprint)  # type: ignore[arg-type]

        try:
            if trial.arch is None:
                raise ValueError(f"trial {trial.id} carries no architecture")
            arch = Architecture.from_dict(trial.arch)
            data = self.load_data(
                study.dataset,
                color=options.color,
                seed=study.seed,
                max_per_class=options.max_per_class,
            )
            fingerprint = data.fingerprint
            expected = study.dataset_fingerprint
            if expected and expected != data.fingerprint:
                raise DataMismatch(
                    f"this worker's copy of {study.dataset} has fingerprint "
                    f"{data.fingerprint[:12]}, the study's is {expected[:12]}"
                )
            result = self.evaluate(
                study.evaluator,
                arch,
                data,
                final=trial.is_final,
                validation_fraction=options.validation_fraction,
                seed=study.seed,
                device=self.device,
                readout=options.readout,
                epochs=options.epochs,
                max_features=options.max_features,
                max_gflops_per_image=options.max_gflops_per_image,
                max_activation_mb_per_image=options.max_activation_mb_per_image,
                report=report,
                tick=tick,
                deadline=deadline,
            )
        except InfeasibleArchitecture as exc:
            return fail("infeasible", exc.reason)
        except Pruned as exc:
            last = trial.intermediate
            value = exc.value if exc.value is not None else (last[-1][1] if last else None)
            return fail("pruned", f"pruned by the coordinator: {exc}", value)
        except Stopped:
            self._release(trial.id)
            return None
        except DataMismatch as exc:
            log.error("%s: not running study %s here", exc, study.id)
            self._excluded.add(study.id)
            self._release(trial.id)
            return None
        except TimedOut:
            timeout = options.trial_timeout_seconds
            return fail("error", f"timed out after {timeout:g} s (trial_timeout_seconds)")
        except WorkerStopping:
            raise
        except Exception as exc:
            tail = "".join(traceback.format_exception(exc)[-6:])
            return fail("error", f"{type(exc).__name__}: {exc}\n{tail}"[:20_000])
        metrics = {**result.metrics, "device": self.device}
        return SpoolEntry(
            trial.id, wid, "complete", float(result.value), metrics, None, fingerprint
        )
