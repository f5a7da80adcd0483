"""Coordinator helpers: migrate a database, mint tokens, read trials, the in-process API."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.testclient import TestClient
from sqlalchemy import select

from client import Client
from service.auth import create_token
from service.db import make_engine, session_factory, session_scope
from service.migrate import upgrade
from service.models import Role, Trial
from tests.helpers.waiting import wait_for

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
# A random-search study over fg11 (200 px, so nearly every draw can be built) for tests
# whose workers do not really evaluate: pass name, max_trials, max_parallel, top_k.
FG11_STUDY = {
    "dataset": "builtin:digits",
    "space": "fg11",
    "algorithm": "random",
    "evaluator_options": {"max_features": 10_000_000},
}


def migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def make_token(url: str, role: Role) -> str:
    engine = make_engine(url)
    try:
        with session_scope(session_factory(engine)) as s:
            return create_token(s, role, f"test-{role.value}")
    finally:
        engine.dispose()


def db_trials(url: str, study_id: int) -> list[Trial]:
    """A study's trial rows, read straight from the database (not through the API)."""
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return list(s.scalars(select(Trial).where(Trial.study_id == study_id)))
    finally:
        engine.dispose()


def queued_study(base_url: str, name: str, n: int) -> tuple[int, int]:
    """A random fg11 study of ``n`` trials on a live coordinator, all queued: ``(study
    id, claimable trials)`` once every trial is WAITING or INFEASIBLE."""
    with Client(base_url, ADMIN_TOKEN) as admin:
        study = admin.create_study(name=name, max_trials=n, max_parallel=n, top_k=0, **FG11_STUDY)
        # Creation answers after at most 2 s of suggesting; the queue fills in the background.
        deadline = time.monotonic() + 120
        while True:
            counts = admin.study(study.id).counts
            if counts.get("WAITING", 0) + counts.get("INFEASIBLE", 0) == n:
                return study.id, counts.get("WAITING", 0)
            assert time.monotonic() < deadline, counts
            time.sleep(0.5)


@dataclass
class Api:
    """An in-process coordinator and the tokens to talk to it."""

    client: TestClient
    url: str
    admin: dict[str, str]
    worker: dict[str, str]
    reader: dict[str, str]

    def new_study(self, **overrides: object) -> dict:
        body = {
            "name": "s",
            "dataset": "builtin:digits",
            "space": "pinto-cox",
            "algorithm": "random",
            "max_trials": 20,
            "max_parallel": 4,
            "top_k": 0,
        }
        body.update(overrides)
        r = self.client.post("/api/v1/studies", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()

    def counts_when(
        self, study_id: int, ready: Callable[[dict[str, int]], bool], timeout: float = 60
    ) -> dict[str, int]:
        """The study's trial counts (non-empty) once ``ready(counts)`` holds, polled by
        :func:`~tests.helpers.waiting.wait_for`; fails the test after ``timeout`` s."""

        def counts() -> dict[str, int] | None:
            r = self.client.get(f"/api/v1/studies/{study_id}", headers=self.reader)
            got = r.json()["counts"]
            return got if ready(got) else None

        return wait_for(counts, timeout=timeout, what=f"the counts of study {study_id}")

    def new_worker(self, name: str = "w") -> int:
        r = self.client.post("/api/v1/workers", json={"name": name}, headers=self.worker)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def claim_one(self, worker: int, study: int | None = None) -> int:
        """The id of a trial ``worker`` claims (of ``study`` when given)."""
        params = None if study is None else {"study": study}
        r = self.client.post(f"/api/v1/workers/{worker}/claim", params=params, headers=self.worker)
        assert r.status_code == 200, r.text
        return r.json()["trial"]["id"]

    def heartbeat(self, worker: int, trial: int, step: int, value: float) -> str:
        """Report ``value`` at ``step`` for a running trial; the coordinator's action."""
        body = {"worker_id": worker, "step": step, "value": value}
        r = self.client.post(f"/api/v1/trials/{trial}/heartbeat", json=body, headers=self.worker)
        assert r.status_code == 200, r.text
        return r.json()["action"]


def five_finished_peers(api: Api, worker: int, step: int, study: int | None = None) -> int:
    """For the median stopping rule: five trials, one after another, each reporting its
    value at ``step`` (answered ``continue``: fewer than five finished peers yet) and
    completed with it, the values 0.5 to 0.9 (median 0.7); then the id of a sixth trial
    claimed, to report below or above their median."""
    for value in (0.5, 0.6, 0.7, 0.8, 0.9):
        tid = api.claim_one(worker, study)
        assert api.heartbeat(worker, tid, step, value) == "continue"
        body = {"worker_id": worker, "value": value}
        r = api.client.post(f"/api/v1/trials/{tid}/complete", json=body, headers=api.worker)
        assert r.status_code == 200, r.text
    return api.claim_one(worker, study)
