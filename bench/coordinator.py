"""Coordinator throughput: N in-process HTTP workers (threads) driving claim -> complete
with zero-cost evaluation against ``archsearch serve`` (uvicorn) on SQLite and PostgreSQL.

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
    from service.launch import temporary_postgres_database

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


def archsearch_run(backend: str, n_workers: int, n_trials: int) -> Outcome:
    """One coordinator process (uvicorn), ``n_workers`` HTTP clients in threads."""
    from client import Client
    from service.auth import create_token
    from service.db import make_engine, session_factory, session_scope
    from service.launch import start_coordinator, stop_coordinator
    from service.migrate import upgrade
    from service.models import Role

    with database(backend) as url:
        engine = make_engine(url)
        upgrade(engine)
        with session_scope(session_factory(engine)) as s:
            token = create_token(s, Role.WORKER, "bench")
        engine.dispose()
        live = start_coordinator(url, admin_token=ADMIN)
        try:
            with Client(live.base_url, ADMIN) as admin:
                study = admin.create_study(
                    name="bench",
                    dataset="builtin:digits",
                    space="fg11",
                    algorithm="random",
                    max_trials=n_trials,
                    max_parallel=n_trials,
                    evaluator_options={"max_features": 10_000_000},
                    top_k=0,
                )
            claimable = study["counts"].get("WAITING", 0)

            def worker(i: int, lat: list[float]) -> int:
                n = 0
                with Client(live.base_url, token) as c:
                    wid = c.register_worker(f"bench-{i}")["id"]
                    while True:
                        t0 = time.perf_counter()
                        got = c.claim(wid)
                        lat.append(time.perf_counter() - t0)
                        if got is None:
                            return n
                        c.complete(got["trial"]["id"], wid, 0.5)
                        n += 1

            seconds, lats, done, errors = _drive(n_workers, worker)
        finally:
            stop_coordinator(live)
    errors += abs(claimable - done)  # a lost or doubled trial counts as an error
    return Outcome("archsearch (HTTP)", backend, n_workers, done, seconds, lats, errors)


def optuna_run(backend: str, n_workers: int, n_trials: int) -> Outcome:
    """Optuna's RDB storage on the same kind of database, ``n_workers`` threads."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with database(backend) as url:
        kwargs = {"connect_args": {"timeout": 30}} if backend == "sqlite" else {}
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        study = optuna.create_study(
            storage=storage, study_name="bench", sampler=optuna.samplers.RandomSampler(seed=0)
        )
        per = n_trials // n_workers

        def worker(i: int, lat: list[float]) -> int:
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
        storage.remove_session()
        storage.engine.dispose()
    return Outcome("optuna RDB ask/tell", backend, n_workers, done, seconds, lats, errors)


def run(
    quick: bool = False, record: bool = True, workers: tuple[int, ...] = (32,)
) -> list[Outcome]:
    """Measure both systems on both backends; print and (optionally) record the table."""
    n_trials = 320 if quick else 2000
    rows = []
    outcomes: list[Outcome] = []
    for backend in ("sqlite", "postgres"):
        for n in workers:
            ours = archsearch_run(backend, n, n_trials)
            base = optuna_run(backend, n, n_trials)
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
        "once. archsearch goes through uvicorn + HTTP; Optuna talks to the database "
        "directly. Claim latency is measured by the client around one claim call. "
        f"{n_trials} trials per run."
    )
    report.record("coordinator: claim -> complete throughput", body, enabled=record)
    return outcomes
