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


def _token(db_url: str, role: str, name: str) -> str:
    result = runner.invoke(
        app, ["token", "create", "--role", role, "--name", name, "--database-url", db_url]
    )
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def _row(output: str, name: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.endswith(f" {name}"))


def test_token_list_and_revoke(live, db_url):
    token = _token(db_url, "worker", "gpu02")
    _token(db_url, "reader", "dash")
    listed = runner.invoke(app, ["token", "list", "--database-url", db_url])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[0].split() == ["id", "role", "created", "revoked", "name"]
    row = _row(listed.output, "gpu02")
    assert row[1] == "worker" and row[4] == "-"  # id, role, date, time, revoked
    assert _row(listed.output, "dash")[1] == "reader"
    assert token not in listed.output  # only hashes are stored
    with Client(live.base_url, token) as c:
        wid = c.register_worker("gpu02").id
        assert c.claim(wid) is None
        revoked = runner.invoke(app, ["token", "revoke", row[0], "--database-url", db_url])
        assert revoked.exit_code == 0, revoked.output
        assert f"revoked token {row[0]} (gpu02, worker)" in revoked.output
        try:
            c.claim(wid)
            raise AssertionError("a revoked token claimed")
        except ApiError as exc:
            assert exc.status == 401
    after = _row(runner.invoke(app, ["token", "list", "--database-url", db_url]).output, "gpu02")
    assert after[4] != "-" and len(after) == 7  # revoked date and time
    # Revoking again changes nothing; by name works too.
    again = runner.invoke(app, ["token", "revoke", "gpu02", "--database-url", db_url])
    assert again.exit_code == 0 and f"revoked token {row[0]}" in again.output


def test_token_revoke_unknown_or_ambiguous(sqlite_url):
    migrate(sqlite_url)
    missing = runner.invoke(app, ["token", "revoke", "nope", "--database-url", sqlite_url])
    assert missing.exit_code == 1 and "no token with id or name 'nope'" in missing.output
    missing = runner.invoke(app, ["token", "revoke", "99", "--database-url", sqlite_url])
    assert missing.exit_code == 1
    _token(sqlite_url, "worker", "twin")
    _token(sqlite_url, "worker", "twin")
    both = runner.invoke(app, ["token", "revoke", "twin", "--database-url", sqlite_url])
    assert both.exit_code == 1 and "revoke by id" in both.output
    listed = runner.invoke(app, ["token", "list", "--database-url", sqlite_url]).output
    assert all(line.split()[4] == "-" for line in listed.splitlines()[1:])


def test_serve_help_documents_the_connection_limits():
    result = runner.invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--keep-alive", "--header-timeout", "--max-header-bytes", "--limit-concurrency"):
        assert option in result.output


def test_header_timeout_protocol_closes_slow_clients():
    import socket
    import threading
    import time

    import uvicorn

    from archsearch.cli import header_timeout_protocol

    async def hello(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        hello,
        host="127.0.0.1",
        port=port,
        http=header_timeout_protocol(0.5),
        timeout_keep_alive=30,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            started = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
            assert s.recv(100) == b""
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(10)
