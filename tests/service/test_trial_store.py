"""The trial store's contract, on a SQLite file and on PostgreSQL (one parametrised suite)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from service.errors import Conflict, NotFound
from service.models import StudyState, Trial, TrialState
from service.trial_store import NewTrial
from tests.helpers.store import add_study, add_worker, expire_leases


def test_numbers_are_sequential_and_duplicates_skipped(store):
    sid = add_study(store, 3)
    with store.transaction() as s:
        added = store.add_trials(
            s,
            sid,
            [
                NewTrial(params={"i": 1}, config_hash="h1"),
                NewTrial(params={"i": 9}, config_hash="h9"),
                NewTrial(params={"i": 9}, config_hash="h9"),
            ],
        )
        assert [t.number for t in added] == [4]
        numbers = list(
            s.scalars(select(Trial.number).where(Trial.study_id == sid).order_by(Trial.number))
        )
    assert numbers == [1, 2, 3, 4]


def test_infeasible_new_trial_is_stored_final(store):
    sid = add_study(store, 0)
    with store.transaction() as s:
        [t] = store.add_trials(
            s, sid, [NewTrial(params={}, config_hash="x", infeasible_reason="map below 1x1")]
        )
        assert t.state == TrialState.INFEASIBLE and t.reason == "map below 1x1"
    w = add_worker(store)
    assert store.claim(w) is None


def test_claim_gives_waiting_trial_and_reclaim_returns_own(store):
    sid = add_study(store, 2)
    w = add_worker(store)
    first = store.claim(w)
    assert first is not None and first.state == TrialState.RUNNING
    assert first.worker_id == w and first.study_id == sid and first.number == 1
    assert first.lease_expires_at is not None
    again = store.claim(w)
    assert again is not None and again.id == first.id  # its own RUNNING trial, not a new one
    other = store.claim(add_worker(store, "w2"))
    assert other is not None and other.number == 2
    assert store.claim(add_worker(store, "w3")) is None


def test_claim_unknown_worker_is_not_found(store):
    add_study(store, 1)
    with pytest.raises(NotFound):
        store.claim(12345)


def test_paused_study_is_not_claimed_and_study_filter_applies(store):
    paused = add_study(store, 2, state=StudyState.PAUSED)
    running = add_study(store, 2)
    w = add_worker(store)
    t = store.claim(w, study_ids=[paused])
    assert t is None
    t = store.claim(w, study_ids=[running])
    assert t is not None and t.study_id == running


def test_user_priority_runs_first(store):
    sid = add_study(store, 3)
    with store.transaction() as s:
        store.add_trials(
            s, sid, [NewTrial(params={"u": 1}, config_hash="user", source="user", priority=0)]
        )
    t = store.claim(add_worker(store))
    assert t is not None and t.source == "user" and t.number == 4


def test_complete_is_idempotent_and_refuses_a_different_result(store):
    add_study(store, 1)
    w = add_worker(store)
    t = store.claim(w)
    done, first = store.complete(t.id, w, 0.75, {"acc": 0.75})
    assert first and done.state == TrialState.COMPLETE and done.value == 0.75
    again, first_again = store.complete(t.id, w, 0.75, {"acc": 0.75})
    assert not first_again and again.value == 0.75
    with pytest.raises(Conflict, match="different result"):
        store.complete(t.id, w, 0.5, {})
    with pytest.raises(Conflict, match="already ended COMPLETE"):
        store.fail(t.id, w, "error", "boom")


def test_fail_then_complete_is_refused(store):
    add_study(store, 1)
    w = add_worker(store)
    t = store.claim(w)
    failed, first = store.fail(t.id, w, "infeasible", "too big")
    assert first and failed.state == TrialState.INFEASIBLE and failed.reason == "too big"
    _, first_again = store.fail(t.id, w, "infeasible", "too big")
    assert not first_again
    with pytest.raises(Conflict):
        store.complete(t.id, w, 0.9, {})


def test_wrong_worker_and_unknown_trial(store):
    add_study(store, 1)
    w1, w2 = add_worker(store), add_worker(store, "w2")
    t = store.claim(w1)
    with pytest.raises(Conflict, match="does not hold its lease"):
        store.complete(t.id, w2, 0.1, {})
    with pytest.raises(Conflict):
        store.heartbeat(t.id, w2)
    with pytest.raises(NotFound):
        store.complete(999_999, w1, 0.1, {})


def test_heartbeat_extends_lease_and_records_intermediate(store):
    add_study(store, 1)
    w = add_worker(store)
    t = store.claim(w)
    before = t.lease_expires_at
    time.sleep(0.05)
    hb = store.heartbeat(t.id, w, step=1, value=0.4)
    hb = store.heartbeat(t.id, w, step=2, value=0.6)
    assert hb.lease_expires_at > before
    assert hb.intermediate == [[1, 0.4], [2, 0.6]]


def test_expired_lease_is_reaped_with_attempt_and_late_report_refused(store):
    add_study(store, 1)
    w1, w2 = add_worker(store), add_worker(store, "w2")
    t = store.claim(w1)
    expire_leases(store)
    t2 = store.claim(w2)  # the claim reaps lazily first
    assert t2 is not None and t2.id == t.id and t2.attempt == 2 and t2.worker_id == w2
    with pytest.raises(Conflict):
        store.complete(t.id, w1, 0.3, {})
    done, _ = store.complete(t.id, w2, 0.4, {})
    assert done.value == 0.4 and done.attempt == 2


def test_lease_lost_max_attempts_times_ends_failed(store):
    add_study(store, 1)
    w = add_worker(store)
    store.claim(w)
    expire_leases(store)
    assert store.reap_expired() == 1
    store.claim(w)
    expire_leases(store)
    assert store.reap_expired() == 1
    with store.sessions() as s:
        t = s.scalars(select(Trial)).one()
    assert t.state == TrialState.FAILED and t.attempt == 2 and "lease expired" in t.reason
    assert store.claim(w) is None


def test_unexpired_leases_are_not_reaped(store):
    add_study(store, 2)
    store.claim(add_worker(store))
    assert store.reap_expired() == 0


def test_release_returns_trial_to_queue_at_once(store):
    add_study(store, 1)
    w1, w2 = add_worker(store), add_worker(store, "w2")
    t = store.claim(w1)
    released = store.release(t.id, w1)
    assert released.state == TrialState.WAITING and released.worker_id is None
    t2 = store.claim(w2)
    # A release uses up an attempt: a trial every worker gives back must not circle.
    assert t2 is not None and t2.id == t.id and t2.attempt == 2
    with pytest.raises(Conflict):
        store.release(t.id, w1)


def test_release_on_the_last_attempt_fails_the_trial(store):
    add_study(store, 1)
    w1, w2 = add_worker(store), add_worker(store, "w2")
    t = store.claim(w1)
    store.release(t.id, w1)
    t = store.claim(w2)
    assert t.attempt == store.max_attempts == 2
    failed = store.release(t.id, w2)
    assert failed.state == TrialState.FAILED and failed.worker_id == w2
    assert failed.reason == "released by its worker on all 2 attempts"
    assert store.claim(w1) is None


def test_threads_never_claim_one_trial_twice(store):
    """16 threads race for 200 trials directly on the store: each trial goes to one."""
    add_study(store, 200)
    workers = [add_worker(store, f"w{i}") for i in range(16)]
    claimed: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(wid: int) -> None:
        try:
            while (t := store.claim(wid)) is not None:
                store.complete(t.id, wid, 1.0, {})
                with lock:
                    claimed.append((t.id, wid))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    ids = Counter(tid for tid, _ in claimed)
    assert len(ids) == 200 and max(ids.values()) == 1
    with store.sessions() as s:
        states = Counter(s.scalars(select(Trial.state)))
    assert states == {TrialState.COMPLETE: 200}
