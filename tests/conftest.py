"""Shared fixtures: a fresh SQLite file and a fresh PostgreSQL database per test, and the
image data of ../shared/data and of the Debian package dataset-fashion-mnist.

PostgreSQL tests (marker ``postgres``) run when ARCHSEARCH_TEST_POSTGRES_URL (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) is reachable. Otherwise they are
skipped with the reason, unless ARCHSEARCH_REQUIRE_POSTGRES=1 (CI), where they fail.
Tests of the shared data skip the same way, unless ARCHSEARCH_REQUIRE_DATA=1 (CI).
The helpers behind these fixtures are in tests/helpers/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import data
from tests.helpers.postgres import (
    PG_URL,
    REQUIRE_PG,
    postgres_unreachable_reason,
    temporary_postgres_database,
)

_pg_counts = {"ran": 0, "skipped": 0}


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


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """``shared_data("cifar10-jpeg.zip")``: that file of ../shared/data (the full data
    sets, for the tests that measure accuracy on them). Absent: the test is skipped with
    the reason, or fails under ARCHSEARCH_REQUIRE_DATA=1. Tests that only need a few real
    images use the committed fixtures instead (``data.CIFAR10_MINI_ZIP``, ...)."""

    def find(name: str) -> Path:
        __tracebackhide__ = True
        return data.require(data.SHARED_DATA / name, "a checkout without ../shared/data")

    return find


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The IDX files of the Debian package dataset-fashion-mnist (skip or fail as above)."""
    return data.require(data.FASHION_MNIST_DIR, "apt-get install dataset-fashion-mnist")


def pytest_terminal_summary(terminalreporter) -> None:
    reason = postgres_unreachable_reason() if _pg_counts["skipped"] else None
    line = f"PostgreSQL tests: {_pg_counts['ran']} ran on {make_url(PG_URL).render_as_string()}"
    if reason:
        line += f"; {_pg_counts['skipped']} SKIPPED because {reason}"
    terminalreporter.write_line(line, yellow=bool(reason), bold=True)
    if data.skipped:
        terminalreporter.write_line(
            f"Data tests SKIPPED for want of: {', '.join(sorted(data.skipped))} "
            "(ARCHSEARCH_REQUIRE_DATA=1 makes that a failure)",
            yellow=True,
            bold=True,
        )
