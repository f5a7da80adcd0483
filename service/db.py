"""Engine and session factory. The only place that knows dialect quirks.

SQLite runs in WAL mode with a busy timeout, and its transactions are begun by us
(``BEGIN`` or, with the execution option ``sqlite_immediate=True``, ``BEGIN IMMEDIATE``)
so that a read-then-write such as a claim takes the write lock up front instead of
failing with "database is locked" half-way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, Float, create_engine, event, literal, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

from .config import Settings


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` (sqlite or postgresql+psycopg).

    For a SQLite file the parent directory is created. Raises ``sqlalchemy.exc.ArgumentError``
    for a URL SQLAlchemy cannot parse.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # An unusable directory is reported by the first connection, with its reason.
            with contextlib.suppress(OSError):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine, busy_timeout_ms)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own transaction start (pysqlite's implicit BEGIN
        # would otherwise defer the write lock and break BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def engine_from_settings(settings: Settings) -> Engine:
    return make_engine(
        settings.resolved_database_url,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception (re-raised)."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def close_quietly(session: Session) -> None:
    """Close ``session``; a connection that died meanwhile is invalidated, not raised."""
    try:
        session.close()
    except SQLAlchemyError:
        with contextlib.suppress(SQLAlchemyError):
            session.invalidate()


def check_database(engine: Engine) -> str | None:
    """``None`` when the database answers ``SELECT 1``, else a one-line reason."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except SQLAlchemyError as exc:
        return f"{type(exc.orig or exc).__name__}: {str(exc.orig or exc).splitlines()[0]}"


# -- the database clock ---------------------------------------------------------------
# Leases are compared with the database's clock so that coordinator processes on hosts
# with skewed clocks agree. On SQLite (one machine) "the database clock" is the host clock,
# written in the same text format SQLAlchemy uses for DateTime so that strings compare
# in time order.


class db_now_plus(FunctionElement):
    """SQL expression: the database's current UTC time plus ``seconds`` (may be 0)."""

    type = DateTime(timezone=True)
    inherit_cache = True

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(literal(float(seconds), Float()))


@compiles(db_now_plus, "postgresql")
def _now_plus_pg(element: db_now_plus, compiler: Any, **kw: Any) -> str:
    return f"(now() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(db_now_plus, "sqlite")
def _now_plus_sqlite(element: db_now_plus, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%+.6f seconds', {seconds}))"
