"""The study lifecycle has one owner: every way a study's last trial can end moves the study
on, in the same transaction, on a SQLite file and on PostgreSQL.

A study of ``n`` trials with ``top_k`` re-scores goes running -> finishing (finals queued)
-> finished, whichever transition ended its last search trial: complete, fail (infeasible,
error, pruned), a release past the attempt limit, the reaper, or an infeasible insertion.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, update

from service import lifecycle
from service.errors import Conflict
from service.models import Study, StudyState, Trial, TrialSource, TrialState
from service.trial_store import NewTrial, TrialStore
from tests.helpers.store import add_study, add_worker, expire_leases


def state(store: TrialStore, study_id: int) -> StudyState:
    with store.sessions() as s:
        return s.scalar(select(Study.state).where(Study.id == study_id))


def finals(store: TrialStore, study_id: int) -> list[Trial]:
    with store.sessions() as s:
        return list(
            s.scalars(
                select(Trial)
                .where(Trial.study_id == study_id, Trial.source == TrialSource.FINAL.value)
                .order_by(Trial.number)
            )
        )


def complete_all_but_last(store: TrialStore, study_id: int, worker: int, n: int) -> None:
    for i in range(n - 1):
        t = store.claim(worker, [study_id])
        store.complete(t.id, worker, 0.5 + i / 100, {})
    assert state(store, study_id) == StudyState.RUNNING


def run_finals(store: TrialStore, study_id: int, worker: int) -> None:
    while (t := store.claim(worker, [study_id])) is not None:
        assert t.source == TrialSource.FINAL
        store.complete(t.id, worker, 0.9, {})


def end_last(store: TrialStore, how: str, study_id: int, worker: int) -> None:
    """End the study's last search trial the way ``how`` says."""
    t = store.claim(worker, [study_id])
    if how == "complete":
        store.complete(t.id, worker, 0.1, {})
    elif how in ("infeasible", "error", "pruned"):
        store.fail(t.id, worker, how, f"ended {how}")  # type: ignore[arg-type]
    elif how == "release":
        store.release(t.id, worker)  # attempt 1 of 2 used: back to WAITING
        assert state(store, study_id) == StudyState.RUNNING
        t = store.claim(worker, [study_id])
        store.release(t.id, worker)  # the last attempt: FAILED
    elif how == "reaper":
        expire_leases(store)
        assert store.reap_expired() == 1  # attempt 1 of 2: WAITING again
        assert state(store, study_id) == StudyState.RUNNING
        store.claim(worker, [study_id])
        expire_leases(store)
        assert store.reap_expired() == 1  # the last attempt: FAILED
    else:
        raise AssertionError(how)


ENDINGS = ["complete", "infeasible", "error", "pruned", "release", "reaper"]


@pytest.mark.parametrize("how", ENDINGS)
def test_every_way_the_last_trial_ends_queues_finals_then_finishes(store, how):
    sid = add_study(store, 3, top_k=2)
    w = add_worker(store)
    complete_all_but_last(store, sid, w, 3)
    end_last(store, how, sid, w)
    assert state(store, sid) == StudyState.FINISHING
    queued = finals(store, sid)
    # The two COMPLETE search trials (or the best two of three) are re-scored, best first.
    assert len(queued) == 2 and all(f.state == TrialState.WAITING for f in queued)
    run_finals(store, sid, w)
    assert state(store, sid) == StudyState.FINISHED
    with store.sessions() as s:
        tested = s.scalars(
            select(Trial.test_value).where(Trial.study_id == sid, Trial.test_value.is_not(None))
        ).all()
    assert tested == [0.9, 0.9]


@pytest.mark.parametrize("how", ["error", "reaper"])
def test_nothing_to_rescore_goes_straight_to_finished(store, how):
    """A study whose trials all FAILED has no top-k: it finishes without finals."""
    sid = add_study(store, 1, top_k=3)
    w = add_worker(store)
    end_last(store, how, sid, w)
    assert state(store, sid) == StudyState.FINISHED
    assert finals(store, sid) == []


def test_a_failing_final_still_finishes_the_study(store):
    sid = add_study(store, 1, top_k=1)
    w = add_worker(store)
    end_last(store, "complete", sid, w)
    final = store.claim(w, [sid])
    store.fail(final.id, w, "error", "out of disk")
    assert state(store, sid) == StudyState.FINISHED


def test_infeasible_insertion_of_the_last_trial_advances(store):
    sid = add_study(store, 2, top_k=1)
    w = add_worker(store)
    with store.transaction() as s:  # one trial ran, the other is replaced below
        s.execute(update(Study).where(Study.id == sid).values(max_trials=3))
    t = store.claim(w, [sid])
    store.complete(t.id, w, 0.7, {})
    t = store.claim(w, [sid])
    store.complete(t.id, w, 0.6, {})
    assert state(store, sid) == StudyState.RUNNING  # 2 of max_trials=3
    with store.transaction() as s:
        store.add_trials(
            s, sid, [NewTrial(params={}, config_hash="bad", infeasible_reason="too big")]
        )
    assert state(store, sid) == StudyState.FINISHING
    assert [f.final_of_id for f in finals(store, sid)] == [t.id - 1]


