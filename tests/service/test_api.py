"""The REST contract (docs/design.md section 6): answers, error bodies, auth, on both backends."""

from __future__ import annotations

import csv
import io

import pytest

from service.models import TrialState
from tests.helpers.coordinator import five_finished_peers


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- studies ---------------------------------------------------------------------------
def test_create_study_prefills_queue_and_reports_counts(api):
    study = api.new_study(max_trials=10, max_parallel=3)
    assert study["state"] == "running" and study["space_name"] == "pinto-cox"
    # Creation answers after at most 2 s of suggesting (less than 3 on a loaded host);
    # the queue goes on filling in the background to max_parallel, and no deeper.
    counts = api.counts_when(study["id"], lambda c: c.get("WAITING", 0) >= 3)
    assert counts.get("WAITING", 0) == 3
    assert counts.get("WAITING", 0) + counts.get("INFEASIBLE", 0) <= 10
    assert study["counts"].get("WAITING", 0) <= 3
    listed = api.client.get("/api/v1/studies", headers=api.reader).json()["studies"]
    assert [s["id"] for s in listed] == [study["id"]]


@pytest.mark.parametrize(
    ("patch", "field", "fragment"),
    [
        ({"space": "no-such-space"}, "space", "unknown space 'no-such-space'"),
        ({"dataset": "ftp:x"}, "dataset", "should match pattern '^(builtin|imagefolder"),
        ({"dataset": "builtin:imagenet"}, "dataset", "unknown builtin dataset"),
        ({"dataset": "nocolon"}, "dataset", "should match pattern"),
        ({"dataset": "imagefolder: "}, "dataset", "needs a path"),
        ({"algorithm": "grid"}, "algorithm", "continuous"),
        ({"max_trials": 0}, "max_trials", "greater than or equal to 1"),
        ({"evaluator": "magic"}, "evaluator", "Input should be"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
        ({"algorithm_options": {"gamma": 2}}, "algorithm_options.gamma", "less than 1"),
        ({"algorithm_options": {"linear_forgetting": 7}}, "algorithm_options", "25"),
        ({"space": "fg11", "algorithm": "grid"}, "algorithm", "enumerates at most"),
    ],
)
def test_bad_study_is_refused_with_field_and_rule(api, patch, field, fragment):
    body = {"name": "s", "dataset": "builtin:digits", "space": "bergstra13", **patch}
    r = api.client.post("/api/v1/studies", json=body, headers=api.admin)
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["field"] == field
    assert fragment in err["message"]
    assert api.client.get("/api/v1/studies", headers=api.admin).json()["studies"] == []


def test_bad_space_document_names_the_parameter_path(api):
    doc = api.client.get("/api/v1/spaces/fg11", headers=api.reader).json()["document"]
    doc["name"] = "custom"
    # Break the first layer's filter-count choice: an empty choice.
    broken = _break_first_choice(doc)
    r = api.client.post(
        "/api/v1/studies",
        json={"name": "s", "dataset": "builtin:digits", "space": broken},
        headers=api.admin,
    )
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["field"].startswith("space.")
    assert "empty" in err["message"] or "at least" in err["message"]


def _break_first_choice(node):
    """Return a copy of ``node`` with its first choice parameter's options emptied."""
    import copy

    doc = copy.deepcopy(node)
    stack = [doc]
    while stack:
        cur = stack.pop(0)
        if isinstance(cur, dict):
            if cur.get("type") == "choice" and isinstance(cur.get("options"), list):
                cur["options"] = []
                return doc
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    raise AssertionError("no choice parameter in the document")


def test_patch_pauses_resumes_stops(api):
    sid = api.new_study()["id"]
    w = api.new_worker()
    r = api.client.patch(f"/api/v1/studies/{sid}", json={"state": "paused"}, headers=api.admin)
    assert r.status_code == 200 and r.json()["state"] == "paused"
    assert api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).status_code == 204
    api.client.patch(f"/api/v1/studies/{sid}", json={"state": "running"}, headers=api.admin)
    claim = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    assert claim.status_code == 200
    tid = claim.json()["trial"]["id"]
    api.client.patch(f"/api/v1/studies/{sid}", json={"state": "stopped"}, headers=api.admin)
    hb = api.client.post(
        f"/api/v1/trials/{tid}/heartbeat", json={"worker_id": w}, headers=api.worker
    )
    assert hb.status_code == 200 and hb.json()["action"] == "stop"
    bad = api.client.patch(f"/api/v1/studies/{sid}", json={"state": "deleted"}, headers=api.admin)
    assert bad.status_code == 422 and error_of(bad)["field"] == "state"


