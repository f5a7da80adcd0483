"""The suggester process keeps each study's history encoded between rounds
(service/suggester_process.py). What must hold, on SQLite and PostgreSQL:

* a round from the cache proposes exactly what a cold rebuild of the same history with the
  same seed proposes, however the cache got there (rounds in between, state changes,
  eviction);
* a cache that lags (another coordinator inserted trials or reported results since this
  process last looked) never proposes a configuration already in the study;
* a history that cannot be read is the database's fault (Unavailable), not the study's.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
from sqlalchemy import select

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from search_space import HistoryItem, get_space
from service import suggester_process
from service.errors import Unavailable
from service.models import Role, Study, StudyState, Trial, TrialSource, TrialState
from service.suggester_process import HistoryUnavailable, SuggestJob, run_job
from service.suggestion_queue import SuggestionQueue, derive_seed
from service.trial_store import TrialStore
from tests.helpers.coordinator import ADMIN_TOKEN, db_trials, make_token, migrate
from tests.helpers.store import add_worker

TPE_STUDY = {
    "name": "cache",
    "dataset": "builtin:digits",
    "space": "fg11",
    "algorithm": "tpe",
    "algorithm_options": {"n_startup_jobs": 5},
    "evaluator_options": {"max_features": 10_000_000},
    "top_k": 0,
}


def _job(queue: SuggestionQueue, store: TrialStore, study_id: int, n: int, seed: int) -> SuggestJob:
    with store.sessions() as s:
        study = s.get(Study, study_id)
        assert study is not None
        return queue.job(study, n, seed)


def _history(store: TrialStore, study_id: int) -> tuple[HistoryItem, ...]:
    """The search history as a cold rebuild reads it: every search trial, oldest first."""
    with store.sessions() as s:
        rows = s.execute(
            select(Trial.params, Trial.state, Trial.value)
            .where(Trial.study_id == study_id, Trial.source != TrialSource.FINAL.value)
            .order_by(Trial.id)
        ).all()
    return tuple(HistoryItem(raw=r.params, state=r.state.value, value=r.value) for r in rows)


def _cold(job: SuggestJob, store: TrialStore) -> list[str]:
    cold = dataclasses.replace(job, history=_history(store, job.study_id))
    return [t.config_hash for t in run_job(cold)]


def _finish_some(store: TrialStore, study_id: int, k: int, rng: random.Random) -> None:
    """Claim and end ``k`` WAITING trials: mostly COMPLETE with a random score, some
    INFEASIBLE and FAILED, so that every history state is in play."""
    worker = add_worker(store, f"w{rng.random()}")
    for _ in range(k):
        trial = store.claim(worker, [study_id])
        if trial is None:
            return
        roll = rng.random()
        if roll < 0.15:
            store.fail(trial.id, worker, "infeasible", "too big")
        elif roll < 0.25:
            store.fail(trial.id, worker, "error", "crashed")
        else:
            store.complete(trial.id, worker, rng.random(), {})


@pytest.fixture
def tpe_api(api_factory):
    api = api_factory()
    suggester_process.forget()  # cache entries of an earlier test's database
    yield api
    suggester_process.forget()


def _queue_and_store(api) -> tuple[SuggestionQueue, TrialStore]:
    state = api.client.app.state
    return state.queue, state.store


def test_cached_rounds_equal_a_cold_rebuild_through_state_changes(tpe_api):
    api = tpe_api
    queue, store = _queue_and_store(api)
    sid = api.new_study(**TPE_STUDY, max_trials=400, max_parallel=12)["id"]
    rng = random.Random(3)
    seen_cached = 0
    for step in range(6):
        _finish_some(store, sid, 8, rng)
        queue.refill(sid)  # rounds through the cache in between: it must keep up
        job = _job(queue, store, sid, n=16, seed=1000 + step)
        cached = [t.config_hash for t in run_job(job)]
        assert cached == _cold(job, store), f"step {step}: cache and cold rebuild differ"
        assert len(set(cached)) == len(cached) == 16
        seen_cached += 1
    # the cache really was used: its entry holds every search trial of the study
    entries = [e for k, e in suggester_process._cache.items() if k.startswith(job.study_key)]
    assert len(entries) == 1
    assert set(entries[0][1].known_ids()) == {t.id for t in db_trials(api.url, sid)}

    # an evicted entry is rebuilt from the database with the same answer
    before = [t.config_hash for t in run_job(job)]
    suggester_process.forget(job.study_key)
    assert [t.config_hash for t in run_job(job)] == before
    assert seen_cached == 6


def test_a_lagging_cache_never_proposes_a_configuration_the_study_has(tpe_api):
    api = tpe_api
    queue, store = _queue_and_store(api)
    sid = api.new_study(**TPE_STUDY, max_trials=400, max_parallel=8)["id"]
    rng = random.Random(5)
    _finish_some(store, sid, 8, rng)
    queue.refill(sid)
    job = _job(queue, store, sid, n=12, seed=77)
    run_job(job)  # the cache now knows the study as it is

    # "Another coordinator" inserts exactly what this process would propose next, and
    # reports results, without this process seeing it happen.
    upcoming = run_job(job)
    with store.transaction(lock_study=sid) as s:
        study = s.get(Study, sid)
        study.max_trials = 1000
        store.add_trials(s, sid, upcoming)
    _finish_some(store, sid, 6, rng)

    proposed = run_job(job)
    in_study = {t.config_hash for t in db_trials(api.url, sid)}
    assert {t.config_hash for t in upcoming} <= in_study
    assert not {t.config_hash for t in proposed} & in_study
    assert len(proposed) == 12
    assert [t.config_hash for t in proposed] == _cold(job, store)


def test_an_unreadable_history_is_unavailable_not_the_studys_fault(tpe_api):
    api = tpe_api
    queue, store = _queue_and_store(api)
    sid = api.new_study(**TPE_STUDY, max_trials=50, max_parallel=4)["id"]
    job = dataclasses.replace(
        _job(queue, store, sid, n=2, seed=1),
        database_url="postgresql+psycopg://postgres@127.0.0.1:9/nothing-listens-here",
        study_key="unreachable",
    )
    with pytest.raises(HistoryUnavailable):
        run_job(job)
    with pytest.raises(Unavailable, match="could not read the history"):
        queue._suggest(job)
    with store.sessions() as s:
        study = s.get(Study, sid)
        assert study.state == StudyState.RUNNING and study.error is None


@pytest.mark.slow
@pytest.mark.postgres
def test_two_coordinators_with_tpe_and_their_own_caches(postgres_url, tmp_path):
    """Two uvicorn processes, each with its suggester process and cache, refill one TPE
    study while 8 workers alternate between them: every trial runs exactly once, no
    configuration twice, and the study ends at max_trials."""
    migrate(postgres_url)
    token = make_token(postgres_url, Role.WORKER)
    coordinators = [start_coordinator(postgres_url, admin_token=ADMIN_TOKEN) for _ in range(2)]
    try:
        with Client(coordinators[0].base_url, ADMIN_TOKEN) as admin:
            sid = admin.create_study(**{**TPE_STUDY, "max_trials": 120, "max_parallel": 8}).id
        clients = [Client(c.base_url, token) for c in coordinators]
        workers = [clients[i % 2].register_worker(f"w{i}").id for i in range(8)]
        claimed: list[int] = []
        rng = random.Random(11)
        idle = 0
        while idle < 200:
            progressed = False
            for i, wid in enumerate(workers):
                got = clients[(i + len(claimed)) % 2].claim(wid)
                if got is None:
                    continue
                progressed = True
                claimed.append(got.trial.id)
                clients[len(claimed) % 2].complete(got.trial.id, wid, rng.random())
            idle = 0 if progressed else idle + 1
            with Client(coordinators[0].base_url, ADMIN_TOKEN) as admin:
                if admin.study(sid).state == StudyState.FINISHED:
                    break
        for c in clients:
            c.close()
    finally:
        for c in coordinators:
            stop_coordinator(c)
    assert max(Counter(claimed).values()) == 1
    rows = db_trials(postgres_url, sid)
    assert len(rows) == 120
    assert len({r.config_hash for r in rows}) == 120
    space = get_space("fg11")
    assert len({space.point_key(space.normalize(r.params)) for r in rows}) == 120
    assert {r.id for r in rows if r.state == TrialState.COMPLETE} == set(claimed)


def test_seeds_of_rounds_differ_by_history_and_round():
    assert derive_seed(1, 10, 0) != derive_seed(1, 11, 0) != derive_seed(1, 10, 1)