def test_repeated_report_does_not_advance_twice(store):
    sid = add_study(store, 1, top_k=1)
    w = add_worker(store)
    t = store.claim(w, [sid])
    store.complete(t.id, w, 0.4, {})
    _, first = store.complete(t.id, w, 0.4, {})
    assert not first
    assert len(finals(store, sid)) == 1


def test_reconcile_heals_a_study_left_behind(store):
    """A study whose trials all ended but whose state did not move (a database restored
    from a backup, a crash in an older version) is moved on by the maintenance pass."""
    sid = add_study(store, 2, top_k=1)
    w = add_worker(store)
    for _ in range(2):
        t = store.claim(w, [sid])
        store.complete(t.id, w, 0.3, {})
    with store.transaction() as s:  # undo what the lifecycle did
        s.execute(update(Study).where(Study.id == sid).values(state=StudyState.RUNNING))
        s.execute(
            Trial.__table__.delete().where(
                Trial.study_id == sid, Trial.source == TrialSource.FINAL.value
            )
        )
    other = add_study(store, 1)  # pending work: reconcile leaves it alone
    assert lifecycle.reconcile(store) == 1
    assert state(store, sid) == StudyState.FINISHING and len(finals(store, sid)) == 1
    assert state(store, other) == StudyState.RUNNING
    assert lifecycle.reconcile(store) == 0  # idempotent
    run_finals(store, sid, w)
    assert state(store, sid) == StudyState.FINISHED


def test_end_search_finishes_a_study_below_max_trials(store):
    sid = add_study(store, 1, top_k=1)
    w = add_worker(store)
    with store.transaction() as s:
        s.execute(update(Study).where(Study.id == sid).values(max_trials=10))
    t = store.claim(w, [sid])
    with store.transaction() as s:  # a trial still runs: the search is not over
        assert lifecycle.end_search(store, s, sid, "grid exhausted") == StudyState.RUNNING
    store.complete(t.id, w, 0.8, {})
    assert state(store, sid) == StudyState.RUNNING  # 1 of 10: waits for more suggestions
    with store.transaction() as s:
        assert lifecycle.end_search(store, s, sid, "grid exhausted") == StudyState.FINISHING


# -- the user's transitions ----------------------------------------------------------------
def patch(store: TrialStore, sid: int, target: str) -> StudyState:
    with store.transaction() as s:
        return lifecycle.set_state(store, s, sid, target).state


def test_pause_blocks_claims_and_resume_advances(store):
    sid = add_study(store, 1, top_k=1)
    w = add_worker(store)
    t = store.claim(w, [sid])
    assert patch(store, sid, "paused") == StudyState.PAUSED
    store.complete(t.id, w, 0.5, {})  # running trials of a paused study finish
    assert state(store, sid) == StudyState.PAUSED
    assert patch(store, sid, "running") == StudyState.FINISHING  # all ended while paused
    assert store.claim(w, [sid]).source == TrialSource.FINAL


def test_stop_queues_finals_which_still_run(store):
    sid = add_study(store, 3, top_k=1)
    w = add_worker(store)
    t = store.claim(w, [sid])
    store.complete(t.id, w, 0.5, {})
    assert patch(store, sid, "stopped") == StudyState.STOPPED
    final = store.claim(w, [sid])
    assert final is not None and final.final_of_id == t.id  # search trials are not claimable
    store.complete(final.id, w, 0.6, {})
    assert store.claim(w, [sid]) is None
    assert state(store, sid) == StudyState.STOPPED


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("finished", "running"),
        ("stopped", "running"),
        ("stopped", "paused"),
        ("finishing", "paused"),
    ],
)
def test_transitions_a_study_cannot_make_are_conflicts(store, start, target):
    sid = add_study(store, 1, state=StudyState(start))
    with pytest.raises(Conflict) as err:
        patch(store, sid, target)
    assert err.value.field == "state" and start in str(err.value)
    assert patch(store, sid, start) == StudyState(start)  # staying put is fine


# -- two last reports racing -----------------------------------------------------------------
def test_racing_last_reports_never_leave_the_study_running(store):
    """Two workers finish a study's last two trials at the same moment, 20 times over: the
    lifecycle locks the study row, so one of the two always sees the other's trial done."""
    for _ in range(20):
        sid = add_study(store, 2, top_k=1)
        workers = [add_worker(store, f"w{i}") for i in range(2)]
        claimed = [store.claim(w, [sid]) for w in workers]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def report(
            worker: int,
            trial_id: int,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait()
                store.complete(trial_id, worker, 0.5, {})
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [
            threading.Thread(target=report, args=(w, t.id))
            for w, t in zip(workers, claimed, strict=True)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert not errors, errors
        assert state(store, sid) == StudyState.FINISHING
        with store.sessions() as s:
            n_finals = s.scalar(
                select(func.count()).where(
                    Trial.study_id == sid, Trial.source == TrialSource.FINAL.value
                )
            )
        assert n_finals == 1
