"""Fault suite: kill -9 of workers at random moments (the daemons claim batches), of a
worker holding a batch, and of the coordinator. Real processes, real HTTP, a real SQLite
file (and PostgreSQL for the batch holder and the coordinator cases).
The evaluation is the stand-in of tests/workers/fake_worker.py (a trial takes ~0.3 s)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client, complete_report
from service.models import Role, TrialState
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, db_trials, make_token, migrate
from tests.helpers.waiting import wait_finished, wait_for
from tests.workers.fake_worker import spawn

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(base_url: str, token: str, data_dir: Path, sleep: float):
    return spawn(base_url, token, data_dir, sleep, idle_exit=3, output=False)


def test_random_kill_9_of_workers_during_a_100_trial_study(sqlite_url, tmp_path):
    migrate(sqlite_url)
    token = make_token(sqlite_url, Role.WORKER)
    live = start_coordinator(
        sqlite_url,
        admin_token=ADMIN_TOKEN,
        env={
            "ARCHSEARCH_LEASE_SECONDS": "2",
            "ARCHSEARCH_REAPER_INTERVAL_SECONDS": "0.5",
            "ARCHSEARCH_MAX_ATTEMPTS": "50",
        },
    )
    rng = random.Random(1234)
    workers: list[subprocess.Popen] = []
    kills = 0
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            sid = admin.create_study(
                name="chaos", max_trials=100, max_parallel=8, top_k=0, **FG11_STUDY
            ).id
            for i in range(4):
                workers.append(spawn_worker(live.base_url, token, tmp_path / f"w{i}", 0.3))
            deadline = time.monotonic() + 240
            while admin.study(sid).state != "finished":
                assert time.monotonic() < deadline, admin.study(sid).counts
                time.sleep(rng.uniform(0.5, 1.5))
                if kills < 12:
                    victim = rng.randrange(len(workers))
                    workers[victim].send_signal(signal.SIGKILL)
                    workers[victim].wait()
                    kills += 1
                    # a fresh process with a fresh spool (the old one's results are lost
                    # with its disk, as when a node dies): its trial goes back by lease
                    workers[victim] = spawn_worker(
                        live.base_url, token, tmp_path / f"r{kills}", 0.3
                    )
                for i, w in enumerate(workers):  # idle-exit workers are restarted
                    if w.poll() is not None:
                        workers[i] = spawn_worker(live.base_url, token, tmp_path / f"x{i}", 0.3)
            study = admin.study(sid)
    finally:
        for w in workers:
            w.kill()
            w.wait()
        stop_coordinator(live)
    trials = db_trials(sqlite_url, sid)
    assert kills == 12
    assert len(trials) == 100
    assert len({t.number for t in trials}) == 100
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.INFEASIBLE] == 100, states
    assert sum(study.counts.values()) == 100
    # Trials whose worker died were retried: their attempt count shows it.
    assert any(t.attempt > 1 for t in trials)
    assert all(t.value is not None for t in trials if t.state == TrialState.COMPLETE)


def test_kill_9_of_the_coordinator_and_restart(db_url, tmp_path):
    migrate(db_url)
    token = make_token(db_url, Role.WORKER)
    env = {"ARCHSEARCH_LEASE_SECONDS": "30"}
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, env=env)
    workers = []
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            sid = admin.create_study(
                name="restart", max_trials=30, max_parallel=4, top_k=0, **FG11_STUDY
            ).id
        workers = [spawn_worker(live.base_url, token, tmp_path / f"w{i}", 0.4) for i in range(3)]
        time.sleep(3)
        os.kill(live.process.pid, signal.SIGKILL)
        live.process.wait()
        time.sleep(3)  # workers finish trials meanwhile: results go to their spools
        live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, port=live.port, env=env)
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            study = wait_finished(admin, sid, timeout=180)
    finally:
        for w in workers:
            w.kill()
            w.wait()
        stop_coordinator(live)
    trials = db_trials(db_url, sid)
    assert len(trials) == 30 and sum(study.counts.values()) == 30
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.INFEASIBLE] == 30, states
    # Nothing was lost and nothing re-run: no lease expired (30 s), so every trial
    # finished on its first attempt, results spooled during the outage included.
    assert all(t.attempt == 1 for t in trials)


_BATCH_HOLDER = """
import json, sys, time
from client import Client, complete_report
url, token, study = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Client(url, token) as c:
    wid = c.register_worker("holder").id
    ids = [g.trial.id for g in c.claim_many(wid, 8, [study])]
    print(json.dumps({"worker": wid, "trials": ids}), flush=True)
    while True:  # keeps its leases alive until it is killed
        c.heartbeat_many(wid, ids)
        time.sleep(0.3)
