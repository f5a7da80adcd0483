"""ASHA promotions exactly once through real HTTP (a uvicorn coordinator on a loopback
port), on a SQLite file and on PostgreSQL: concurrent worker threads reporting while the
coordinator refills the queue, and a coordinator killed with SIGKILL mid-rung and
restarted. Invariants checked on the database afterwards: at most one trial per
configuration and rung, every promotion the rule calls for exists, none it does not."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict

import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from protocol.options import ScheduleOptions
from service.models import Role, Trial, TrialSource, TrialState
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, db_trials, make_token, migrate
from tests.helpers.waiting import wait_finished

pytestmark = pytest.mark.slow


def score(root_id: int, rung: int) -> float:
    """A synthetic objective: the configuration's (its rung-0 trial's) quality, a little
    better at each rung; in [0, 1]."""
    return round(random.Random(root_id).random() * 0.6 + 0.1 * rung, 9)


def check_promotions(rows: list[Trial], schedule: dict) -> dict[int, int]:
    """Assert the rule's invariants on a study's final rows; return trials per rung."""
    eta = schedule["eta"]
    top = len(ScheduleOptions.model_validate(schedule).resources()) - 1
    search = [t for t in rows if t.source in TrialSource.search()]
    seen: dict[tuple[int, int], Trial] = {}
    for t in search:
        key = (t.rung_of_id or t.id, t.rung)
        assert key not in seen, f"configuration {key[0]} has two trials at rung {key[1]}"
        seen[key] = t
    per_rung: dict[int, int] = defaultdict(int)
    for root, rung in seen:
        per_rung[rung] += 1
        assert rung <= top
        if rung > 0:  # promoted from a COMPLETE trial of the rung below
            assert seen[(root, rung - 1)].state == TrialState.COMPLETE
    for rung in range(top):
        done = [t for (_, r), t in seen.items() if r == rung and t.state == TrialState.COMPLETE]
        done.sort(key=lambda t: (-t.value, t.number))
        for t in done[: len(done) // eta]:  # due at the end, whenever it was made
            assert (t.rung_of_id or t.id, rung + 1) in seen, f"trial {t.id} was not promoted"
    return dict(per_rung)


def _worker_thread(url: str, token: str, sid: int, name: str, errors: list[BaseException]) -> None:
    try:
        rng = random.Random(name)
        with Client(url, token, timeout=60) as c:
            wid = c.register_worker(name).id
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                got = c.claim_many(wid, rng.randint(1, 3), [sid])
                if not got:
                    if c.study(sid).state == "finished":
                        return
                    time.sleep(0.05)
                    continue
                for g in got:
                    t = g.trial
                    c.complete(t.id, wid, value=score(t.rung_of_id or t.id, t.rung), metrics={})
            raise TimeoutError(f"{name}: the study did not finish")
    except BaseException as exc:
        errors.append(exc)


SCHEDULE = {"kind": "asha", "resource": "train_per_class", "min": 10, "max": 90, "eta": 3}


def test_concurrent_workers_promote_exactly_once(live, db_url):
    """8 worker threads claim batches and report at once while the coordinator refills
    the queue in the background: every report is accepted (no 5xx from two inserters
    racing for a trial number), and the promotions obey the rule exactly once."""
    token = make_token(db_url, Role.WORKER)
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="asha-race",
            max_trials=60,
            max_parallel=8,
            top_k=2,
            schedule=SCHEDULE,
            **FG11_STUDY,
        ).id
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_worker_thread, args=(live.base_url, token, sid, f"w{k}", errors))
        for k in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = db_trials(db_url, sid)
    per_rung = check_promotions(rows, SCHEDULE)
    assert per_rung[0] == 60  # max_trials counts configurations
    assert per_rung[1] >= 60 // 3 - 3  # infeasible draws aside, about a third went up
    assert per_rung.get(2, 0) >= 1
    assert all(t.attempt == 1 for t in rows)  # nothing was re-run
    finals = [t for t in rows if t.source == TrialSource.FINAL]
    assert len(finals) == 2
    by_id = {t.id: t for t in rows}
    assert max(by_id[f.final_of_id].rung for f in finals) == 2  # the top rung first


def _kill(live) -> None:
    os.kill(live.process.pid, signal.SIGKILL)
    live.process.wait()


def test_promotions_survive_a_coordinator_killed_mid_rung(db_url):
    """One worker holds every trial of a rung; the coordinator is killed -9 after some of
    its reports (and once right after a report whose answer the worker then re-sends) and
    restarted on the same database: the promotions made before the kill are all there,
    a re-sent report promotes nothing twice, and the study ends with each promotion
    exactly once."""
    schedule = {"kind": "asha", "resource": "epochs", "min": 1, "max": 4, "eta": 2}  # 1, 2, 4
    migrate(db_url)
    token = make_token(db_url, Role.WORKER)
    env = {"ARCHSEARCH_LEASE_SECONDS": "120"}
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, env=env)
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            study = {**FG11_STUDY, "evaluator": "train"}
            sid = admin.create_study(
                name="asha-restart",
                max_trials=8,
                max_parallel=8,
                top_k=0,
                schedule=schedule,
                **study,
            ).id
            deadline = time.monotonic() + 60
            while (
                admin.study(sid).counts.get("WAITING", 0)
                + admin.study(sid).counts.get("INFEASIBLE", 0)
                < 8
            ):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        c = Client(live.base_url, token)
        wid = c.register_worker("holder").id
        held = [g.trial for g in c.claim_many(wid, 8, [sid])]
        assert all(t.rung == 0 for t in held) and len(held) >= 4
        for t in held[:3]:
            c.complete(t.id, wid, value=score(t.id, 0), metrics={})
        before = {(t.rung_of_id, t.rung) for t in db_trials(db_url, sid) if t.rung > 0}
        assert len(before) == 1  # 3 results, eta 2: the best of them went up
        c.close()
        _kill(live)
        live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, port=live.port, env=env)
        after = {(t.rung_of_id, t.rung) for t in db_trials(db_url, sid) if t.rung > 0}
        assert after == before  # made in the report's transaction: not lost
        c = Client(live.base_url, token)
        # The answer to the third report "was lost": the worker sends it again.
        again = held[2]
        c.complete(again.id, wid, value=score(again.id, 0), metrics={})
        assert {(t.rung_of_id, t.rung) for t in db_trials(db_url, sid) if t.rung > 0} == before
        for t in held[3:]:
            c.complete(t.id, wid, value=score(t.id, 0), metrics={})
        # Rung 1 now: run one promotion, then kill the coordinator mid-rung.
        got = c.claim_many(wid, 1, [sid])
        assert got and got[0].trial.rung == 1
        t = got[0].trial
        c.complete(t.id, wid, value=score(t.rung_of_id, 1), metrics={})
        mid = sorted((t.rung_of_id, t.rung) for t in db_trials(db_url, sid) if t.rung > 0)
        c.close()
        _kill(live)
        live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, port=live.port, env=env)
        assert sorted((t.rung_of_id, t.rung) for t in db_trials(db_url, sid) if t.rung > 0) == mid
        with Client(live.base_url, token) as c:
            while got := c.claim_many(wid, 2, [sid]):
                for g in got:
                    t = g.trial
                    c.complete(t.id, wid, value=score(t.rung_of_id or t.id, t.rung), metrics={})
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            wait_finished(admin, sid, timeout=60)
    finally:
        stop_coordinator(live)
    rows = db_trials(db_url, sid)
    per_rung = check_promotions(rows, schedule)
    assert per_rung[0] == 8 and per_rung[1] >= 2
    assert all(t.attempt == 1 for t in rows)
