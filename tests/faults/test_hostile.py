"""Hostile input: huge or deeply nested space documents, NaN / infinite scores, unicode and
SQL-looking names, wrong content types. Each gets a clear 4xx naming the field; what is
accepted is stored verbatim. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

NAMES = [
    "Robert'); DROP TABLE trials;--",
    "名前 — étude ✓ 🧠",
    "\u202eevil\u202c",
    "' OR '1'='1",
    "<script>alert(1)</script>",
    "a" * 200,
]


def err(response) -> dict:
    return response.json()["error"]


@pytest.mark.parametrize("name", NAMES)
def test_odd_names_are_stored_verbatim(api, name):
    study = api.new_study(name=name)
    got = api.client.get(f"/api/v1/studies/{study['id']}", headers=api.reader).json()
    assert got["name"] == name
    listed = api.client.get("/api/v1/studies", headers=api.reader).json()["studies"]
    assert [s["name"] for s in listed] == [name]
    w = api.client.post("/api/v1/workers", json={"name": name}, headers=api.worker)
    assert w.status_code == 201 and w.json()["name"] == name


def test_name_too_long_is_refused(api):
    r = api.client.post(
        "/api/v1/studies", json={"name": "a" * 201, "dataset": "builtin:digits"}, headers=api.admin
    )
    assert r.status_code == 422 and err(r)["field"] == "name"


def test_deeply_nested_space_document_is_refused(api):
    nested: dict = {"type": "choice", "options": [1]}
    for _ in range(200):
        nested = {"type": "choice", "options": [nested]}
    doc = {"name": "deep", "input_size": 32, "layers": [{"n_filters": nested}]}
    r = api.client.post(
        "/api/v1/studies",
        json={"name": "s", "dataset": "builtin:digits", "space": doc},
        headers=api.admin,
    )
    assert r.status_code == 422
    assert err(r)["field"].startswith("space")
    assert "deep" in err(r)["message"] or "nest" in err(r)["message"]


def test_huge_space_document_is_refused(api_factory):
    api = api_factory(max_body_bytes=8 * 1024 * 1024)
    doc = {
        "name": "huge",
        "input_size": 32,
        "layers": [{"n_filters": {"type": "choice", "options": list(range(1, 100_000))}}],
    }
    r = api.client.post(
        "/api/v1/studies",
        json={"name": "s", "dataset": "builtin:digits", "space": doc},
        headers=api.admin,
    )
    assert r.status_code == 422
    assert err(r)["field"].startswith("space")


def test_body_over_the_limit_is_413_before_parsing(api):
    body = b'{"name": "' + b"x" * 2_000_000 + b'", "dataset": "builtin:digits"}'
    r = api.client.post(
        "/api/v1/studies", content=body, headers={**api.admin, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and err(r)["field"] == "body"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_scores_are_refused_and_nothing_changes(api, literal):
    api.new_study(max_trials=1, max_parallel=1)
    wid = api.new_worker()
    claim = api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
    if claim.status_code == 204:
        pytest.skip("the one sampled configuration was infeasible")
    tid = claim.json()["trial"]["id"]
    for route in ("complete", "heartbeat"):
        r = api.client.post(
            f"/api/v1/trials/{tid}/{route}",
            content=f'{{"worker_id": {wid}, "value": {literal}}}'.encode(),
            headers={**api.worker, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, (route, r.text)
        assert err(r)["field"] == "value"
    number = claim.json()["trial"]["number"]
    sid = claim.json()["study"]["id"]
    t = api.client.get(f"/api/v1/studies/{sid}/trials/{number}", headers=api.reader).json()
    assert t["state"] == "RUNNING" and t["value"] is None and t["intermediate"] == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", json.dumps({"name": "s", "dataset": "builtin:digits"})),
        ("application/x-www-form-urlencoded", "name=s&dataset=builtin:digits"),
        ("application/json", "[1, 2, 3]"),
        ("application/json", "{"),
        ("application/json", ""),
    ],
)
def test_wrong_content_types_and_shapes_are_4xx(api, content_type, body):
    r = api.client.post(
        "/api/v1/studies",
        content=body.encode(),
        headers={**api.admin, "Content-Type": content_type},
    )
    assert 400 <= r.status_code < 500, r.text
    assert "error" in r.json() and r.json()["error"]["message"]
    assert api.client.get("/api/v1/studies", headers=api.admin).json()["studies"] == []


def test_sql_looking_metrics_and_reasons_are_stored_verbatim(api):
    api.new_study(max_trials=2, max_parallel=2)
    wid = api.new_worker()
    claim = api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
    if claim.status_code == 204:
        pytest.skip("the sampled configurations were infeasible")
    tid = claim.json()["trial"]["id"]
    reason = "'; DELETE FROM studies; -- \x01 ünïcødé"
    r = api.client.post(
        f"/api/v1/trials/{tid}/fail",
        json={"worker_id": wid, "kind": "error", "reason": reason},
        headers=api.worker,
    )
    assert r.status_code == 200 and r.json()["reason"] == reason
    assert len(api.client.get("/api/v1/studies", headers=api.reader).json()["studies"]) == 1
