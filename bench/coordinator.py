"""Coordinator throughput: N in-process HTTP workers (threads) driving claim -> complete
with zero-cost evaluation against ``archsearch serve`` (uvicorn) on SQLite and PostgreSQL,
with 10,000 finished trials already in the study.

Baseline in the same run: Optuna's RDB storage, N threads doing ask -> tell on the same
database server (Optuna has no HTTP tier; its workers talk to the database directly).
Reported: trials/s, p50/p99 claim (ask) latency, errors, and the throughput ratio.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.fixtures import seed_study

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ADMIN = "bench-admin-token-0123456789abcdef"


@dataclass
class Outcome:
    system: str
    backend: str
    workers: int
    trials: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.trials / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh empty database URL for ``backend`` (sqlite file or a new PG database)."""
    from tests.helpers.postgres import temporary_postgres_database

    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{Path(d) / 'bench.db'}"
        return
    with temporary_postgres_database(PG_ADMIN_URL, prefix="archsearch_bench") as url:
        yield url


def _drive(
    n_workers: int, body: Callable[[int, list[float]], int]
) -> tuple[float, list[float], int, int]:
    """Run ``body(i, latencies) -> trials done`` in n threads; return
    ``(seconds, latencies, trials, errors)``."""
    lat: list[list[float]] = [[] for _ in range(n_workers)]
    done = [0] * n_workers
    errors = [0] * n_workers

    def one(i: int) -> None:
        try:
            done[i] = body(i, lat[i])
        except Exception:
            errors[i] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, [x for xs in lat for x in xs], sum(done), sum(errors)


HISTORY = 10_000


def _queue(url: str, study_id: int, n: int) -> None:
    """Append ``n`` WAITING trials (zero-cost work) and raise max_trials to match, so the
    coordinator's own refill has nothing to add."""
    import hashlib

    from sqlalchemy import func, select, update

    from service.db import make_engine, session_factory, session_scope
    from service.models import Study, StudyState, Trial, TrialState

    engine = make_engine(url)
    with session_scope(session_factory(engine)) as s:
        last = s.scalar(select(func.max(Trial.number)).where(Trial.study_id == study_id)) or 0
        s.add_all(
            Trial(
                study_id=study_id,
                number=i,
                state=TrialState.WAITING,
                params={},
                arch=None,
                config_hash=hashlib.sha256(f"q{i}".encode()).hexdigest(),
                metrics={},
                intermediate=[],
            )
            for i in range(last + 1, last + n + 1)
        )
        # A study whose trials all ended is FINISHED: reopen it with room for n more.
        s.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(max_trials=last + n, state=StudyState.RUNNING)
        )
    engine.dispose()


def archsearch_runs(backend: str, workers: tuple[int, ...], n_trials: int) -> list[Outcome]:
    """One coordinator process (uvicorn); for each N, N HTTP clients in threads."""
    from archsearch.launch import start_coordinator, stop_coordinator
    from client import Client

    outcomes = []
    with database(backend) as url:
        from search_space import get_space

        raw = get_space("fg11").sample(0)
        token, sid = seed_study(url, [(raw, 0.5)] * HISTORY)
        live = start_coordinator(url, admin_token=ADMIN)
        try:
            for n_workers in workers:
                _queue(url, sid, n_trials)

                def worker(i: int, lat: list[float], n_workers: int = n_workers) -> int:
                    n = 0
                    with Client(live.base_url, token) as c:
                        wid = c.register_worker(f"bench-{n_workers}-{i}").id
                        while True:
                            t0 = time.perf_counter()
                            got = c.claim(wid)
                            lat.append(time.perf_counter() - t0)
                            if got is None:
                                return n
                            c.complete(got.trial.id, wid, 0.5)
                            n += 1

                seconds, lats, done, errors = _drive(n_workers, worker)
                errors += abs(n_trials - done)  # a lost or doubled trial counts as an error
                outcomes.append(
                    Outcome("archsearch (HTTP)", backend, n_workers, done, seconds, lats, errors)
                )
        finally:
            stop_coordinator(live)
    return outcomes


def optuna_runs(backend: str, workers: tuple[int, ...], n_trials: int) -> list[Outcome]:
    """Optuna's RDB storage on the same kind of database: the same 10,000 finished trials
    first, then for each N, N threads doing ask -> tell."""
    import optuna
    from optuna.distributions import IntDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    outcomes = []
    with database(backend) as url:
        kwargs = {"connect_args": {"timeout": 30}} if backend == "sqlite" else {}
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        study = optuna.create_study(
            storage=storage, study_name="bench", sampler=optuna.samplers.RandomSampler(seed=0)
        )
        dist = {"n_filters": IntDistribution(16, 256)}
        study.add_trials(
            [
                optuna.trial.create_trial(params={"n_filters": 64}, distributions=dist, value=0.5)
                for _ in range(HISTORY)
            ]
        )
        for n_workers in workers:
            per = n_trials // n_workers

            def worker(i: int, lat: list[float], per: int = per) -> int:
                n = 0
                for _ in range(per):
                    t0 = time.perf_counter()
                    trial = study.ask()
                    trial.suggest_int("n_filters", 16, 256)
                    lat.append(time.perf_counter() - t0)
                    study.tell(trial, 0.5)
                    n += 1
                return n

            seconds, lats, done, errors = _drive(n_workers, worker)
            outcomes.append(
                Outcome("optuna RDB ask/tell", backend, n_workers, done, seconds, lats, errors)
            )
        storage.remove_session()
        storage.engine.dispose()
    return outcomes


def run(
    quick: bool = False, record: bool = True, workers: tuple[int, ...] = (8, 32, 64)
) -> list[Outcome]:
    """Measure both systems on both backends; print and (optionally) record the table."""
    n_trials = 256 if quick else 1024
    if quick:
        workers = (8, 32)
    rows = []
    outcomes: list[Outcome] = []
    for backend in ("sqlite", "postgres"):
        ours_all = archsearch_runs(backend, workers, n_trials)
        base_all = optuna_runs(backend, workers, n_trials)
        for ours, base in zip(ours_all, base_all, strict=True):
            outcomes += [ours, base]
            for o in (ours, base):
                ratio = f"{ours.rate / base.rate:.2f}x" if o is ours else "1.00x (baseline)"
                rows.append(
                    [
                        o.system,
                        o.backend,
                        o.workers,
                        o.trials,
                        o.rate,
                        o.pct(0.5),
                        o.pct(0.99),
                        o.errors,
                        ratio,
                    ]
                )
    body = report.table(
        [
            "system",
            "db",
            "workers",
            "trials",
            "trials/s",
            "p50 claim ms",
            "p99 claim ms",
            "errors",
            "throughput vs baseline",
        ],
        rows,
    )
    body += (
        "\n\nZero-cost evaluation: each worker claims (asks), then completes (tells) at "
        "once, with 10,000 finished trials already in the study. archsearch goes through "
        "uvicorn + HTTP (one coordinator process); Optuna talks to the database directly "
        "from the same number of threads. Claim latency is measured by the client around "
        f"one claim (ask) call. {n_trials} trials per row. Clients and server share the "
        "machine's cores."
    )
    report.record("coordinator: claim -> complete throughput", body, enabled=record)
    return outcomes
