"""Coordinator fixtures: a migrated database, an in-process app, a real uvicorn process.
The helpers behind them (migrate, make_token, Api, ...) are in tests/helpers/coordinator.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from archsearch.launch import LiveCoordinator, start_coordinator, stop_coordinator
from service.config import Settings
from service.db import make_engine, session_factory
from service.models import Role
from service.trial_store import TrialStore
from tests.helpers.coordinator import ADMIN_TOKEN, Api, make_token, migrate


@pytest.fixture
def api_factory(db_url):
    """Build an :class:`Api` with settings overrides (e.g. a short lease)."""
    migrate(db_url)
    tokens = {r: make_token(db_url, r) for r in (Role.WORKER, Role.READER)}
    opened: list[TestClient] = []

    from service.app import create_app

    def build(**settings: object) -> Api:
        # The suggester runs in-process here (no pool to spawn per test); the live
        # coordinators of the integration tests use the default process pool.
        settings.setdefault("suggest_processes", 0)
        s = Settings(database_url=db_url, admin_token=ADMIN_TOKEN, **settings)
        client = TestClient(create_app(s, maintenance=False))
        client.__enter__()
        opened.append(client)
        return Api(
            client=client,
            url=db_url,
            admin={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            worker={"Authorization": f"Bearer {tokens[Role.WORKER]}"},
            reader={"Authorization": f"Bearer {tokens[Role.READER]}"},
        )

    yield build
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def api(api_factory) -> Api:
    return api_factory()


@pytest.fixture
def live(db_url) -> Iterator[LiveCoordinator]:
    migrate(db_url)
    coordinator = start_coordinator(db_url, admin_token=ADMIN_TOKEN)
    yield coordinator
    stop_coordinator(coordinator)


@pytest.fixture
def store(db_url) -> Iterator[TrialStore]:
    """A trial store on a migrated database: 30 s leases, 2 attempts."""
    migrate(db_url)
    engine = make_engine(db_url)
    yield TrialStore(session_factory(engine), lease_seconds=30, max_attempts=2)
    engine.dispose()
