"""The blend stage of a study's end (issue 17; docs/design.md section 5), on a SQLite file
and on PostgreSQL: a study with ``blend_k`` queues one blend trial of its best search
trials once its finals have finished, stays ``finishing`` until the blend ends, and a
stopped study does the same without leaving ``stopped``. The blend's test score comes in
its report and lands in its ``test_value``; a blend asked for by hand moves a finished
study back to ``finishing``.
"""

from __future__ import annotations

import hashlib
import math

import pytest
from sqlalchemy import update

from service import lifecycle
from service.errors import Conflict, InvalidInput, NotFound
from service.models import Study, StudyState, TrialSource, TrialState
from service.trial_store import NewTrial, TrialStore
from tests.helpers.store import add_study, add_worker, study_state, study_trials


def add_blend_study(
    store: TrialStore,
    n: int,
    *,
    top_k: int = 0,
    blend_k: int = 3,
    weights: str = "uniform",
    evaluator: str = "screen",
) -> int:
    """A study of ``n`` queued search trials with distinct architectures and costs."""
    new = [
        NewTrial(
            params={"i": i},
            arch={"arch": i},
            config_hash=f"h{i}",
            seed=40 + i,
            gflops_per_image=0.5 * (i + 1),
            n_params=100 * (i + 1),
            n_features=10 * (i + 1),
        )
        for i in range(n)
    ]
    return add_study(
        store,
        n,
        top_k=top_k,
        trials=new,
        name="b",
        evaluator=evaluator,
        blend_k=blend_k,
        blend_weights=weights,
    )


def run_search(store: TrialStore, study_id: int, worker: int, values: list[float | None]) -> None:
    """Claim each search trial in turn: complete it with the value, or fail it (None)."""
    for v in values:
        t = store.claim(worker, [study_id])
        assert t is not None and t.source == TrialSource.SUGGESTED
        if v is None:
            store.fail(t.id, worker, "error", "broke")
        else:
            store.complete(t.id, worker, v, {})


def run_finals(store: TrialStore, study_id: int, worker: int, n: int) -> None:
    """Claim and complete the study's ``n`` finals (they run first, at priority 0)."""
    for _ in range(n):
        t = store.claim(worker, [study_id])
        assert t is not None and t.source == TrialSource.FINAL, t
        store.complete(t.id, worker, 0.5, {})


def reconcile_blends(store: TrialStore, study_id: int) -> None:
    """What every maintenance pass and every later report does: nothing, once done."""
    with store.transaction() as s:
        lifecycle.advance(store, s, study_id)
    lifecycle.reconcile(store)


def test_blend_is_queued_once_after_the_finals_and_the_study_finishes_after_it(store):
    sid = add_blend_study(store, 4, top_k=2, blend_k=3, weights="validation")
    w = add_worker(store)
    run_search(store, sid, w, [0.5, 0.8, 0.6, 0.7])
    assert study_state(store, sid) == StudyState.FINISHING
    assert study_trials(store, sid, TrialSource.BLEND) == []  # not while finals are pending
    run_finals(store, sid, w, 2)
    assert study_state(store, sid) == StudyState.FINISHING  # the blend keeps it finishing
    reconcile_blends(store, sid)
    (blend,) = study_trials(store, sid, TrialSource.BLEND)
    search = {t.number: t for t in study_trials(store, sid, TrialSource.SUGGESTED)}
    members = [search[2], search[4], search[3]]  # 0.8, 0.7, 0.6: best first
    ids = [t.id for t in members]
    assert blend.state == TrialState.WAITING and blend.priority == 0
    assert blend.params == {"members": ids, "weights": "validation"}
    assert blend.arch == {"members": [t.arch for t in members]}
    assert blend.final_of_id is None and blend.rung == 0
    key = f"blend:validation:{','.join(map(str, ids))}"
    assert blend.config_hash == hashlib.sha256(key.encode()).hexdigest()
    assert blend.gflops_per_image == pytest.approx(sum(t.gflops_per_image for t in members))
    assert blend.n_params == sum(t.n_params for t in members)
    assert blend.n_features == sum(t.n_features for t in members)

    t = store.claim(w, [sid])
    assert t.id == blend.id and t.is_final
    store.complete(t.id, w, 0.83, {"test_value": 0.79, "member_values": [0.8, 0.7, 0.6]})
    assert study_state(store, sid) == StudyState.FINISHED
    reconcile_blends(store, sid)
    (done,) = study_trials(store, sid, TrialSource.BLEND)
    assert (done.state, done.value, done.test_value) == (TrialState.COMPLETE, 0.83, 0.79)
    assert study_state(store, sid) == StudyState.FINISHED
    # The blend is no search result: the top trials and the members' test values stand.
    with store.sessions() as s:
        top = list(s.scalars(lifecycle.top_trials(sid, 10)))
    assert [t.number for t in top] == [2, 4, 3, 1]
    assert all(t.source == TrialSource.SUGGESTED for t in top)


