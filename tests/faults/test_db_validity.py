"""What reaches the database is valid for both backends: PostgreSQL refuses NUL bytes in
text and NaN / infinities in JSON where SQLite stores them, so the API refuses both
(422 naming the field) before either backend sees them. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.helpers.coordinator import db_trials

NUL = "a\x00b"


def err(response) -> dict:
    return response.json()["error"]


def assert_refused(response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert err(response)["field"].startswith(field), err(response)


def claim(api, wid: int) -> dict:
    r = api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
    assert r.status_code == 200, r.text
    return r.json()["trial"]


def stored(api, sid: int, number: int) -> dict:
    r = api.client.get(f"/api/v1/studies/{sid}/trials/{number}", headers=api.reader)
    assert r.status_code == 200
    return r.json()


def study_names(api) -> list[str]:
    return [
        s["name"] for s in api.client.get("/api/v1/studies", headers=api.reader).json()["studies"]
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": NUL}, "name"),
        ({"dataset": "builtin:digits\x00"}, "dataset"),
        ({"space": "pinto-cox\x00"}, "space"),
        ({"space": {"name": "x\x00", "input_size": 32, "layers": []}}, "space"),
        ({"space": {"name": "x", "input_size": 32, "layers": [], "k\x00": 1}}, "space"),
        (
            {"evaluator": "plugin:a.b", "evaluator_options": {"plugin_options": {"k": "\x00"}}},
            "evaluator_options.plugin_options",
        ),
    ],
)
def test_nul_in_a_study_is_refused(api, body, field):
    other = api.new_study(name="other")
    full = {"name": "s", "dataset": "builtin:digits"} | body
    r = api.client.post("/api/v1/studies", json=full, headers=api.admin)
    assert_refused(r, field)
    assert study_names(api) == ["other"]
    assert api.client.get(f"/api/v1/studies/{other['id']}", headers=api.reader).status_code == 200


@pytest.mark.parametrize("field", ["name", "host", "device"])
def test_nul_in_a_worker_is_refused(api, field):
    body = {"name": "w", field: NUL}
    r = api.client.post("/api/v1/workers", json=body, headers=api.worker)
    assert_refused(r, field)
    assert api.client.get("/api/v1/workers", headers=api.reader).json() == []


def test_nan_in_a_space_document_is_refused(api):
    text = '{"name": "s", "dataset": "builtin:digits", "space": {"name": "x", "input_size": NaN}}'
    r = api.client.post(
        "/api/v1/studies",
        content=text,
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert_refused(r, "space")
    assert study_names(api) == []


@pytest.mark.parametrize(
    "params",
    [{"a\x00": 1}, {"a": NUL}, {"a": [1, {"b": NUL}]}],
)
def test_nul_in_enqueued_params_is_refused(api, params):
    sid = api.new_study()["id"]
    before = len(db_trials(api.url, sid))
    r = api.client.post(f"/api/v1/studies/{sid}/trials", json={"params": params}, headers=api.admin)
    assert_refused(r, "params")
    r = api.client.post(f"/api/v1/studies/{sid}/trials", json={"preset": NUL}, headers=api.admin)
    assert_refused(r, "preset")
    assert len(db_trials(api.url, sid)) == before


def test_nan_in_enqueued_params_is_refused(api):
    sid = api.new_study()["id"]
    before = len(db_trials(api.url, sid))
    r = api.client.post(
        f"/api/v1/studies/{sid}/trials",
        content='{"params": {"l1_n_filters": Infinity}}',
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert_refused(r, "params")
    assert len(db_trials(api.url, sid)) == before


def test_nul_in_a_fail_reason_is_refused_and_nothing_is_stored(api):
    sid = api.new_study()["id"]
    other = api.new_study(name="other")["id"]
    wid = api.new_worker()
    trial = claim(api, wid)
    body = {"worker_id": wid, "kind": "error", "reason": "boom\x00tail"}
    r = api.client.post(f"/api/v1/trials/{trial['id']}/fail", json=body, headers=api.worker)
    assert_refused(r, "reason")
    got = stored(api, trial["study_id"], trial["number"])
    assert got["state"] == "RUNNING" and got["reason"] is None
    # The worker can still report a clean reason; the other study is untouched.
    body["reason"] = "boom tail"
    r = api.client.post(f"/api/v1/trials/{trial['id']}/fail", json=body, headers=api.worker)
    assert r.status_code == 200 and r.json()["state"] == "FAILED"
    assert {sid, other} == {
        s["id"] for s in api.client.get("/api/v1/studies", headers=api.reader).json()["studies"]
    }
    untouched = other if trial["study_id"] == sid else sid
    assert {t.state for t in db_trials(api.url, untouched)} <= {"WAITING", "INFEASIBLE"}


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"loss\x00": 1.0}, "metrics"),
        ({"note": NUL}, "metrics"),
        ({"nested": {"deeper": [1, "x\x00"]}}, "metrics"),
    ],
)
def test_nul_in_metrics_is_refused(api, metrics, field):
    api.new_study()
    wid = api.new_worker()
    trial = claim(api, wid)
    body = {"worker_id": wid, "value": 0.5, "metrics": metrics}
    r = api.client.post(f"/api/v1/trials/{trial['id']}/complete", json=body, headers=api.worker)
    assert_refused(r, field)
    got = stored(api, trial["study_id"], trial["number"])
    assert got["state"] == "RUNNING" and got["metrics"] == {} and got["value"] is None


@pytest.mark.parametrize(
    "metrics_text",
    ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', '{"a": {"b": [1, NaN]}}'],
)
def test_non_finite_metrics_are_refused(api, metrics_text):
    api.new_study()
    wid = api.new_worker()
    trial = claim(api, wid)
    text = f'{{"worker_id": {wid}, "value": 0.5, "metrics": {metrics_text}}}'
    r = api.client.post(
        f"/api/v1/trials/{trial['id']}/complete",
        content=text,
        headers={**api.worker, "Content-Type": "application/json"},
    )
    assert_refused(r, "metrics")
    assert "finite" in err(r)["message"]
    got = stored(api, trial["study_id"], trial["number"])
    assert got["state"] == "RUNNING" and got["metrics"] == {}
    # A clean report of the same trial is then taken.
    body = {"worker_id": wid, "value": 0.5, "metrics": {"x": 1.0}}
    r = api.client.post(f"/api/v1/trials/{trial['id']}/complete", json=body, headers=api.worker)
    assert r.status_code == 200 and r.json()["state"] == "COMPLETE"


def test_nul_in_the_dataset_fingerprint_is_refused(api):
    api.new_study()
    wid = api.new_worker()
    trial = claim(api, wid)
    body = {"worker_id": wid, "value": 0.5, "dataset_fingerprint": "ab\x00"}
    r = api.client.post(f"/api/v1/trials/{trial['id']}/complete", json=body, headers=api.worker)
    assert_refused(r, "dataset_fingerprint")
