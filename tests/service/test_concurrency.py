"""Concurrency through real HTTP: uvicorn coordinators on loopback ports, worker threads
and worker processes. Proves: no trial claimed twice, none lost, max_trials kept."""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client, complete_report
from service.db import make_engine, session_factory
from service.models import Role, Study, StudyState, TrialState
from tests.helpers.coordinator import (
    ADMIN_TOKEN,
    FG11_STUDY,
    db_trials,
    make_token,
    migrate,
    queued_study,
)

pytestmark = pytest.mark.slow


def work_until_empty(
    base_urls: list[str],
    token: str,
    name: str,
    study_id: int,
    wait_for_finish: bool = False,
    deadline_s: float = 240,
) -> list[int]:
    """Register, then claim -> heartbeat -> complete until no work is left.

    ``base_urls`` are used in turn (several coordinators behind one worker). Returns
    the ids of the trials this worker completed.
    """
    clients = [Client(u, token, timeout=60) for u in base_urls]
    done: list[int] = []
    try:
        wid = clients[0].register_worker(name).id
        deadline = time.monotonic() + deadline_s
        i = 0
        while time.monotonic() < deadline:
            c = clients[i % len(clients)]
            i += 1
            got = c.claim(wid, [study_id])
            if got is None:
                if not wait_for_finish or c.study(study_id).state == "finished":
                    return done
                time.sleep(0.05)
                continue
            tid = got.trial.id
            c.heartbeat(tid, wid, step=0, value=0.0)
            c.complete(tid, wid, value=got.trial.number / 1000, metrics={"by": name})
            done.append(tid)
        raise TimeoutError(f"{name} still had work after {deadline_s} s")
    finally:
        for c in clients:
            c.close()


def work_in_batches(
    base_urls: list[str],
    token: str,
    name: str,
    study_id: int,
    wait_for_finish: bool = False,
    deadline_s: float = 240,
) -> list[int]:
    """As :func:`work_until_empty`, through the batch routes: claim 1..16 trials at once
    (the size varies with the worker and the round), heart-beat them in one request,
    report them in one request. Returns the ids this worker completed."""
    clients = [Client(u, token, timeout=60) for u in base_urls]
    done: list[int] = []
    try:
        wid = clients[0].register_worker(name).id
        deadline = time.monotonic() + deadline_s
        i = 0
        while time.monotonic() < deadline:
            c = clients[i % len(clients)]
            i += 1
            got = c.claim_many(wid, 1 + (hash(name) + i) % 16, [study_id])
            if not got:
                if not wait_for_finish or c.study(study_id).state == "finished":
                    return done
                time.sleep(0.05)
                continue
            ids = [g.trial.id for g in got]
            beat = c.heartbeat_many(wid, ids)
            assert beat.lost == [] and [b.trial_id for b in beat.trials] == sorted(ids)
            reports = [
                complete_report(g.trial.id, g.trial.number / 1000, {"by": name}) for g in got
            ]
            results = c.report_many(wid, reports)
            assert [r.status for r in results] == [200] * len(got), results
            done.extend(ids)
        raise TimeoutError(f"{name} still had work after {deadline_s} s")
    finally:
        for c in clients:
            c.close()


def _process_main(
    base_urls: list[str],
    token: str,
    name: str,
    study_id: int,
    wait: bool,
    out: str,
    batches: bool = False,
) -> None:
    work = work_in_batches if batches else work_until_empty
    ids = work(base_urls, token, name, study_id, wait)
    Path(out).write_text(json.dumps(ids))


def run_workers(
    base_urls: list[str],
    token: str,
    study_id: int,
    n_threads: int,
    n_processes: int,
    tmp_path: Path,
    wait: bool = False,
    batches: bool = False,
) -> list[int]:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def thread_main(i: int) -> None:
        try:
            work = work_in_batches if batches else work_until_empty
            ids = work(base_urls, token, f"thread-{i}", study_id, wait)
            with lock:
                results.append(ids)
        except BaseException as exc:
            errors.append(exc)

    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(n_processes):
        out = tmp_path / f"proc-{i}.json"
        p = ctx.Process(
            target=_process_main,
            args=(base_urls, token, f"proc-{i}", study_id, wait, str(out), batches),
        )
        p.start()
        procs.append((p, out))
    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p, out in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"worker process exited with {p.exitcode}"
        results.append(json.loads(out.read_text()))
    assert not errors, errors
    return [tid for ids in results for tid in ids]


