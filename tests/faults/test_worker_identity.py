"""Worker identity: a worker belongs to the token that registered it. Another worker token
cannot claim, heartbeat, report or release for it (403, field ``worker_id``) and nothing of
the owner's trial changes; a revoked token gets 401; scores outside the evaluator's range
(accuracy: [0, 1]) are 422 naming ``value``. Auth runs before the body is read. Runs on
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from archsearch.cli import app as cli
from protocol.wire import EvaluatorName
from service.auth import create_token
from service.db import make_engine, session_factory, session_scope
from service.models import Role
from service.trial_store import SCORE_RANGES
from tests.helpers.coordinator import db_trials

runner = CliRunner()


def err(response) -> dict:
    return response.json()["error"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def named_token(url: str, role: Role, name: str) -> str:
    engine = make_engine(url)
    try:
        with session_scope(session_factory(engine)) as s:
            return create_token(s, role, name)
    finally:
        engine.dispose()


@pytest.fixture
def two(api):
    """Tokens A and B, worker A (registered with A) holding a RUNNING trial."""
    a = bearer(named_token(api.url, Role.WORKER, "node-a"))
    b = bearer(named_token(api.url, Role.WORKER, "node-b"))
    study = api.new_study(max_trials=4, max_parallel=4)
    wa = api.client.post("/api/v1/workers", json={"name": "a"}, headers=a).json()["id"]
    wb = api.client.post("/api/v1/workers", json={"name": "b"}, headers=b).json()["id"]
    r = api.client.post(f"/api/v1/workers/{wa}/claim", headers=a)
    assert r.status_code == 200, r.text
    return api, a, b, wa, wb, r.json()["trial"], study


def _a_trial_untouched(api, study, trial, wa):
    row = next(t for t in db_trials(api.url, study["id"]) if t.id == trial["id"])
    assert row.state.value == "RUNNING" and row.worker_id == wa and row.attempt == 1
    assert row.value is None and row.intermediate == []


def test_another_token_cannot_act_for_a_worker(two):
    api, a, b, wa, _wb, trial, study = two
    tid = trial["id"]
    attempts = [
        (f"/api/v1/workers/{wa}/claim", None),
        (f"/api/v1/trials/{tid}/heartbeat", {"worker_id": wa, "step": 1, "value": 0.9}),
        (f"/api/v1/trials/{tid}/complete", {"worker_id": wa, "value": 1.0, "metrics": {}}),
        (f"/api/v1/trials/{tid}/fail", {"worker_id": wa, "kind": "error", "reason": "x"}),
        (f"/api/v1/trials/{tid}/release", {"worker_id": wa}),
    ]
    for path, body in attempts:
        r = api.client.post(path, json=body, headers=b)
        assert r.status_code == 403, (path, r.text)
        assert err(r)["field"] == "worker_id" and "another token" in err(r)["message"]
    # Nor may the admin token act for a worker token's worker.
    r = api.client.post(f"/api/v1/trials/{tid}/release", json={"worker_id": wa}, headers=api.admin)
    assert r.status_code == 403 and err(r)["field"] == "worker_id"
    _a_trial_untouched(api, study, trial, wa)
    # A keeps its trial: a claim gives it back, and its report is accepted.
    again = api.client.post(f"/api/v1/workers/{wa}/claim", headers=a)
    assert again.status_code == 200 and again.json()["trial"]["id"] == tid
    hb = api.client.post(
        f"/api/v1/trials/{tid}/heartbeat", json={"worker_id": wa, "step": 1}, headers=a
    )
    assert hb.status_code == 200, hb.text
    done = api.client.post(
        f"/api/v1/trials/{tid}/complete", json={"worker_id": wa, "value": 0.5}, headers=a
    )
    assert done.status_code == 200 and done.json()["state"] == "COMPLETE"
    assert done.json()["value"] == 0.5


def test_b_with_its_own_worker_id_still_cannot_touch_a_trial(two):
    api, _a, b, wa, wb, trial, study = two
    r = api.client.post(
        f"/api/v1/trials/{trial['id']}/complete", json={"worker_id": wb, "value": 0.9}, headers=b
    )
    assert r.status_code == 409 and err(r)["field"] == "worker_id"
    _a_trial_untouched(api, study, trial, wa)


def test_admin_token_workers_are_bound_to_the_admin_token(api):
    api.new_study(max_trials=2, max_parallel=2)
    w = api.client.post("/api/v1/workers", json={"name": "adm"}, headers=api.admin).json()["id"]
    r = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    assert r.status_code == 403 and err(r)["field"] == "worker_id"
    assert api.client.post(f"/api/v1/workers/{w}/claim", headers=api.admin).status_code == 200


def test_revoked_token_gets_401_and_is_listed_revoked(two):
    api, _a, b, _wa, wb, _trial, _study = two
    before = runner.invoke(cli, ["token", "list", "--database-url", api.url])
    assert before.exit_code == 0, before.output
    line = next(row for row in before.output.splitlines() if row.endswith(" node-b"))
    assert line.split()[1] == "worker" and " - " in line
    revoked = runner.invoke(cli, ["token", "revoke", "node-b", "--database-url", api.url])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked token" in revoked.output and "node-b" in revoked.output
    # Worker actions check the token row in their own transaction: refused at once.
    r = api.client.post(f"/api/v1/workers/{wb}/claim", headers=b)
    assert r.status_code == 401 and err(r)["field"] == "Authorization"
    # Other routes once the coordinator's token cache (ttl 10 s) has let go of it.
    api.client.app.state.token_cache.clear()
    r = api.client.post("/api/v1/workers", json={"name": "again"}, headers=b)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    listed = runner.invoke(cli, ["token", "list", "--database-url", api.url])
    line = next(row for row in listed.output.splitlines() if row.endswith(" node-b"))
    assert " - " not in line  # the revoked column holds a time now


@pytest.mark.parametrize("value", [1e308, 1.5, -0.1, 1.0000001])
def test_scores_outside_the_accuracy_range_are_refused(two, value):
    api, a, _b, wa, _wb, trial, study = two
    tid = trial["id"]
    for path, body in [
        (f"/api/v1/trials/{tid}/complete", {"worker_id": wa, "value": value}),
        (f"/api/v1/trials/{tid}/heartbeat", {"worker_id": wa, "step": 1, "value": value}),
        (
            f"/api/v1/trials/{tid}/fail",
            {"worker_id": wa, "kind": "pruned", "reason": "x", "value": value},
        ),
    ]:
        r = api.client.post(path, json=body, headers=a)
        assert r.status_code == 422, (path, r.text)
        assert err(r)["field"] == "value" and "[0.0, 1.0]" in err(r)["message"]
    _a_trial_untouched(api, study, trial, wa)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_range_ends_are_accepted(two, value):
    api, a, _b, wa, _wb, trial, _study = two
    tid = trial["id"]
    hb = api.client.post(
        f"/api/v1/trials/{tid}/heartbeat",
        json={"worker_id": wa, "step": 0, "value": value},
        headers=a,
    )
    assert hb.status_code == 200, hb.text
    r = api.client.post(
        f"/api/v1/trials/{tid}/complete", json={"worker_id": wa, "value": value}, headers=a
    )
    assert r.status_code == 200 and r.json()["value"] == value


def test_every_evaluator_has_a_score_range():
    assert set(SCORE_RANGES) == set(EvaluatorName.__args__)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}],
    ids=["none", "unknown", "scheme"],
)
def test_unauthenticated_writes_get_401_before_the_body_is_read(api, headers):
    garbage = b"{not json" + b"\xff" * 100
    huge = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    for path in ["/api/v1/workers", "/api/v1/trials/1/complete", "/api/v1/studies"]:
        for body in (garbage, huge):
            r = api.client.post(
                path, content=body, headers={**headers, "Content-Type": "application/json"}
            )
            assert r.status_code == 401, (path, r.status_code, r.text[:200])
            assert err(r)["field"] == "Authorization"
    r = api.client.post("/api/v1/workers", content=garbage, headers=api.reader)
    assert r.status_code == 403
    # Authenticated, the same garbage is the usual 400 / 413.
    r = api.client.post(
        "/api/v1/workers",
        content=garbage,
        headers={**api.worker, "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 422)
    r = api.client.post(
        "/api/v1/workers", content=huge, headers={**api.worker, "Content-Type": "application/json"}
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/studies/{big}/history",
        "/api/v1/studies/{big}/summary",
        "/api/v1/studies/{big}/parallel",
        "/api/v1/studies/{big}/importance",
        "/api/v1/studies/{big}",
        "/api/v1/studies/1/trials/{big}",
        "/api/v1/studies/{big}/trials?after=x",
    ],
)
@pytest.mark.parametrize("big", [2**63, 2**70])
def test_ids_beyond_64_bits_are_json_4xx(api, path, big):
    r = api.client.get(path.format(big=big), headers=api.reader)
    assert r.status_code in (404, 422), r.text
    assert r.headers["content-type"].startswith("application/json")
    assert err(r)["field"]


@pytest.mark.parametrize("big", [2**63, 2**70])
def test_ids_beyond_64_bits_in_worker_routes(two, big):
    api, a, _b, _wa, _wb, _trial, _study = two
    for path, body in [
        (f"/api/v1/workers/{big}/claim", None),
        (f"/api/v1/workers/1/claim?study={big}", None),
        (f"/api/v1/trials/{big}/heartbeat", {"worker_id": 1}),
        ("/api/v1/trials/1/heartbeat", {"worker_id": big}),
        ("/api/v1/trials/1/release", {"worker_id": big}),
    ]:
        r = api.client.post(path, json=body, headers=a)
        assert r.status_code in (404, 422), (path, r.text)
        assert (
            "worker_id" in err(r)["field"]
            or "trial_id" in err(r)["field"]
            or "study" in (err(r)["field"])
        )