def test_without_finals_the_blend_follows_the_search_and_fewer_members_than_blend_k(store):
    sid = add_blend_study(store, 2, top_k=0, blend_k=5)
    w = add_worker(store)
    run_search(store, sid, w, [0.4, None])
    assert study_state(store, sid) == StudyState.FINISHING
    (blend,) = study_trials(store, sid, TrialSource.BLEND)
    assert len(blend.params["members"]) == 1  # the one COMPLETE trial
    t = store.claim(w, [sid])
    store.fail(t.id, w, "infeasible", "needs 40 GiB for the kernels, 8 GiB free")
    assert study_state(store, sid) == StudyState.FINISHED  # a failed blend ends the study too
    assert study_trials(store, sid, TrialSource.BLEND)[0].reason.startswith("needs 40 GiB")


def test_no_complete_search_trial_means_no_blend(store):
    sid = add_blend_study(store, 2, top_k=2, blend_k=3)
    w = add_worker(store)
    run_search(store, sid, w, [None, None])
    assert study_state(store, sid) == StudyState.FINISHED
    reconcile_blends(store, sid)
    assert study_trials(store, sid, TrialSource.BLEND) == []


def test_blend_k_zero_queues_no_blend(store):
    sid = add_blend_study(store, 2, top_k=1, blend_k=0)
    w = add_worker(store)
    run_search(store, sid, w, [0.3, 0.6])
    run_finals(store, sid, w, 1)
    assert study_state(store, sid) == StudyState.FINISHED
    assert study_trials(store, sid, TrialSource.BLEND) == []


def test_a_stopped_study_queues_its_blend_after_its_finals_and_stays_stopped(store):
    sid = add_blend_study(store, 5, top_k=1, blend_k=2)
    w = add_worker(store)
    run_search(store, sid, w, [0.2, 0.9])
    with store.transaction() as s:
        lifecycle.set_state(store, s, sid, "stopped")
    assert study_trials(store, sid, TrialSource.BLEND) == []  # its final comes first
    run_finals(store, sid, w, 1)
    assert study_state(store, sid) == StudyState.STOPPED
    (blend,) = study_trials(store, sid, TrialSource.BLEND)
    t = store.claim(w, [sid])  # a stopped study's blend is claimed like its finals
    assert t is not None and t.id == blend.id
    store.complete(t.id, w, 0.91, {"test_value": 0.88})
    assert store.claim(w, [sid]) is None  # its search trials stay unclaimed
    assert study_state(store, sid) == StudyState.STOPPED
    reconcile_blends(store, sid)
    assert len(study_trials(store, sid, TrialSource.BLEND)) == 1


def test_stopping_a_study_with_nothing_to_rescore_queues_the_blend_at_once(store):
    sid = add_blend_study(store, 4, top_k=0, blend_k=2)
    w = add_worker(store)
    run_search(store, sid, w, [0.2, 0.9])
    with store.transaction() as s:
        lifecycle.set_state(store, s, sid, "stopped")
    (blend,) = study_trials(store, sid, TrialSource.BLEND)
    search = {t.number: t.id for t in study_trials(store, sid, TrialSource.SUGGESTED)}
    assert blend.params["members"] == [search[2], search[1]]


def test_reconcile_heals_a_study_left_without_its_blend(store):
    """A crash (or a database restored from a backup) that left the finals finished but
    no blend queued: the maintenance pass queues it, once."""
    finishing = add_blend_study(store, 2, top_k=0, blend_k=0)
    stopped = add_blend_study(store, 2, top_k=0, blend_k=0)
    w = add_worker(store)
    run_search(store, finishing, w, [0.3, 0.6])
    run_search(store, stopped, w, [0.7, 0.1])
    with store.transaction() as s:
        s.execute(update(Study).where(Study.id == finishing).values(state="finishing", blend_k=2))
        s.execute(update(Study).where(Study.id == stopped).values(state="stopped", blend_k=2))
    assert lifecycle.reconcile(store) == 2
    assert study_state(store, finishing) == StudyState.FINISHING
    assert study_state(store, stopped) == StudyState.STOPPED
    assert len(study_trials(store, finishing, TrialSource.BLEND)) == 1
    assert len(study_trials(store, stopped, TrialSource.BLEND)) == 1
    assert lifecycle.reconcile(store) == 0  # idempotent
    assert len(study_trials(store, finishing, TrialSource.BLEND)) == 1


