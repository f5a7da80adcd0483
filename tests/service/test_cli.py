"""The archsearch CLI against a real coordinator process."""

from __future__ import annotations

import csv
import io
import json

from typer.testing import CliRunner

from archsearch.cli import app
from client import ApiError, Client
from tests.helpers.coordinator import ADMIN_TOKEN, migrate

runner = CliRunner()


def test_token_create_makes_a_working_worker_token(live, db_url):
    result = runner.invoke(
        app, ["token", "create", "--role", "worker", "--name", "gpu01", "--database-url", db_url]
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert token.startswith("as_") and len(token) > 30
    with Client(live.base_url, token) as c:
        assert c.register_worker("gpu01").id >= 1
        try:
            c.create_study(name="x", dataset="builtin:digits")
            raise AssertionError("a worker token created a study")
        except ApiError as exc:
            assert exc.status == 403


def test_token_create_rejects_unknown_role(sqlite_url):
    migrate(sqlite_url)
    result = runner.invoke(app, ["token", "create", "--role", "root", "--database-url", sqlite_url])
    assert result.exit_code == 2
    assert "--role must be one of" in result.output


def test_study_commands_end_to_end(live, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_COORDINATOR", live.base_url)
    monkeypatch.setenv("ARCHSEARCH_TOKEN", ADMIN_TOKEN)
    created = runner.invoke(
        app,
        [
            "study",
            "create",
            "--name",
            "cli study",
            "--dataset",
            "builtin:mnist5k",
            "--space",
            "fg11",
            "--algorithm",
            "random",
            "--max-trials",
            "3",
            "--max-parallel",
            "3",
            "--top-k",
            "1",
        ],
    )
    assert created.exit_code == 0, created.output
    study = json.loads(created.output)
    sid = study["id"]
    assert study["name"] == "cli study" and study["dataset"] == "builtin:mnist5k"
    with Client(live.base_url, ADMIN_TOKEN) as c:
        wid = c.register_worker("cli-test").id
        values = []
        while (got := c.claim(wid)) is not None:
            if got.trial.source == "final":  # the test-split re-score of the best
                c.complete(got.trial.id, wid, 0.25)
                continue
            values.append(0.5 + 0.1 * len(values))
            c.complete(got.trial.id, wid, values[-1])
    listed = runner.invoke(app, ["study", "list"])
    assert listed.exit_code == 0
    line = next(row for row in listed.output.splitlines() if "cli study" in row)
    assert line.split()[0] == str(sid) and "finished" in line
    shown = json.loads(runner.invoke(app, ["study", "show", str(sid)]).output)
    assert shown["state"] == "finished"
    best = runner.invoke(app, ["study", "best", str(sid), "--k", "1"])
    assert best.exit_code == 0
    if values:
        assert f"{max(values):.4f}" in best.output and "0.2500" in best.output
    exported = runner.invoke(app, ["study", "export", str(sid)])
    rows = list(csv.DictReader(io.StringIO(exported.output)))
    assert [r["source"] for r in rows].count("final") == (1 if values else 0)
    assert len(rows) == 3 + (1 if values else 0)


def test_study_create_reports_the_field_on_bad_input(live, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_COORDINATOR", live.base_url)
    monkeypatch.setenv("ARCHSEARCH_TOKEN", ADMIN_TOKEN)
    result = runner.invoke(app, ["study", "create", "--name", "x", "--dataset", "nope:1"])
    assert result.exit_code == 1
    assert "should match pattern" in result.output and "[field: dataset]" in result.output


def test_unreachable_coordinator_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_COORDINATOR", "http://127.0.0.1:1")
    result = runner.invoke(app, ["study", "list"])
    assert result.exit_code == 1
    assert "cannot reach the coordinator at http://127.0.0.1:1" in result.output


def test_spaces_list_and_show():
    listed = runner.invoke(app, ["spaces"])
    assert listed.exit_code == 0
    assert "pinto-cox (default)" in listed.output and "fg11" in listed.output
    shown = runner.invoke(app, ["spaces", "show", "pinto-cox", "--seed", "3"])
    assert shown.exit_code == 0, shown.output
    assert "architecture:" in shown.output
    assert "features:" in shown.output or "INFEASIBLE:" in shown.output
    bad = runner.invoke(app, ["spaces", "show", "nope"])
    assert bad.exit_code == 1