@pytest.mark.parametrize("batches", [False, True], ids=["single", "batches"])
def test_16_threads_and_4_processes_complete_500_trials_exactly_once(
    live, db_url, tmp_path, batches
):
    token = make_token(db_url, Role.WORKER)
    sid, claimable = queued_study(live.base_url, "race", 500)
    assert claimable > 300  # most of fg11 at 200x200 can be built

    claimed = run_workers([live.base_url], token, sid, 16, 4, tmp_path, batches=batches)

    counts = Counter(claimed)
    assert max(counts.values()) == 1, "a trial was completed by two workers"
    assert len(counts) == claimable, "a trial was lost"
    rows = db_trials(db_url, sid)
    assert len(rows) == 500
    states = Counter(r.state for r in rows)
    assert states[TrialState.COMPLETE] == claimable
    assert states[TrialState.COMPLETE] + states[TrialState.INFEASIBLE] == 500
    assert all(r.value == r.number / 1000 for r in rows if r.state == TrialState.COMPLETE)
    assert all(r.attempt == 1 for r in rows)
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        assert admin.study(sid).state == "finished"


def _stall_the_process(stop: threading.Event, seconds: float) -> None:
    """Stop every thread of this process (the GIL held in C) for about ``seconds``, over
    and over: what a long garbage collection or a starved host does to a worker."""
    rng = random.Random(0)
    usleep = ctypes.PyDLL(None).usleep  # PyDLL: the GIL is not released around the call
    while not stop.wait(rng.uniform(0.1, 0.5)):
        usleep(int(rng.uniform(0.9, 1.1) * seconds * 1e6))


@pytest.mark.parametrize("batches", [False, True], ids=["single", "batches"])
def test_workers_that_stall_ride_out_keep_alive_closes(db_url, tmp_path, batches):
    """The coordinator closes keep-alive connections idle for 1 s; the worker threads'
    process stalls for about that long again and again, so requests go out on connections
    the coordinator is closing at that moment ("Server disconnected without sending a
    response"). Every trial is still completed exactly once, at its first attempt, and
    no worker sees an error: the client sends such a request again on a fresh connection,
    which claims, heartbeats and reports allow."""
    migrate(db_url)
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, serve_args=["--keep-alive", "1"])
    stop = threading.Event()
    staller = threading.Thread(target=_stall_the_process, args=(stop, 1.0), daemon=True)
    try:
        token = make_token(db_url, Role.WORKER)
        sid, claimable = queued_study(live.base_url, "stalls", 200)
        staller.start()
        claimed = run_workers([live.base_url], token, sid, 12, 0, tmp_path, batches=batches)
    finally:
        stop.set()
        staller.join()
        stop_coordinator(live)
    assert sorted(claimed) == sorted(set(claimed)), "a trial was completed by two workers"
    rows = db_trials(db_url, sid)
    assert len(claimed) == claimable == sum(r.state == TrialState.COMPLETE for r in rows)
    assert all(r.attempt == 1 for r in rows)


