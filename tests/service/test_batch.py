"""Batches (docs/design.md sections 5 and 6): claim, report, heart-beat and release many
trials of one worker in one transaction; on a SQLite file and on PostgreSQL.

The store's contract first (``TrialStore.claim_many`` / ``report_many`` / ...), then the
routes: answers, per-item statuses, and 4xx naming the field for bad input."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select, update

from protocol.wire import MAX_BATCH
from service.errors import Conflict, InvalidInput, NotFound
from service.models import Study, StudyState, Trial, TrialState
from service.trial_store import NewTrial, Report
from tests.helpers.store import add_study, add_worker, expire_leases


def _rows(store, study_id: int) -> dict[int, Trial]:
    with store.sessions() as s:
        return {t.id: t for t in s.scalars(select(Trial).where(Trial.study_id == study_id))}


# -- the store ------------------------------------------------------------------------------
def test_claim_many_takes_up_to_n_in_queue_order_each_with_a_lease(store):
    sid = add_study(store, 5)
    with store.transaction() as s:  # a user's trial is queued ahead of suggested ones
        store.add_trials(
            s, sid, [NewTrial(params={"u": 1}, config_hash="user", source="user", priority=0)]
        )
    w = add_worker(store)
    got = store.claim_many(w, 3)
    assert [t.number for t in got.trials] == [6, 1, 2]
    assert all(t.state == TrialState.RUNNING and t.worker_id == w for t in got.trials)
    assert all(t.lease_expires_at is not None and t.attempt == 1 for t in got.trials)
    assert set(got.studies) == {sid} and got.studies[sid].evaluator == "screen"
    other = store.claim_many(add_worker(store, "w2"), 10)
    assert [t.number for t in other.trials] == [3, 4, 5]  # fewer than asked: all there is
    assert store.claim_many(add_worker(store, "w3"), 4).trials == []
    rows = _rows(store, sid)
    assert Counter(r.state for r in rows.values()) == {TrialState.RUNNING: 6}


def test_a_retried_claim_gets_back_the_held_trials_first_with_renewed_leases(store):
    sid = add_study(store, 8)
    # Workers registered first, so that worker ids and trial ids differ.
    for i in range(3):
        add_worker(store, f"other{i}")
    w = add_worker(store)
    first = store.claim_many(w, 3)
    time.sleep(0.05)
    again = store.claim_many(w, 5)  # the answer to `first` was lost: the worker asks again
    assert [t.id for t in again.trials[:3]] == [t.id for t in first.trials]
    assert all(
        a.lease_expires_at > f.lease_expires_at
        for a, f in zip(again.trials, first.trials, strict=False)
    )
    assert [t.number for t in again.trials[3:]] == [4, 5]
    # Asking for fewer than it holds: the first ones it holds, nothing new.
    fewer = store.claim_many(w, 2)
    assert [t.id for t in fewer.trials] == [t.id for t in again.trials[:2]]
    assert Counter(r.state for r in _rows(store, sid).values()) == {
        TrialState.RUNNING: 5,
        TrialState.WAITING: 3,
    }


def test_claim_many_keeps_to_the_study_filter_and_exclusions(store):
    a, b, paused = add_study(store, 3), add_study(store, 3), add_study(store, 3)
    with store.transaction() as s:
        s.execute(update(Study).where(Study.id == paused).values(state=StudyState.PAUSED))
    w = add_worker(store)
    assert {t.study_id for t in store.claim_many(w, 10, study_ids=[b]).trials} == {b}
    got = store.claim_many(add_worker(store, "w2"), 10, exclude=[a])
    assert got.trials == []  # b's are taken, a is excluded, the paused study is not claimed
    assert {t.study_id for t in store.claim_many(add_worker(store, "w3"), 10).trials} == {a}


def test_claim_many_refuses_a_size_below_one_and_an_unknown_worker(store):
    add_study(store, 1)
    with pytest.raises(InvalidInput) as err:
        store.claim_many(add_worker(store), 0)
    assert err.value.field == "max_trials"
    with pytest.raises(NotFound):
        store.claim_many(987_654, 2)


def test_report_many_with_a_conflict_stores_the_others(store):
    sid = add_study(store, 4)
    w1, w2 = add_worker(store), add_worker(store, "w2")
    held = store.claim_many(w1, 3).trials
    # The lease of the second one runs out and another worker takes it.
    with store.transaction() as s:
        s.execute(
            update(Trial).where(Trial.id == held[1].id).values(lease_expires_at=Trial.created_at)
        )
    taken = store.claim_many(w2, 1).trials
    assert [t.id for t in taken] == [held[1].id] and taken[0].attempt == 2
    outcomes = store.report_many(
        w1,
        [
            Report(held[0].id, "complete", 0.5, {"acc": 0.5}),
            Report(held[1].id, "complete", 0.6, {}),
            Report(held[2].id, "infeasible", None, {}, "too big"),
        ],
    )
    assert [o.trial_id for o in outcomes] == [t.id for t in held]
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, Conflict) and outcomes[1].error.field == "worker_id"
    assert outcomes[0].first and outcomes[0].trial.state == TrialState.COMPLETE
    assert outcomes[2].trial.state == TrialState.INFEASIBLE
    rows = _rows(store, sid)
    assert rows[held[0].id].state == TrialState.COMPLETE and rows[held[0].id].value == 0.5
    assert rows[held[0].id].metrics == {"acc": 0.5} and rows[held[0].id].finished_at
    assert rows[held[0].id].lease_expires_at is None
    assert rows[held[1].id].state == TrialState.RUNNING and rows[held[1].id].worker_id == w2
    assert rows[held[2].id].state == TrialState.INFEASIBLE and rows[held[2].id].reason == "too big"


def test_report_many_judges_each_item_like_the_single_routes(store):
    add_study(store, 3)
    w = add_worker(store)
    a, b, c = store.claim_many(w, 3).trials
    store.complete(a.id, w, 0.7, {})
    outcomes = store.report_many(
        w,
        [
            Report(a.id, "complete", 0.7, {}),  # a repeat of the stored result
            Report(a.id, "complete", 0.1, {}),  # a different second result
            Report(a.id, "error", None, {}, "x"),  # a fail after complete
            Report(b.id, "complete", 1.5, {}),  # outside the accuracy range
            Report(987_654, "complete", 0.5, {}),  # no such trial
            Report(c.id, "pruned", 0.2, {}, "pruned at step 1"),
            Report(c.id, "pruned", 0.2, {}, "pruned at step 1"),  # the same twice in a batch
        ],
    )
    kinds = [
        type(o.error).__name__ if o.error else ("first" if o.first else "repeat") for o in outcomes
    ]
    assert kinds == [
        "repeat",
        "Conflict",
        "Conflict",
        "InvalidInput",
        "NotFound",
        "first",
        "repeat",
    ]
    assert [o.error.field for o in outcomes if o.error] == ["value", "kind", "value", "trial_id"]
    assert outcomes[0].trial.value == 0.7 and outcomes[6].trial.state == TrialState.PRUNED
    assert store.heartbeat_many(w, [b.id])[0][0].trial_id == b.id  # b untouched, still held


def test_a_batch_that_ends_the_search_ends_the_study_in_its_transaction(store):
    sid = add_study(store, 4, top_k=2)
    w = add_worker(store)
    trials = store.claim_many(w, 4).trials
    store.report_many(w, [Report(t.id, "complete", t.number / 10, {}) for t in trials])
    with store.sessions() as s:
        assert s.get(Study, sid).state == StudyState.FINISHING
    finals = store.claim_many(w, 4).trials
    assert sorted(t.final_of_id for t in finals) == sorted(t.id for t in trials[2:])
    outcomes = store.report_many(
        w, [Report(t.id, "complete", 0.9, {}, None, "ab" * 32) for t in finals]
    )
    assert all(o.first for o in outcomes)
    with store.sessions() as s:
        study = s.get(Study, sid)
        assert study.state == StudyState.FINISHED and study.dataset_fingerprint == "ab" * 32
        test_values = dict(s.execute(select(Trial.number, Trial.test_value)).all())
    # The finals' scores are the test scores of trials 3 and 4 (the top 2).
    assert test_values == {1: None, 2: None, 3: 0.9, 4: 0.9, 5: None, 6: None}


def test_heartbeat_many_extends_held_leases_and_lists_the_lost(store):
    sid = add_study(store, 3)
    w1, w2 = add_worker(store), add_worker(store, "w2")
    mine = store.claim_many(w1, 2).trials
    theirs = store.claim_many(w2, 1).trials
    time.sleep(0.05)
    held, lost = store.heartbeat_many(w1, [mine[1].id, mine[0].id, theirs[0].id, 987_654])
    assert [b.trial_id for b in held] == [mine[0].id, mine[1].id]
    assert all(b.study_state == StudyState.RUNNING for b in held)
    assert all(b.lease_expires_at > t.lease_expires_at for b, t in zip(held, mine, strict=True))
    assert lost == [theirs[0].id, 987_654]
    with store.transaction() as s:
        s.execute(update(Study).where(Study.id == sid).values(state=StudyState.STOPPED))
    held, _ = store.heartbeat_many(w1, [mine[0].id])
    assert held[0].study_state == StudyState.STOPPED and not held[0].is_final


def test_release_many_unstarted_keeps_the_attempt_counted_uses_one(store):
    sid = add_study(store, 4)
    w = add_worker(store)
    a, b, c, d = store.claim_many(w, 4).trials
    released, lost = store.release_many(w, [a.id, b.id, 987_654], unstarted=True)
    assert [t.id for t in released] == [a.id, b.id] and lost == [987_654]
    assert all(t.state == TrialState.WAITING and t.attempt == 1 for t in released)
    assert all(t.worker_id is None and t.lease_expires_at is None for t in released)
    released, _ = store.release_many(w, [c.id])
    assert released[0].state == TrialState.WAITING and released[0].attempt == 2
    # The store's max_attempts is 2: a counted release on the last attempt ends it.
    again = store.claim_many(w, 4).trials
    assert {t.id for t in again} == {a.id, b.id, c.id, d.id}
    released, _ = store.release_many(w, [c.id])
    assert released[0].state == TrialState.FAILED
    assert released[0].reason == "released by its worker on all 2 attempts"
    assert _rows(store, sid)[c.id].finished_at is not None


def test_expired_batch_leases_are_reaped_and_a_late_batch_report_refused(store):
    add_study(store, 3)
    w1, w2 = add_worker(store), add_worker(store, "w2")
    held = store.claim_many(w1, 3).trials
    expire_leases(store)
    assert store.reap_expired() == 3
    again = store.claim_many(w2, 3).trials
    assert {t.id for t in again} == {t.id for t in held} and all(t.attempt == 2 for t in again)
    late = store.report_many(w1, [Report(t.id, "complete", 0.5, {}) for t in held])
    assert all(isinstance(o.error, Conflict) for o in late)


def test_threads_claiming_batches_take_each_trial_exactly_once(store):
    """16 threads claim batches of 1..7 and report them as a batch: every trial is
    completed once, by the worker that claimed it, none lost."""
    sid = add_study(store, 300)
    workers = [add_worker(store, f"w{i}") for i in range(16)]
    claimed: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(i: int, wid: int) -> None:
        try:
            while trials := store.claim_many(wid, 1 + i % 7).trials:
                outcomes = store.report_many(wid, [Report(t.id, "complete", 1.0) for t in trials])
                assert all(o.first for o in outcomes), outcomes
                with lock:
                    claimed.extend((t.id, wid) for t in trials)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    ids = Counter(tid for tid, _ in claimed)
    assert len(ids) == 300 and max(ids.values()) == 1
    rows = _rows(store, sid)
    assert Counter(r.state for r in rows.values()) == {TrialState.COMPLETE: 300}
    assert all(rows[tid].worker_id == wid for tid, wid in claimed)
    assert all(r.attempt == 1 for r in rows.values())


# -- the routes -------------------------------------------------------------------------------
def _claims(api, worker: int, n: int, **body) -> list[dict]:
    r = api.client.post(
        f"/api/v1/workers/{worker}/claims", json={"max_trials": n, **body}, headers=api.worker
    )
    assert r.status_code == 200, r.text
    return r.json()["claims"]


def _error(response) -> dict:
    assert set(response.json()) == {"error"}, response.text
    return response.json()["error"]


def test_batch_routes_roundtrip(api):
    sid = api.new_study(max_trials=6, max_parallel=6)["id"]
    w = api.new_worker()
    claims = _claims(api, w, 4)
    assert len(claims) == 4
    assert all(c["study"]["id"] == sid and c["lease"]["seconds"] > 0 for c in claims)
    assert all(c["trial"]["state"] == "RUNNING" and c["trial"]["arch_summary"] for c in claims)
    ids = [c["trial"]["id"] for c in claims]
    assert [c["trial"]["id"] for c in _claims(api, w, 4)] == ids  # a retry: the same four
    hb = api.client.post(
        f"/api/v1/workers/{w}/heartbeat", json={"trial_ids": [*ids, 999_999]}, headers=api.worker
    )
    assert hb.status_code == 200, hb.text
    assert [b["action"] for b in hb.json()["trials"]] == ["continue"] * 4
    assert hb.json()["lost"] == [999_999]
    reports = [
        {"trial_id": ids[0], "kind": "complete", "value": 0.5, "metrics": {"n": 1}},
        {"trial_id": ids[1], "kind": "infeasible", "reason": "out of memory"},
        {"trial_id": ids[2], "kind": "complete", "value": 7.0},
        {"trial_id": 999_999, "kind": "complete", "value": 0.5},
    ]
    r = api.client.post(
        f"/api/v1/workers/{w}/reports", json={"reports": reports}, headers=api.worker
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 200, 422, 404]
    assert results[0]["trial"]["state"] == "COMPLETE" and results[0]["trial"]["value"] == 0.5
    assert results[1]["trial"]["state"] == "INFEASIBLE" and results[1]["error"] is None
    assert results[2]["error"]["field"] == "value" and results[2]["trial"] is None
    assert results[3]["error"] == {
        "code": "not_found",
        "message": "trial 999999 does not exist",
        "field": "trial_id",
    }
    again = api.client.post(
        f"/api/v1/workers/{w}/reports", json={"reports": reports[:2]}, headers=api.worker
    )
    assert [x["status"] for x in again.json()["results"]] == [200, 200]  # repeats
    released = api.client.post(
        f"/api/v1/workers/{w}/releases",
        json={"trial_ids": [ids[2], ids[3], ids[0]], "unstarted": True},
        headers=api.worker,
    ).json()
    assert [t["id"] for t in released["trials"]] == sorted(ids[2:])
    assert all(t["state"] == "WAITING" and t["attempt"] == 1 for t in released["trials"])
    assert released["lost"] == [ids[0]]
    metrics = api.client.get("/metrics", headers=api.reader).text
    assert 'archsearch_reports_total{kind="complete"} 1.0' in metrics
    assert 'archsearch_claims_total{result="trial"}' in metrics


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_trials": 0}, "max_trials"),
        ({"max_trials": MAX_BATCH + 1}, "max_trials"),
        ({"max_trials": "5"}, "max_trials"),
        ({"max_trials": 2.5}, "max_trials"),
        ({"max_trials": True}, "max_trials"),
        ({}, "max_trials"),
        ({"max_trials": 2, "study": [0]}, "study.0"),
        ({"max_trials": 2, "exclude": [2**63]}, "exclude.0"),
        ({"max_trials": 2, "extra": 1}, "extra"),
    ],
)
def test_a_bad_claim_body_is_422_naming_the_field(api, body, field):
    w = api.new_worker()
    r = api.client.post(f"/api/v1/workers/{w}/claims", json=body, headers=api.worker)
    assert r.status_code == 422, r.text
    assert _error(r)["field"] == field


def _report(i: int) -> dict:
    return {"trial_id": i, "kind": "complete", "value": 0.5}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"reports": []}, 422, "reports"),
        ({"reports": [_report(i) for i in range(1, MAX_BATCH + 2)]}, 422, "reports"),
        ({"reports": [_report(i) for i in range(1, 5_001)]}, 422, "reports"),
        ({"reports": [_report(i) for i in range(1, 30_001)]}, 413, "body"),  # > 1 MiB
        ({"reports": [{"trial_id": 1, "kind": "done", "value": 0.5}]}, 422, "reports.0"),
        ({"reports": [{"trial_id": 1, "kind": "complete"}]}, 422, "reports.0.complete.value"),
        ({"reports": [{"trial_id": 1, "kind": "error"}]}, 422, "reports.0.error.reason"),
        ({"reports": [_report(1), {**_report(2), "value": "x"}]}, 422, "reports.1.complete.value"),
        ({"reports": "all of them"}, 422, "reports"),
    ],
)
def test_a_bad_report_batch_is_4xx_naming_the_field(api, body, status, field):
    w = api.new_worker()
    r = api.client.post(f"/api/v1/workers/{w}/reports", json=body, headers=api.worker)
    assert r.status_code == status, r.text[:300]
    assert _error(r)["field"] == field


@pytest.mark.parametrize("path", ["heartbeat", "releases"])
@pytest.mark.parametrize(
    ("ids", "field"),
    [([], "trial_ids"), (list(range(1, MAX_BATCH + 2)), "trial_ids"), ([0], "trial_ids.0")],
)
def test_a_bad_trial_id_list_is_422_naming_the_field(api, path, ids, field):
    w = api.new_worker()
    r = api.client.post(f"/api/v1/workers/{w}/{path}", json={"trial_ids": ids}, headers=api.worker)
    assert r.status_code == 422, r.text
    assert _error(r)["field"] == field


def test_batch_routes_check_the_worker_and_its_token(api):
    from service.auth import create_token
    from service.db import make_engine, session_factory, session_scope
    from service.models import Role

    api.new_study(max_trials=2, max_parallel=2)
    w = api.new_worker()
    engine = make_engine(api.url)
    with session_scope(session_factory(engine)) as s:
        other = {"Authorization": f"Bearer {create_token(s, Role.WORKER, 'other')}"}
    engine.dispose()
    bodies = {
        "claims": {"max_trials": 2},
        "reports": {"reports": [_report(1)]},
        "heartbeat": {"trial_ids": [1]},
        "releases": {"trial_ids": [1]},
    }
    for path, body in bodies.items():
        r = api.client.post(f"/api/v1/workers/{w}/{path}", json=body, headers=other)
        assert r.status_code == 403 and _error(r)["field"] == "worker_id", (path, r.text)
        r = api.client.post(f"/api/v1/workers/987654/{path}", json=body, headers=api.worker)
        assert r.status_code == 404 and _error(r)["field"] == "worker_id", (path, r.text)
        r = api.client.post(f"/api/v1/workers/{w}/{path}", json=body, headers=api.reader)
        assert r.status_code == 403 and _error(r)["field"] == "Authorization", (path, r.text)
        r = api.client.post(f"/api/v1/workers/{w}/{path}", json=body)
        assert r.status_code == 401, (path, r.text)
    assert _claims(api, w, 2), "the other token's attempts took nothing away"


def test_the_batch_routes_are_documented(api):
    paths = api.client.get("/openapi.json").json()["paths"]
    for route in ("claims", "reports", "heartbeat", "releases"):
        post = paths[f"/api/v1/workers/{{worker_id}}/{route}"]["post"]
        assert {"200", "401", "403", "404", "422"} <= set(post["responses"]), route
