"""Throwaway PostgreSQL databases for the tests (and the benchmarks in bench/).

PG_URL (``ARCHSEARCH_TEST_POSTGRES_URL``, default ``postgres@127.0.0.1:5432/test``) names
the server; every test gets a fresh database next to it, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from functools import cache

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("ARCHSEARCH_TEST_POSTGRES_URL", DEFAULT_PG_URL)
# CI sets ARCHSEARCH_REQUIRE_POSTGRES=1: an unreachable server fails the tests then.
REQUIRE_PG = os.environ.get("ARCHSEARCH_REQUIRE_POSTGRES", "") not in ("", "0", "false")


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


@contextlib.contextmanager
def temporary_postgres_database(admin_url: str, prefix: str = "archsearch_tmp") -> Iterator[str]:
    """Create an empty database next to ``admin_url``'s, yield its URL, drop it after.

    Every test (or benchmark run) gets a database of its own. Raises
    ``sqlalchemy.exc.OperationalError`` when the server cannot be reached.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
