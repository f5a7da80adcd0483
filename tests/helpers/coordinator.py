"""Coordinator helpers: migrate a database, mint tokens, read trials, the in-process API."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.testclient import TestClient
from sqlalchemy import select

from service.auth import create_token
from service.db import make_engine, session_factory, session_scope
from service.migrate import upgrade
from service.models import Role, Trial

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

    def new_worker(self, name: str = "w") -> int:
        r = self.client.post("/api/v1/workers", json={"name": name}, headers=self.worker)
        assert r.status_code == 201, r.text
        return r.json()["id"]
