"""Shared fixtures: a fresh SQLite file and a fresh PostgreSQL database per test.

PostgreSQL tests (marker ``postgres``) run when ARCHSEARCH_TEST_POSTGRES_URL (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) is reachable. Otherwise they are
skipped with the reason, unless ARCHSEARCH_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.launch import temporary_postgres_database

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("ARCHSEARCH_TEST_POSTGRES_URL", DEFAULT_PG_URL)
REQUIRE_PG = os.environ.get("ARCHSEARCH_REQUIRE_POSTGRES", "") not in ("", "0", "false")

_pg_counts = {"ran": 0, "skipped": 0}


@cache
def postgres_unreachable_reason() -> str | None:
    """``None`` when PG_URL accepts a connection, else why not."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any driver error means "not usable here"
        return f"{make_url(PG_URL).render_as_string()} unreachable: {str(exc).splitlines()[0]}"


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'archsearch.db'}"


@pytest.fixture
def postgres_url(request) -> Iterator[str]:
    """A freshly created, empty PostgreSQL database, dropped afterwards."""
    reason = postgres_unreachable_reason()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"ARCHSEARCH_REQUIRE_POSTGRES=1 but {reason}")
        _pg_counts["skipped"] += 1
        pytest.skip(f"PostgreSQL test skipped: {reason}")
    _pg_counts["ran"] += 1
    with temporary_postgres_database(PG_URL, prefix="archsearch_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """Run the test once on a SQLite file and once on a fresh PostgreSQL database."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


def pytest_terminal_summary(terminalreporter) -> None:
    reason = postgres_unreachable_reason() if _pg_counts["skipped"] else None
    line = f"PostgreSQL tests: {_pg_counts['ran']} ran on {make_url(PG_URL).render_as_string()}"
    if reason:
        line += f"; {_pg_counts['skipped']} SKIPPED because {reason}"
    terminalreporter.write_line(line, yellow=bool(reason), bold=True)