def test_unknown_study_is_404(api):
    r = api.client.get("/api/v1/studies/424242", headers=api.reader)
    assert r.status_code == 404 and error_of(r)["field"] == "study_id"
    r = api.client.get("/api/v1/studies/424242/trials", headers=api.reader)
    assert r.status_code == 404


# -- the worker protocol ------------------------------------------------------------------
def test_claim_heartbeat_complete_roundtrip(api):
    sid = api.new_study(max_trials=3, max_parallel=3)["id"]
    w = api.new_worker()
    r = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    assert r.status_code == 200, r.text
    body = r.json()
    trial = body["trial"]
    assert body["study"]["id"] == sid and body["study"]["dataset"] == "builtin:digits"
    assert trial["state"] == "RUNNING" and trial["worker_id"] == w
    assert trial["arch"]["layers"] and trial["arch_summary"]
    assert body["lease"]["seconds"] > 0
    hb = api.client.post(
        f"/api/v1/trials/{trial['id']}/heartbeat",
        json={"worker_id": w, "step": 1, "value": 0.5},
        headers=api.worker,
    )
    assert hb.status_code == 200 and hb.json()["action"] == "continue"
    done = api.client.post(
        f"/api/v1/trials/{trial['id']}/complete",
        json={"worker_id": w, "value": 0.8, "metrics": {"n": 1}},
        headers=api.worker,
    )
    assert done.status_code == 200 and done.json()["state"] == "COMPLETE"
    again = api.client.post(
        f"/api/v1/trials/{trial['id']}/complete",
        json={"worker_id": w, "value": 0.8, "metrics": {"n": 1}},
        headers=api.worker,
    )
    assert again.status_code == 200 and again.json() == done.json()
    different = api.client.post(
        f"/api/v1/trials/{trial['id']}/complete",
        json={"worker_id": w, "value": 0.1},
        headers=api.worker,
    )
    assert different.status_code == 409 and error_of(different)["field"] == "value"
    fail_after = api.client.post(
        f"/api/v1/trials/{trial['id']}/fail",
        json={"worker_id": w, "kind": "error", "reason": "x"},
        headers=api.worker,
    )
    assert fail_after.status_code == 409
    got = api.client.get(f"/api/v1/studies/{sid}/trials/{trial['number']}", headers=api.reader)
    assert got.json()["intermediate"] == [[1, 0.5]] and got.json()["value"] == 0.8


