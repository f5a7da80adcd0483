"""Blends through the REST API (docs/design.md sections 5 and 6), on both backends: the
automatic blend of a study with ``blend_k`` as a worker sees it, its scores in ``best``
and the CSV export, ``POST /studies/{id}/blend`` and its refusals, each naming the field.
"""

from __future__ import annotations

import csv
import io

import pytest

from tests.helpers.coordinator import FG11_STUDY


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def claim(api, w: int) -> dict | None:
    r = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    assert r.status_code in (200, 204), r.text
    return r.json()["trial"] if r.status_code == 200 else None


def complete(api, w: int, trial: dict, value: float, **metrics: object):
    return api.client.post(
        f"/api/v1/trials/{trial['id']}/complete",
        json={"worker_id": w, "value": value, "metrics": metrics},
        headers=api.worker,
    )


def run_search(api, w: int, values: list[float]) -> dict[int, dict]:
    """Complete the search trials with ``values``; returns them by number."""
    done = {}
    for v in values:
        t = claim(api, w)
        assert t is not None and t["source"] == "suggested"
        assert complete(api, w, t, v).status_code == 200
        done[t["number"]] = t
    return done


def study(api, sid: int) -> dict:
    return api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()


def post_blend(api, sid: int, body: dict):
    return api.client.post(f"/api/v1/studies/{sid}/blend", json=body, headers=api.admin)


def test_the_automatic_blend_reaches_best_and_the_export(api):
    sid = api.new_study(
        **FG11_STUDY, max_trials=4, max_parallel=4, top_k=1, blend_k=3, blend_weights="validation"
    )["id"]
    assert study(api, sid)["blend_k"] == 3
    w = api.new_worker()
    search = run_search(api, w, [0.4, 0.7, 0.5, 0.6])
    final = claim(api, w)
    assert final["source"] == "final"
    assert complete(api, w, final, 0.65).status_code == 200
    assert study(api, sid)["state"] == "finishing"
    blend = claim(api, w)
    assert blend["source"] == "blend" and blend["params"]["weights"] == "validation"
    members = [search[n]["id"] for n in (2, 4, 3)]  # 0.7, 0.6, 0.5
    assert blend["params"]["members"] == members
    assert blend["arch"] == {"members": [search[n]["arch"] for n in (2, 4, 3)]}

    bad = complete(api, w, blend, 0.75)  # no test score
    assert bad.status_code == 422 and error_of(bad)["field"] == "metrics.test_value"
    assert study(api, sid)["state"] == "finishing"
    ok = complete(api, w, blend, 0.75, test_value=0.72, member_values=[0.7, 0.6, 0.5])
    assert ok.status_code == 200 and ok.json()["test_value"] == 0.72
    assert study(api, sid)["state"] == "finished"

    best = api.client.get(f"/api/v1/studies/{sid}/best", params={"k": 2}, headers=api.reader)
    assert best.status_code == 200
    body = best.json()
    assert [t["number"] for t in body["trials"]] == [2, 4]  # blends are not search results
    (shown,) = body["blends"]
    assert shown["number"] == blend["number"] and shown["member_numbers"] == [2, 4, 3]
    assert (shown["value"], shown["test_value"], shown["source"]) == (0.75, 0.72, "blend")

    export = api.client.get(f"/api/v1/studies/{sid}/export", headers=api.reader)
    rows = {int(r["number"]): r for r in csv.DictReader(io.StringIO(export.text))}
    row = rows[blend["number"]]
    assert row["source"] == "blend" and row["state"] == "COMPLETE"
    assert float(row["value"]) == 0.75 and float(row["test_value"]) == 0.72
    assert row["architecture"] == "blend of 3: #2 #4 #3 (validation weights)"
    assert rows[2]["architecture"] and rows[2]["source"] == "suggested"


def test_a_blend_by_hand_and_its_refusals(api):
    sid = api.new_study(**FG11_STUDY, max_trials=3, max_parallel=3, top_k=0)["id"]
    w = api.new_worker()
    run_search(api, w, [0.2])
    r = post_blend(api, sid, {"k": 1})
    assert r.status_code == 409 and error_of(r)["field"] == "state"
    assert "running" in error_of(r)["message"]
    run_search(api, w, [0.5, 0.3])
    assert study(api, sid)["state"] == "finished"

    for body, field, fragment in [
        ({"k": 0}, "k", "greater than or equal to 1"),
        ({"k": 4}, "k", "has 3"),
        ({"k": 2, "weights": "best"}, "weights", "uniform"),
        ({"k": 2, "extra": 1}, "extra", "not permitted"),
        ({}, "k", "required"),
    ]:
        r = post_blend(api, sid, body)
        assert r.status_code == 422, (body, r.text)
        assert error_of(r)["field"] == field and fragment in r.text, (body, r.text)
    assert study(api, sid)["state"] == "finished"

    r = post_blend(api, sid, {"k": 2, "weights": "validation"})
    assert r.status_code == 201, r.text
    queued = r.json()
    assert queued["source"] == "blend" and queued["state"] == "WAITING"
    assert queued["member_numbers"] == [2, 3]
    assert study(api, sid)["state"] == "finishing"
    r = post_blend(api, sid, {"k": 1})
    assert r.status_code == 409 and "finishing" in error_of(r)["message"]
    best = api.client.get(f"/api/v1/studies/{sid}/best", headers=api.reader).json()
    assert [b["state"] for b in best["blends"]] == ["WAITING"]

    t = claim(api, w)
    assert t["id"] == queued["id"]
    assert complete(api, w, t, 0.55, test_value=0.5).status_code == 200
    assert study(api, sid)["state"] == "finished"
    r = post_blend(api, sid, {"k": 2, "weights": "validation"})
    assert r.status_code == 409 and error_of(r)["field"] == "k"
    assert f"trial {queued['number']}" in error_of(r)["message"]


def test_blend_refusals_for_unknown_studies_roles_and_evaluators(api):
    r = post_blend(api, 999, {"k": 1})
    assert r.status_code == 404
    sid = api.new_study(evaluator="train", max_trials=2, max_parallel=2)["id"]
    r = post_blend(api, sid, {"k": 1})
    assert r.status_code == 422 and error_of(r)["field"] == "evaluator"
    r = api.client.post(f"/api/v1/studies/{sid}/blend", json={"k": 1}, headers=api.reader)
    assert r.status_code == 403
    r = api.client.post(
        "/api/v1/studies",
        json={**FG11_STUDY, "name": "t", "evaluator": "train", "blend_k": 2},
        headers=api.admin,
    )
    assert r.status_code == 422 and error_of(r)["field"] == "blend_k"


@pytest.mark.parametrize("weights", ["uniform", "validation"])
def test_a_stopped_study_blends_by_hand_and_stays_stopped(api, weights):
    sid = api.new_study(**FG11_STUDY, max_trials=6, max_parallel=2, top_k=0)["id"]
    w = api.new_worker()
    run_search(api, w, [0.3, 0.8])
    api.client.patch(f"/api/v1/studies/{sid}", json={"state": "stopped"}, headers=api.admin)
    r = post_blend(api, sid, {"k": 2, "weights": weights})
    assert r.status_code == 201 and r.json()["member_numbers"] == [2, 1]
    assert study(api, sid)["state"] == "stopped"
    t = claim(api, w)
    assert t["source"] == "blend"
    assert complete(api, w, t, 0.81, test_value=0.79).status_code == 200
    assert claim(api, w) is None and study(api, sid)["state"] == "stopped"
