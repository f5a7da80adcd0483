"""Fault suite: PostgreSQL connections killed under load (pg_terminate_backend).
The coordinator may answer 503 for a moment, never 500, and recovers without a restart;
no trial is lost or completed twice."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from archsearch.launch import start_coordinator, stop_coordinator
from client import ApiError, Client
from service import __version__
from service.models import Role
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, make_token, migrate

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.postgres]


def terminate_backends(url: str) -> int:
    """Kill every other connection to ``url``'s database; returns how many."""
    dbname = make_url(url).database
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            return len(
                c.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": dbname},
                ).all()
            )
    finally:
        engine.dispose()


def test_connections_killed_under_load(postgres_url):
    migrate(postgres_url)
    token = make_token(postgres_url, Role.WORKER)
    live = start_coordinator(postgres_url, admin_token=ADMIN_TOKEN)
    statuses: Counter[int] = Counter()
    completed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            sid = admin.create_study(
                name="pgkill",
                max_trials=400,
                max_parallel=400,
                top_k=0,
                **FG11_STUDY,
            ).id

        def worker(i: int) -> None:
            with Client(live.base_url, token) as c:
                wid = None
                while not stop.is_set():
                    try:
                        if wid is None:
                            wid = c.register_worker(f"w{i}").id
                        got = c.claim(wid)
                        if got is None:
                            return
                        c.complete(got.trial.id, wid, 0.5)
                        with lock:
                            completed.append(got.trial.id)
                            statuses[200] += 1
                    except ApiError as exc:
                        with lock:
                            statuses[exc.status] += 1
                        time.sleep(0.05)
                    except httpx.TransportError:  # a dropped connection: counted, fatal
                        with lock:
                            statuses[0] += 1
                        time.sleep(0.05)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        killed = 0
        for _ in range(5):
            time.sleep(0.4)
            killed += terminate_backends(postgres_url)
        for t in threads:
            t.join(timeout=120)
        stop.set()
        assert killed > 0, "no connection was killed: the test tested nothing"
        assert httpx.get(f"{live.base_url}/healthz").json() == {
            "status": "ok",
            "db": "ok",
            "version": __version__,
            "suggester": "ok",
        }
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            study = admin.study(sid)
            trials = list(admin.trials(sid))
    finally:
        stop.set()
        stop_coordinator(live)
    assert 500 not in statuses, f"a 500 was answered: {statuses}"
    assert set(statuses) <= {200, 409, 503}, statuses
    done = Counter(completed)
    assert max(done.values()) == 1
    by_state = Counter(t.state for t in trials)
    # Every claimable trial ended COMPLETE exactly once, none stayed RUNNING or WAITING.
    assert by_state["COMPLETE"] + by_state["INFEASIBLE"] == 400, by_state
    assert study.state == "finished"