def test_complete_after_fail_and_unknown_trial_and_wrong_worker(api):
    api.new_study()
    w1, w2 = api.new_worker("a"), api.new_worker("b")
    t = api.client.post(f"/api/v1/workers/{w1}/claim", headers=api.worker).json()["trial"]
    wrong = api.client.post(
        f"/api/v1/trials/{t['id']}/complete",
        json={"worker_id": w2, "value": 0.5},
        headers=api.worker,
    )
    assert wrong.status_code == 409 and error_of(wrong)["field"] == "worker_id"
    r = api.client.post(
        f"/api/v1/trials/{t['id']}/fail",
        json={"worker_id": w1, "kind": "infeasible", "reason": "OOM"},
        headers=api.worker,
    )
    assert r.status_code == 200 and r.json()["state"] == "INFEASIBLE"
    r = api.client.post(
        f"/api/v1/trials/{t['id']}/complete",
        json={"worker_id": w1, "value": 0.5},
        headers=api.worker,
    )
    assert r.status_code == 409
    r = api.client.post(
        "/api/v1/trials/987654/complete", json={"worker_id": w1, "value": 0.5}, headers=api.worker
    )
    assert r.status_code == 404 and error_of(r)["field"] == "trial_id"
    r = api.client.post("/api/v1/workers/987654/claim", headers=api.worker)
    assert r.status_code == 404 and error_of(r)["field"] == "worker_id"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"worker_id": 1}', "value"),
        ('{"worker_id": 1, "value": "high"}', "value"),
        ('{"worker_id": 1, "value": 1e400}', "value"),
        ('{"worker_id": 1, "value": NaN}', "value"),
        ('{"worker_id": 1, "value": -Infinity}', "value"),
        ('{"value": 0.5}', "worker_id"),
        ('{"worker_id": 0, "value": 0.5}', "worker_id"),
        ('{"worker_id": 1, "value": 0.5, "extra": true}', "extra"),
        ('{"worker_id": 1, "value": 0.5, "metrics": []}', "metrics"),
    ],
)
def test_malformed_complete_bodies_are_422(api, raw, field):
    r = api.client.post(
        "/api/v1/trials/1/complete",
        content=raw.encode(),
        headers={**api.worker, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert error_of(r)["field"] == field


def test_not_json_is_422(api):
    r = api.client.post(
        "/api/v1/studies",
        content=b"name=x",
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert error_of(r)["code"] == "invalid"


def test_oversized_body_is_413(api_factory):
    api = api_factory(max_body_bytes=4096)
    big = {"name": "x" * 10_000, "dataset": "builtin:digits"}
    r = api.client.post("/api/v1/studies", json=big, headers=api.admin)
    assert r.status_code == 413
    assert error_of(r) == {
        "code": "too_large",
        "field": "body",
        "message": "request body exceeds 4096 bytes",
    }


def test_roles(api):
    body = {"name": "s", "dataset": "builtin:digits"}
    assert api.client.post("/api/v1/studies", json=body).status_code == 401
    r = api.client.post("/api/v1/studies", json=body, headers=api.worker)
    assert r.status_code == 403 and "admin" in error_of(r)["message"]
    r = api.client.post(
        "/api/v1/studies", json=body, headers={"Authorization": "Bearer not-a-token"}
    )
    assert r.status_code == 401
    r = api.client.post("/api/v1/studies", json=body, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert api.client.get("/api/v1/studies").status_code == 401
    assert api.client.get("/api/v1/studies", headers=api.reader).status_code == 200
    r = api.client.post("/api/v1/workers", json={"name": "w"}, headers=api.reader)
    assert r.status_code == 403
    assert (
        api.client.post("/api/v1/workers", json={"name": "w"}, headers=api.admin).status_code == 201
    )


def test_open_reads_setting(api_factory):
    api = api_factory(open_reads=True)
    assert api.client.get("/api/v1/studies").status_code == 200
    assert api.client.post("/api/v1/studies", json={}).status_code == 401


# -- reading results -----------------------------------------------------------------------
def _finish(api, sid: int, values: list[float]) -> None:
    w = api.new_worker()
    for v in values:
        r = api.client.post(f"/api/v1/workers/{w}/claim", params={"study": sid}, headers=api.worker)
        assert r.status_code == 200, r.text
        tid = r.json()["trial"]["id"]
        r = api.client.post(
            f"/api/v1/trials/{tid}/complete", json={"worker_id": w, "value": v}, headers=api.worker
        )
        assert r.status_code == 200


def test_pagination_best_and_export(api):
    sid = api.new_study(
        space="fg11", max_trials=12, max_parallel=12, evaluator_options={"max_features": 10_000_000}
    )["id"]
    n_waiting = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()["counts"]
    assert n_waiting.get("WAITING") == 12
    values = [0.1 * i for i in range(5)]
    _finish(api, sid, values)
    seen, after = [], None
    while True:
        params = {"limit": 5, **({"after": after} if after else {})}
        page = api.client.get(
            f"/api/v1/studies/{sid}/trials", params=params, headers=api.reader
        ).json()
        seen += [t["number"] for t in page["trials"]]
        after = page["next"]
        if after is None:
            break
    assert seen == list(range(1, 13))
    by_value = api.client.get(
        f"/api/v1/studies/{sid}/trials", params={"order": "-value", "limit": 3}, headers=api.reader
    ).json()
    assert [t["value"] for t in by_value["trials"]] == pytest.approx([0.4, 0.3, 0.2])
    rest = api.client.get(
        f"/api/v1/studies/{sid}/trials",
        params={"order": "-value", "limit": 100, "after": by_value["next"]},
        headers=api.reader,
    ).json()
    assert [t["value"] for t in rest["trials"][:2]] == pytest.approx([0.1, 0.0])
    assert all(t["value"] is None for t in rest["trials"][2:]) and len(rest["trials"]) == 9
    waiting = api.client.get(
        f"/api/v1/studies/{sid}/trials", params={"state": "WAITING"}, headers=api.reader
    ).json()["trials"]
    assert len(waiting) == 7 and {t["state"] for t in waiting} == {"WAITING"}
    best = api.client.get(
        f"/api/v1/studies/{sid}/best", params={"k": 2}, headers=api.reader
    ).json()["trials"]
    assert [t["value"] for t in best] == pytest.approx([0.4, 0.3])
    bad = api.client.get(
        f"/api/v1/studies/{sid}/trials", params={"after": "%%%"}, headers=api.reader
    )
    assert bad.status_code == 422 and error_of(bad)["field"] == "after"
    export = api.client.get(f"/api/v1/studies/{sid}/export", headers=api.reader)
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert len(rows) == 12
    assert sorted(float(r["value"]) for r in rows if r["value"]) == pytest.approx(values)
    assert all(r["architecture"] for r in rows)
    assert any(k.startswith("param:") for k in rows[0])


def test_enqueue_preset_runs_first(api):
    sid = api.new_study(
        space="fg11", max_trials=10, max_parallel=2, evaluator_options={"max_features": 10_000_000}
    )["id"]
    r = api.client.post(
        f"/api/v1/studies/{sid}/trials", json={"preset": "fg11-ht-l3-1st"}, headers=api.admin
    )
    assert r.status_code == 201, r.text
    enq = r.json()
    assert enq["source"] == "user" and enq["state"] == "WAITING"
    assert enq["arch"]["layers"][2]["fbcorr"]["n_filters"] == 256
    dup = api.client.post(
        f"/api/v1/studies/{sid}/trials", json={"preset": "fg11-ht-l3-1st"}, headers=api.admin
    )
    assert dup.status_code == 422 and "already" in error_of(dup)["message"]
    w = api.new_worker()
    claimed = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()
    assert claimed["trial"]["id"] == enq["id"]
    bad = api.client.post(
        f"/api/v1/studies/{sid}/trials", json={"preset": "nope"}, headers=api.admin
    )
    assert bad.status_code == 422 and error_of(bad)["field"] == "preset"
    both = api.client.post(
        f"/api/v1/studies/{sid}/trials",
        json={"preset": "fg11-ht-l3-1st", "params": {}},
        headers=api.admin,
    )
    assert both.status_code == 422
    junk = api.client.post(
        f"/api/v1/studies/{sid}/trials", json={"params": {"x": 1}}, headers=api.admin
    )
    assert junk.status_code == 422 and error_of(junk)["field"] == "params"


def test_enqueue_raw_params_from_a_sample(api):
    from search_space import get_space

    sid = api.new_study(
        space="fg11", max_trials=5, max_parallel=1, evaluator_options={"max_features": 10_000_000}
    )["id"]
    raw = get_space("fg11").sample(12345)
    r = api.client.post(f"/api/v1/studies/{sid}/trials", json={"params": raw}, headers=api.admin)
    assert r.status_code == 201, r.text
    assert r.json()["params"] == raw


def test_spaces_routes(api):
    spaces = api.client.get("/api/v1/spaces", headers=api.reader).json()["spaces"]
    names = {s["name"] for s in spaces}
    assert {"fg11", "pinto-cox", "bergstra13"} <= names
    assert [s["name"] for s in spaces if s["default"]] == ["pinto-cox"]
    one = api.client.get("/api/v1/spaces/pinto-cox", headers=api.reader).json()
    assert one["labels"] and one["document"]
    assert api.client.get("/api/v1/spaces/nope", headers=api.reader).status_code == 404


def test_metrics_counts_trials_and_claims(api):
    api.new_study(max_trials=4, max_parallel=4)
    w = api.new_worker()
    api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    text = api.client.get("/metrics", headers=api.reader).text
    assert 'archsearch_trials{state="RUNNING"} 1.0' in text
    assert 'archsearch_claims_total{result="trial"} 1.0' in text
    assert "archsearch_claim_latency_seconds_bucket" in text


def test_openapi_documents_every_route_with_error_models(api):
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in [
        "/api/v1/studies",
        "/api/v1/studies/{study_id}/trials",
        "/api/v1/workers/{worker_id}/claim",
        "/api/v1/trials/{trial_id}/complete",
        "/api/v1/studies/{study_id}/export",
        "/healthz",
        "/metrics",
    ]:
        assert path in paths, path
    complete = paths["/api/v1/trials/{trial_id}/complete"]["post"]["responses"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(complete)


def test_lease_expiry_through_the_api(api_factory):
    api = api_factory(lease_seconds=1.0)
    sid = api.new_study(max_trials=1, max_parallel=1)["id"]
    a, b = api.new_worker("a"), api.new_worker("b")
    t = api.client.post(f"/api/v1/workers/{a}/claim", headers=api.worker).json()["trial"]
    assert api.client.post(f"/api/v1/workers/{b}/claim", headers=api.worker).status_code == 204
    import time

    time.sleep(1.6)  # a never heart-beats; its lease runs out
    got = api.client.post(f"/api/v1/workers/{b}/claim", headers=api.worker)
    assert got.status_code == 200 and got.json()["trial"]["id"] == t["id"]
    assert got.json()["trial"]["attempt"] == 2
    late = api.client.post(
        f"/api/v1/trials/{t['id']}/complete",
        json={"worker_id": a, "value": 0.9},
        headers=api.worker,
    )
    assert late.status_code == 409
    ok = api.client.post(
        f"/api/v1/trials/{t['id']}/complete",
        json={"worker_id": b, "value": 0.7},
        headers=api.worker,
    )
    assert ok.status_code == 200
    shown = api.client.get(f"/api/v1/studies/{sid}/trials/{t['number']}", headers=api.reader).json()
    assert shown["attempt"] == 2 and shown["value"] == 0.7 and shown["worker_id"] == b
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    assert study["state"] == "finished"
    assert study["counts"] == {TrialState.COMPLETE.value: 1}


def test_final_evaluation_of_top_k_after_the_search(api):
    """max_trials search trials end -> the top-k are re-scored on the test split by
    ``final`` trials, which run first, land in test_value, and then the study finishes."""
    sid = api.new_study(
        space="fg11",
        max_trials=4,
        max_parallel=4,
        top_k=2,
        evaluator_options={"max_features": 10_000_000},
    )["id"]
    w = api.new_worker()
    claimed_sources = []
    while (
        r := api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    ).status_code == 200:
        t = r.json()["trial"]
        claimed_sources.append(t["source"])
        value = 0.5 if t["source"] == "final" else 0.1 * t["number"]
        api.client.post(
            f"/api/v1/trials/{t['id']}/complete",
            json={"worker_id": w, "value": value},
            headers=api.worker,
        )
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    n_search = sum(1 for s in claimed_sources if s != "final")
    assert study["state"] == "finished"
    assert claimed_sources.count("final") == min(2, n_search)
    assert claimed_sources[-claimed_sources.count("final") :] == ["final"] * min(2, n_search)
    best = api.client.get(
        f"/api/v1/studies/{sid}/best", params={"k": 5}, headers=api.reader
    ).json()["trials"]
    assert all(t["source"] != "final" for t in best)
    assert [t["test_value"] for t in best] == [0.5] * min(2, n_search) + [None] * (
        len(best) - min(2, n_search)
    )
    assert study["best_value"] == max(t["value"] for t in best)


def test_stopping_a_study_queues_final_evaluations_that_can_still_run(api):
    sid = api.new_study(
        space="fg11",
        max_trials=10,
        max_parallel=2,
        top_k=1,
        evaluator_options={"max_features": 10_000_000},
    )["id"]
    w = api.new_worker()
    t = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()["trial"]
    api.client.post(
        f"/api/v1/trials/{t['id']}/complete",
        json={"worker_id": w, "value": 0.9},
        headers=api.worker,
    )
    r = api.client.patch(f"/api/v1/studies/{sid}", json={"state": "stopped"}, headers=api.admin)
    assert r.status_code == 200
    final = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()["trial"]
    assert final["source"] == "final" and final["final_of_id"] == t["id"]
    api.client.post(
        f"/api/v1/trials/{final['id']}/complete",
        json={"worker_id": w, "value": 0.8},
        headers=api.worker,
    )
    # Search trials of a stopped study are not handed out.
    assert api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).status_code == 204
    shown = api.client.get(f"/api/v1/studies/{sid}/trials/{t['number']}", headers=api.reader).json()
    assert shown["test_value"] == 0.8 and shown["value"] == 0.9


def test_suggestions_from_a_process_pool(api_factory):
    """The default: TPE runs in a separate process; the queue is filled all the same."""
    api = api_factory(suggest_processes=1)
    study = api.new_study(algorithm="tpe", max_trials=6, max_parallel=3)
    # The pool's process may still be starting when creation answers (after at most 2 s).
    counts = api.counts_when(study["id"], lambda c: c.get("WAITING", 0) >= 3)
    assert counts.get("WAITING", 0) == 3


def _claimed(api, **study):
    sid = api.new_study(**study)["id"]
    w = api.new_worker()
    r = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    assert r.status_code == 200, r.text
    return sid, w, r.json()


def test_claim_brief_carries_resolved_evaluator_options(api):
    """The worker gets every option with its default, and the color decided for it."""
    _, _, body = _claimed(api, evaluator_options={"epochs": 3})
    options = body["study"]["evaluator_options"]
    assert options["epochs"] == 3 and options["color"] == "gray"  # builtin:digits
    assert options["trial_timeout_seconds"] == 3600 and options["max_features"] == 100_000


def test_dataset_fingerprint_is_its_own_report_field(api):
    sid, w, body = _claimed(api, max_trials=2, max_parallel=2)
    tid = body["trial"]["id"]
    r = api.client.post(
        f"/api/v1/trials/{tid}/complete",
        json={"worker_id": w, "value": 0.5, "dataset_fingerprint": "ab" * 32},
        headers=api.worker,
    )
    assert r.status_code == 200 and "dataset_fingerprint" not in r.json()["metrics"]
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    assert study["dataset_fingerprint"] == "ab" * 32
    claim = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()
    assert claim["study"]["dataset_fingerprint"] == "ab" * 32


def test_a_fingerprint_in_metrics_from_an_older_worker_still_counts(api):
    sid, w, body = _claimed(api)
    r = api.client.post(
        f"/api/v1/trials/{body['trial']['id']}/complete",
        json={"worker_id": w, "value": 0.5, "metrics": {"dataset_fingerprint": "cd" * 32}},
        headers=api.worker,
    )
    assert r.status_code == 200
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    assert study["dataset_fingerprint"] == "cd" * 32


@pytest.mark.parametrize("fingerprint", ["", "XYZ", "a" * 65, 12])
def test_a_malformed_fingerprint_is_422(api, fingerprint):
    _, w, body = _claimed(api)
    r = api.client.post(
        f"/api/v1/trials/{body['trial']['id']}/fail",
        json={"worker_id": w, "kind": "error", "reason": "x", "dataset_fingerprint": fingerprint},
        headers=api.worker,
    )
    assert r.status_code == 422 and error_of(r)["field"] == "dataset_fingerprint"


def test_study_progress_counts_search_and_finals_apart(api):
    sid, w, body = _claimed(api, max_trials=1, max_parallel=1, top_k=1)
    api.client.post(
        f"/api/v1/trials/{body['trial']['id']}/complete",
        json={"worker_id": w, "value": 0.5},
        headers=api.worker,
    )
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    assert study["state"] == "finishing"
    assert (study["search_done"], study["finals"], study["finals_done"]) == (1, 1, 0)
    final = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()["trial"]
    api.client.post(
        f"/api/v1/trials/{final['id']}/complete",
        json={"worker_id": w, "value": 0.6},
        headers=api.worker,
    )
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    assert study["state"] == "finished" and study["finals_done"] == 1
    stop = api.client.patch(f"/api/v1/studies/{sid}", json={"state": "running"}, headers=api.admin)
    assert stop.status_code == 409 and error_of(stop)["field"] == "state"


def test_a_worker_ignores_option_keys_a_newer_coordinator_adds(api):
    """Coordinators can be upgraded before workers: the brief's options tolerate new keys."""
    from protocol import ClaimOut

    _, _, body = _claimed(api)
    body["study"]["evaluator_options"]["an_option_from_the_future"] = 1
    brief = ClaimOut.model_validate(body).study
    assert brief.evaluator_options.max_features == 100_000


def test_median_stopping_prunes_a_train_trial_below_its_peers(api):
    """A heartbeat with an intermediate value below the median of >= 5 finished peers at
    the same step answers ``prune`` (train protocol); at or above it, ``continue``."""
    api.new_study(evaluator="train", max_trials=8, max_parallel=8)
    w = api.new_worker()
    tid = five_finished_peers(api, w, step=1)
    assert api.heartbeat(w, tid, 1, 0.75) == "continue"  # above the median (0.7)
    assert api.heartbeat(w, tid, 1, 0.65) == "prune"