"""


def test_kill_9_of_a_batch_holder_loses_only_its_own_leases(db_url):
    """A worker holding a batch of 8 is killed: its 8 trials come back (attempt 2) once
    their leases run out, while another worker's batch, heart-beaten meanwhile, stays
    its own and is reported; then every trial is completed exactly once."""
    migrate(db_url)
    token = make_token(db_url, Role.WORKER)
    lease = 2.0
    live = start_coordinator(
        db_url,
        admin_token=ADMIN_TOKEN,
        env={"ARCHSEARCH_LEASE_SECONDS": str(lease), "ARCHSEARCH_REAPER_INTERVAL_SECONDS": "0.3"},
    )
    holder = None
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as w:
            sid = admin.create_study(
                name="holder", max_trials=16, max_parallel=16, top_k=0, **FG11_STUDY
            ).id
            waiting = wait_for(
                lambda: (
                    (c := admin.study(sid).counts).get("WAITING", 0) + c.get("INFEASIBLE", 0) == 16
                    and c.get("WAITING", 0)
                ),
                timeout=60,
                what="the queue to fill",
            )
            assert waiting >= 12, "fg11 at 200 px: nearly every draw can be built"
            cmd = [sys.executable, "-c", _BATCH_HOLDER, live.base_url, token, str(sid)]
            holder = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert holder.stdout is not None
            held = json.loads(holder.stdout.readline())
            assert len(held["trials"]) == 8
            other = w.register_worker("other").id
            mine = [g.trial.id for g in w.claim_many(other, 4, [sid])]
            assert len(mine) == 4 and not set(mine) & set(held["trials"])
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
            killed_at = time.monotonic()

            def holder_trials_back() -> bool:
                w.heartbeat_many(other, mine)  # the other worker stays alive meanwhile
                rows = {t.id: t for t in admin.trials(sid)}
                return all(rows[t].state == "WAITING" for t in held["trials"])

            wait_for(holder_trials_back, timeout=30, what="the holder's leases to run out")
            assert time.monotonic() - killed_at >= lease * 0.5
            rows = {t.id: t for t in admin.trials(sid)}
            for tid in held["trials"]:
                assert rows[tid].attempt == 2 and rows[tid].worker_id is None
                assert "lease expired" in (rows[tid].reason or "")
            for tid in mine:  # untouched: still the other worker's, first attempt
                assert rows[tid].state == "RUNNING" and rows[tid].worker_id == other
                assert rows[tid].attempt == 1
            results = w.report_many(other, [complete_report(t, 0.5) for t in mine])
            assert [r.status for r in results] == [200] * 4
            # A third worker takes what is left, the holder's trials included.
            third = w.register_worker("third").id
            while got := w.claim_many(third, 16, [sid]):
                results = w.report_many(third, [complete_report(g.trial.id, 0.25) for g in got])
                assert all(r.status == 200 for r in results)
            study = wait_finished(admin, sid, timeout=30)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        stop_coordinator(live)
    trials = db_trials(db_url, sid)
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == waiting, states
    assert {t.id for t in trials if t.attempt == 2} == set(held["trials"])
    by_id = {t.id: t for t in trials}
    assert all(by_id[t].value == 0.5 for t in mine)
    assert all(by_id[t].value == 0.25 for t in held["trials"])
    assert sum(study.counts.values()) == 16
