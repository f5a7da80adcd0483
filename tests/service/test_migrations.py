"""The Alembic history creates exactly the tables the models describe, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from typer.testing import CliRunner

from archsearch.cli import app
from service.db import make_engine
from service.migrate import alembic_config, current_revision, head_revision, upgrade
from service.models import Base


def test_head_revision_has_readable_id():
    assert head_revision() == "0005_rungs_cost_blend"


def test_upgrade_to_head_matches_models(db_url):
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(db_url):
    from alembic import command

    engine = make_engine(db_url)
    try:
        upgrade(engine)
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_cli_db_upgrade_is_idempotent(db_url, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_DATABASE_URL", db_url)
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "(empty) -> 0005_rungs_cost_blend" in first.output
    second = runner.invoke(app, ["db", "upgrade"])
    assert second.exit_code == 0, second.output
    assert "0005_rungs_cost_blend -> 0005_rungs_cost_blend" in second.output


@pytest.mark.postgres
def test_cli_db_upgrade_reports_unreachable_database(monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "cannot migrate" in result.output


def test_study_state_constraint_follows_the_enum_up_and_down(db_url):
    """0002 lets a study be 'finishing' (and still refuses unknown states); its downgrade
    turns a finishing study back into a running one, which reconcile then moves on."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    insert = text(
        "INSERT INTO studies (name, state, space, dataset, evaluator, evaluator_options, "
        "algorithm, algorithm_options, max_trials, max_parallel, top_k, seed) VALUES "
        "('m', :state, '{}', 'builtin:digits', 'screen', '{}', 'tpe', '{}', 1, 1, 1, 0)"
    )
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(insert, {"state": "finishing"})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"state": "bogus"})
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001_initial")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT state FROM studies")).scalars().all() == ["running"]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"state": "finishing"})
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
