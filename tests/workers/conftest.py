"""Worker-suite fixtures: a real coordinator process for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from archsearch.launch import LiveCoordinator, start_coordinator, stop_coordinator
from service.models import Role
from tests.helpers.coordinator import ADMIN_TOKEN, make_token, migrate


@pytest.fixture
def system(sqlite_url: str) -> Iterator[tuple[LiveCoordinator, str]]:
    """A coordinator (uvicorn on a loopback port) over a fresh SQLite file, and a worker
    token for it."""
    migrate(sqlite_url)
    live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN)
    yield live, make_token(sqlite_url, Role.WORKER)
    stop_coordinator(live)