@pytest.mark.parametrize(
    "metrics",
    [{}] + [{"test_value": v} for v in (None, "0.9", True, 1.5, -0.1, math.inf)],
)
def test_a_blend_report_without_a_valid_test_score_is_refused(store, metrics):
    sid = add_blend_study(store, 1, top_k=0, blend_k=1)
    w = add_worker(store)
    run_search(store, sid, w, [0.6])
    t = store.claim(w, [sid])
    assert t.source == TrialSource.BLEND
    with pytest.raises(InvalidInput) as err:
        store.complete(t.id, w, 0.6, metrics)
    assert err.value.field == "metrics.test_value"
    (blend,) = study_trials(store, sid, TrialSource.BLEND)
    assert blend.state == TrialState.RUNNING and blend.test_value is None
    # A fail report (no result to score) needs no test score.
    store.fail(t.id, w, "infeasible", "out of memory")
    assert study_state(store, sid) == StudyState.FINISHED


def test_a_blend_by_hand_on_a_finished_study(store):
    sid = add_blend_study(store, 3, top_k=0, blend_k=0)
    w = add_worker(store)
    run_search(store, sid, w, [0.1, 0.3, 0.2])
    assert study_state(store, sid) == StudyState.FINISHED
    for k, field in [(0, "k"), (4, "k")]:
        with store.transaction() as s, pytest.raises(InvalidInput) as err:
            lifecycle.queue_blend(store, s, sid, k, "uniform")
        assert err.value.field == field and "has 3" in err.value.message
    with store.transaction() as s:
        number = lifecycle.queue_blend(store, s, sid, 2, "uniform").number
    assert number == 4 and study_state(store, sid) == StudyState.FINISHING
    with store.transaction() as s, pytest.raises(Conflict) as err:
        lifecycle.queue_blend(store, s, sid, 3, "uniform")
    assert err.value.field == "state" and "finishing" in err.value.message
    t = store.claim(w, [sid])
    store.complete(t.id, w, 0.35, {"test_value": 0.3})
    assert study_state(store, sid) == StudyState.FINISHED
    with store.transaction() as s, pytest.raises(Conflict) as err:
        lifecycle.queue_blend(store, s, sid, 2, "uniform")  # the same blend again
    assert err.value.field == "k" and "trial 4" in err.value.message
    with store.transaction() as s:  # other weights: another blend
        lifecycle.queue_blend(store, s, sid, 2, "validation")
    assert study_state(store, sid) == StudyState.FINISHING
    assert len(study_trials(store, sid, TrialSource.BLEND)) == 2


def test_a_blend_by_hand_on_a_stopped_study_leaves_it_stopped(store):
    sid = add_blend_study(store, 5, top_k=0, blend_k=0)
    w = add_worker(store)
    run_search(store, sid, w, [0.1, 0.3])
    with store.transaction() as s:
        lifecycle.set_state(store, s, sid, "stopped")
        blend = lifecycle.queue_blend(store, s, sid, 2, "uniform")
    assert study_state(store, sid) == StudyState.STOPPED
    assert store.claim(w, [sid]).id == blend.id


@pytest.mark.parametrize("study_state", ["running", "paused"])
def test_a_blend_by_hand_needs_the_search_over(store, study_state):
    sid = add_blend_study(store, 3, top_k=0, blend_k=0)
    w = add_worker(store)
    run_search(store, sid, w, [0.5])
    with store.transaction() as s:
        lifecycle.set_state(store, s, sid, study_state)
    with store.transaction() as s, pytest.raises(Conflict) as err:
        lifecycle.queue_blend(store, s, sid, 1, "uniform")
    assert err.value.field == "state" and study_state in err.value.message
    assert study_trials(store, sid, TrialSource.BLEND) == []


def test_a_blend_by_hand_needs_a_blendable_evaluator_and_a_study(store):
    sid = add_blend_study(store, 1, top_k=0, blend_k=0, evaluator="train")
    w = add_worker(store)
    run_search(store, sid, w, [0.5])
    assert study_state(store, sid) == StudyState.FINISHED
    with store.transaction() as s, pytest.raises(InvalidInput) as err:
        lifecycle.queue_blend(store, s, sid, 1, "uniform")
    assert err.value.field == "evaluator" and "train" in err.value.message
    with store.transaction() as s, pytest.raises(NotFound):
        lifecycle.queue_blend(store, s, sid + 100, 1, "uniform")
