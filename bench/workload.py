"""Load generators for the coordinator benchmarks: worker processes for archsearch (HTTP
claim -> report) and for Optuna (ask -> tell on its RDB storage), a driver that starts
them (``multiprocessing``, spawn), holds them at a start line and collects what each
measured, and the CPU time of a process tree.

Every worker process gets the same treatment: it imports, connects, registers or loads
its study and warms up before the start line; the clock starts when all are ready.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import random
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Back-off after an empty claim (204 or an empty batch): exponential from MIN to MAX,
# jittered, reset by a claim that gets work. The worker daemon waits ~poll_seconds (2 s)
# instead; a zero-cost benchmark would measure that sleep rather than the coordinator.
BACKOFF_MIN = 0.005
BACKOFF_MAX = 0.1


@dataclass
class WorkerResult:
    """What one worker process measured (all times from ``time.monotonic`` /
    ``perf_counter``, system-wide clocks on Linux)."""

    done: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds to get work, per claim
    empties: int = 0  # claims that got no work
    errors: list[str] = field(default_factory=list)
    last: float | None = None  # monotonic time of its last finished trial
    cpu: float = 0.0  # its own CPU seconds between the start line and the end


@dataclass
class Run:
    seconds: float  # start line -> last finished trial
    results: list[WorkerResult]
    server_cpu: float | None = None  # CPU seconds of the server process trees
    timed_out: bool = False

    @property
    def done(self) -> int:
        return sum(r.done for r in self.results)

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.results for x in r.latencies]

    @property
    def empties(self) -> int:
        return sum(r.empties for r in self.results)

    @property
    def errors(self) -> list[str]:
        return [e for r in self.results for e in r.errors]

    @property
    def client_cpu(self) -> float:
        return sum(r.cpu for r in self.results)


# -- CPU time of a process tree --------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime+stime+cutime+cstime in seconds) of ``pid``, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17
    ppid = int(fields[1])
    ticks = sum(int(x) for x in fields[11:15])
    return ppid, ticks / _TICK


def _process_table() -> dict[int, tuple[int, float]]:
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    return stats


def descendants(pid: int) -> list[int]:
    """The pids of every live descendant of ``pid`` (Linux ``/proc``)."""
    stats = _process_table()
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    out, todo = [], list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def stop_coordinator_tree(live: Any) -> None:
    """``archsearch.launch.stop_coordinator``, then SIGKILL whatever the coordinator
    started and left behind (its suggester processes outlive a SIGTERM'd coordinator,
    seen with the pool of ``suggest_processes``): a benchmark row must not leave idle
    processes behind for the next one."""
    import signal

    from archsearch.launch import stop_coordinator

    left = descendants(live.process.pid)
    stop_coordinator(live)
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        left = [p for p in left if _alive(p)]
        if left:
            time.sleep(0.1)
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def tree_cpu_seconds(root_pids: Sequence[int]) -> float:
    """CPU seconds used so far by the processes ``root_pids`` and all their descendants
    (live ones: user + system; ended ones that were waited for: through their parent's
    cutime/cstime). Linux ``/proc``; psutil is not needed."""
    try:
        psutil = __import__("psutil")
    except ImportError:
        psutil = None
    if psutil is not None:
        total = 0.0
        for pid in root_pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
        return total
    stats = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(root_pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


# -- the driver ------------------------------------------------------------------------
def drive(
    target: Callable[..., None],
    specs: Sequence[dict[str, Any]],
    *,
    n_trials: int,
    server_pids: Sequence[int] = (),
    on_start: Callable[[], None] | None = None,
    is_over: Callable[[], bool] | None = None,
    setup_timeout: float = 900.0,
    run_timeout: float = 600.0,
) -> Run:
    """Start one process per spec running ``target(spec, index, out, go, stop, counter)``,
    wait until every one is ready, start the clock, and collect their results.

    ``counter`` is a shared count of finished trials (archsearch workers add to it) or
    of reserved asks (Optuna workers take from it until ``n_trials``). ``stop`` is set
    when ``counter`` reaches ``n_trials``, when ``is_over()`` (polled about once a second)
    says the study has nothing left, or after ``run_timeout`` seconds.
    """
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    counter = ctx.Value("q", 0)
    procs = [
        ctx.Process(target=target, args=(spec, i, out, go, stop, counter), daemon=True)
        for i, spec in enumerate(specs)
    ]
    for p in procs:
        p.start()
    results: dict[int, WorkerResult] = {}
    try:
        ready = 0
        deadline = time.monotonic() + setup_timeout
        while ready < len(procs):
            kind, i, payload = _get(out, procs, deadline, "getting ready")
            if kind == "ready":
                ready += 1
            else:
                raise RuntimeError(f"worker {i} failed before the start: {payload}")
        cpu0 = tree_cpu_seconds(server_pids) if server_pids else None
        t0 = time.monotonic()
        go.set()
        if on_start is not None:
            on_start()
        deadline = t0 + run_timeout
        timed_out = False
        next_check = t0 + 1.0
        while len(results) < len(procs):
            now = time.monotonic()
            if not stop.is_set():
                timed_out = now > deadline
                over = counter.value >= n_trials or timed_out
                if not over and is_over is not None and now >= next_check:
                    next_check = now + 1.0
                    over = is_over()
                if over:
                    stop.set()
            try:
                kind, i, payload = out.get(timeout=0.02)
            except queue_mod.Empty:
                if all(not p.is_alive() for p in procs) and out.empty():
                    raise RuntimeError("worker processes died without reporting") from None
                continue
            if kind == "result":
                results[i] = payload
            elif kind == "error":
                results[i] = WorkerResult(errors=[payload])
        cpu1 = tree_cpu_seconds(server_pids) if server_pids else None
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    ends = [r.last for r in results.values() if r.last is not None]
    seconds = (max(ends) - t0) if ends else float("nan")
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Run(seconds, [results[i] for i in sorted(results)], server_cpu, timed_out)


def _get(out: Any, procs: Sequence[Any], deadline: float, what: str) -> tuple[str, int, Any]:
    while True:
        try:
            return out.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [i for i, p in enumerate(procs) if not p.is_alive()]
            if dead and out.empty():
                raise RuntimeError(f"worker(s) {dead} exited while {what}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers still {what} after the timeout") from None


def _run_body(
    body: Callable[..., WorkerResult],
    spec: dict[str, Any],
    index: int,
    out: Any,
    go: Any,
    stop: Any,
    counter: Any,
) -> None:
    """Run a worker body; its result (or its traceback) goes to ``out``."""
    try:
        result = body(spec, index, out, go, stop, counter)
    except BaseException:
        out.put(("error", index, traceback.format_exc(limit=8)))
        return
    out.put(("result", index, result))


# -- archsearch ------------------------------------------------------------------------
def client_has_batches() -> bool:
    """Whether ``client.Client`` has ``claim_many`` and ``report_many``."""
    from client import Client

    return hasattr(Client, "claim_many") and hasattr(Client, "report_many")


def _claim(c: Any, wid: int, batch: int) -> list[Any]:
    if batch > 1:
        return list(c.claim_many(wid, batch))
    got = c.claim(wid)
    return [] if got is None else [got]


def _report(c: Any, wid: int, claims: Sequence[Any], batch: int) -> list[str]:
    """Report ``claims`` done (score: :func:`bench.fixtures.objective`); returns the
    refusals of a batch report."""
    from bench.fixtures import objective

    if batch > 1:
        from protocol.wire import CompleteReport

        reports = [
            CompleteReport(trial_id=cl.trial.id, kind="complete", value=objective(cl.trial.params))
            for cl in claims
        ]
        results = c.report_many(wid, reports)
        return [f"report {r.trial_id}: {r.status} {r.error}" for r in results if r.status != 200]
    for cl in claims:
        c.complete(cl.trial.id, wid, objective(cl.trial.params))
    return []


def _archsearch_body(
    spec: dict[str, Any], index: int, out: Any, go: Any, stop: Any, counter: Any
) -> WorkerResult:
    """HTTP worker: claim (``batch`` at a time), report at once (zero-cost evaluation),
    until ``stop``. Time to work: from the start of the first claim attempt until a claim
    returns work, empty claims and back-off in between included."""
    import httpx

    from client import Client
    from client.http import ApiError

    res = WorkerResult()
    batch = spec["batch"]
    with Client(spec["base_url"], spec["token"], timeout=120) as c:
        wid = c.register_worker(f"bench-{index}").id
        out.put(("ready", index, None))
        go.wait()
        cpu0 = time.process_time()
        first: float | None = None
        delay = BACKOFF_MIN
        rng = random.Random(index)
        while not stop.is_set():
            if first is None:
                first = time.perf_counter()
            try:
                claims = _claim(c, wid, batch)
            except (ApiError, httpx.TransportError) as exc:
                res.errors.append(f"claim: {type(exc).__name__}: {exc}")
                stop.wait(delay)
                continue
            if not claims:
                res.empties += 1
                stop.wait(delay * rng.uniform(0.5, 1.5))
                delay = min(2 * delay, BACKOFF_MAX)
                continue
            res.latencies.append(time.perf_counter() - first)
            first = None
            delay = BACKOFF_MIN
            try:
                refused = _report(c, wid, claims, batch)
            except (ApiError, httpx.TransportError) as exc:
                res.errors.append(f"report: {type(exc).__name__}: {exc}")
                continue
            res.errors.extend(refused)
            with counter.get_lock():
                counter.value += len(claims)
            res.done += len(claims)
            res.last = time.monotonic()
        res.cpu = time.process_time() - cpu0
    return res


def archsearch_worker(*args: Any) -> None:
    """Process target: :func:`_archsearch_body` (see :func:`drive` for the arguments)."""
    _run_body(_archsearch_body, *args)


# -- Optuna ----------------------------------------------------------------------------
def make_sampler(kind: str, seed: int) -> Any:
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


def _optuna_body(
    spec: dict[str, Any], index: int, out: Any, go: Any, stop: Any, counter: Any
) -> WorkerResult:
    """Optuna worker process, as its docs run one in parallel: open the storage, load the
    study, then ``spec["threads"]`` threads each ask -> suggest every active parameter ->
    tell, until ``n_trials`` asks were taken in all. Time to work: the ``ask`` plus the
    suggestions (Optuna samples inside ``suggest_*``)."""
    import optuna

    from bench import fixtures
    from search_space import get_space

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = fixtures.optuna_storage(spec["url"], spec["pool_size"], spec["max_overflow"])
    study = optuna.load_study(
        study_name=spec["study"],
        storage=storage,
        sampler=make_sampler(spec["sampler"], spec["seed"] + index),
    )
    study.get_trials(deepcopy=False)  # its cache: the history is read once, before the clock
    plan = fixtures.optuna_plan(get_space(fixtures.SPACE))
    if spec.get("warm_ask"):
        # One untimed ask, told FAIL (samplers ignore failed trials): the sampler builds
        # its search-space cache over the history, as a long-running worker has.
        trial = study.ask()
        fixtures.suggest_all(trial, plan)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    n_trials = spec["n_trials"]
    res = WorkerResult()
    lock = threading.Lock()
    out.put(("ready", index, None))
    go.wait()
    cpu0 = time.process_time()

    def loop() -> None:
        while not stop.is_set():
            with counter.get_lock():
                if counter.value >= n_trials:
                    return
                counter.value += 1
            try:
                t0 = time.perf_counter()
                trial = study.ask()
                point = fixtures.suggest_all(trial, plan)
                took = time.perf_counter() - t0
                study.tell(trial, fixtures.objective(point))
            except Exception as exc:
                with lock:
                    res.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                res.latencies.append(took)
                res.done += 1
                res.last = time.monotonic()

    threads = [threading.Thread(target=loop) for _ in range(spec["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res.cpu = time.process_time() - cpu0
    fixtures.dispose_optuna(storage)
    return res


def optuna_worker(*args: Any) -> None:
    """Process target: :func:`_optuna_body` (see :func:`drive` for the arguments)."""
    _run_body(_optuna_body, *args)