@pytest.mark.postgres
@pytest.mark.parametrize("batches", [False, True], ids=["single", "batches"])
def test_two_coordinators_on_one_postgres(postgres_url, tmp_path, batches):
    """Workers alternate between two uvicorn processes; refills race across them."""
    migrate(postgres_url)
    token = make_token(postgres_url, Role.WORKER)
    a = start_coordinator(postgres_url, admin_token=ADMIN_TOKEN)
    b = start_coordinator(postgres_url, admin_token=ADMIN_TOKEN)
    try:
        with Client(a.base_url, ADMIN_TOKEN) as admin:
            study = admin.create_study(
                name="two",
                max_trials=200,
                max_parallel=8,
                top_k=0,
                **FG11_STUDY,
            )
        sid = study.id
        claimed = run_workers(
            [a.base_url, b.base_url], token, sid, 8, 2, tmp_path, wait=True, batches=batches
        )
    finally:
        stop_coordinator(a)
        stop_coordinator(b)
    counts = Counter(claimed)
    assert max(counts.values()) == 1
    rows = db_trials(postgres_url, sid)
    assert len(rows) == 200, "max_trials exceeded or not reached"
    assert len({r.number for r in rows}) == 200 and len({r.config_hash for r in rows}) == 200
    complete = {r.id for r in rows if r.state == TrialState.COMPLETE}
    assert complete == set(counts)
    assert all(r.state in (TrialState.COMPLETE, TrialState.INFEASIBLE) for r in rows)
    engine = make_engine(postgres_url)
    with session_factory(engine)() as s:
        assert s.get(Study, sid).state == StudyState.FINISHED
    engine.dispose()


def test_coordinator_reaper_loop_returns_lost_trials(db_url):
    """A worker that vanishes loses its trial through the background reaper, with no
    claim needed to trigger it; the attempt count shows in the API."""
    migrate(db_url)
    token = make_token(db_url, Role.WORKER)
    live = start_coordinator(
        db_url,
        admin_token=ADMIN_TOKEN,
        env={"ARCHSEARCH_LEASE_SECONDS": "1", "ARCHSEARCH_REAPER_INTERVAL_SECONDS": "0.3"},
    )
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as w:
            sid = admin.create_study(
                name="lost",
                max_trials=1,
                max_parallel=1,
                top_k=0,
                **FG11_STUDY,
            ).id
            wid = w.register_worker("vanishing").id
            got = w.claim(wid)
            if got is None:
                pytest.skip("the single sampled fg11 config was infeasible")
            number = got.trial.number
            deadline = time.monotonic() + 10
            while admin.trial(sid, number).state != "WAITING":
                assert time.monotonic() < deadline, "reaper did not return the trial"
                time.sleep(0.2)
            assert admin.trial(sid, number).attempt == 2
    finally:
        stop_coordinator(live)


def test_tpe_study_end_to_end_with_synthetic_objective(api_factory):
    """A TPE study driven through the API; the test is the worker and the objective."""
    api = api_factory()
    sid = api.new_study(
        space="pinto-cox",
        algorithm="tpe",
        max_trials=30,
        max_parallel=2,
        algorithm_options={"n_startup_jobs": 10},
    )["id"]
    w = api.new_worker()

    def objective(arch: dict) -> float:
        # Prefers many filters in the last layer and pool order 2; mapped into [0, 1],
        # the score range of an accuracy.
        last = arch["layers"][-1]
        raw = last["fbcorr"]["n_filters"] / 256 - abs(last["lpool"]["order"] - 2) / 10
        return min(1.0, max(0.0, (raw + 1) / 2))

    scored = {}
    while True:
        r = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
        if r.status_code == 204:
            break
        trial = r.json()["trial"]
        value = objective(trial["arch"])
        scored[trial["id"]] = value
        r = api.client.post(
            f"/api/v1/trials/{trial['id']}/complete",
            json={"worker_id": w, "value": value},
            headers=api.worker,
        )
        assert r.status_code == 200
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    assert study["state"] == "finished"
    assert sum(study["counts"].values()) == 30
    trials = api.client.get(
        f"/api/v1/studies/{sid}/trials", params={"limit": 100}, headers=api.reader
    ).json()["trials"]
    assert len({t["config_hash"] for t in trials}) == 30
    for t in trials:
        if t["state"] == "COMPLETE":
            assert t["value"] == pytest.approx(scored[t["id"]])
    best = api.client.get(
        f"/api/v1/studies/{sid}/best", params={"k": 1}, headers=api.reader
    ).json()["trials"][0]
    assert best["value"] == pytest.approx(max(scored.values()))


def test_health_of_live_coordinator(live):
    assert httpx.get(f"{live.base_url}/healthz").json()["db"] == "ok"
