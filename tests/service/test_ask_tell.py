"""Ask/tell (issue 16, part 2): a script as a worker of one study, against a real
coordinator over HTTP: claim under a lease, heartbeats, prune, release on an exception or
Ctrl-C, never completing a lost trial (409 -> TrialLost), riding out a coordinator
restart, and the README example run as it stands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import (
    ApiError,
    Client,
    NoTrialAvailable,
    TrialError,
    TrialLost,
    TrialStopped,
)
from client import session as session_module
from service.models import Role
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, make_token, migrate
from tests.helpers.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
# Short leases (the reaper acts within seconds); every release uses up an attempt: 5.
LEASE = {
    "ARCHSEARCH_LEASE_SECONDS": "3",
    "ARCHSEARCH_REAPER_INTERVAL_SECONDS": "0.5",
    "ARCHSEARCH_MAX_ATTEMPTS": "5",
}


@pytest.fixture
def coordinator(sqlite_url):
    migrate(sqlite_url)
    live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN, env=LEASE)
    yield live, sqlite_url, make_token(sqlite_url, Role.WORKER)
    stop_coordinator(live)


def _study(admin: Client, *, evaluator: str = "screen", max_trials: int = 2) -> int:
    return admin.create_study(
        name="ask-tell",
        evaluator=evaluator,
        max_trials=max_trials,
        max_parallel=1,
        top_k=0,
        **FG11_STUDY,
    ).id


def _state(admin: Client, sid: int, number: int) -> str:
    return admin.trial(sid, number).state.value


def test_claim_report_complete_with_heartbeats_keeping_the_lease(coordinator):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as me:
        sid = _study(admin, max_trials=1)
        session = me.study_session(sid, name="my-script")
        trial = session.trial(wait=10)
        with trial:
            assert trial.arch is not None and trial.study.id == sid and not trial.is_final
            assert _state(admin, sid, trial.number) == "RUNNING"
            time.sleep(4.5)  # past the 3 s lease: only the heartbeat thread keeps it
            trial.report(0, 0.5)
            out = trial.complete(0.75, {"how": "script"})
        assert out.state == "COMPLETE" and out.value == 0.75
        stored = admin.trial(sid, trial.number)
        assert stored.intermediate == [[0, 0.5]] and stored.metrics["how"] == "script"
        assert stored.attempt == 1  # never reaped
        with pytest.raises(NoTrialAvailable):
            session.trial()
        assert list(session.trials()) == []
        assert [w.name for w in admin.workers()] == ["my-script"]


def test_an_exception_or_ctrl_c_gives_the_trial_back(coordinator):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as me:
        sid = _study(admin, max_trials=1)
        session = me.study_session(sid)
        for error in (ValueError("my bug"), KeyboardInterrupt()):
            with pytest.raises(type(error)), session.trial(wait=10) as trial:
                raise error
            assert _state(admin, sid, trial.number) == "WAITING"
        # A block that ends without a result gives the trial back and says so.
        with pytest.raises(TrialError, match="without complete"), session.trial(wait=10):
            pass
        assert _state(admin, sid, trial.number) == "WAITING"


def test_a_lost_trial_is_never_completed(coordinator):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as me:
        sid = _study(admin, max_trials=1)
        trial = me.study_session(sid).trial(wait=10)
        trial._stop.set()  # the heartbeat thread stops: the script hangs, say
        wait_for(
            lambda: _state(admin, sid, trial.number) == "WAITING",
            timeout=20,
            what="the reaper to take the trial back",
        )
        with pytest.raises(TrialLost, match=f"trial {trial.id}") as info, trial:
            trial.complete(0.9)
        assert isinstance(info.value.__cause__, ApiError) and info.value.__cause__.status == 409
        assert admin.trial(sid, trial.number).value is None
        # The heartbeat thread notices a loss by itself too.
        other = me.study_session(sid).trial(wait=10)
        me.release_many(other._session.worker_id, [other.id])
        wait_for(lambda: other.lost, timeout=10, what="the heartbeat to see the loss")
        with pytest.raises(TrialLost), other:
            other.report(1, 0.5)


def test_report_raises_pruned_and_the_trial_is_recorded_pruned(coordinator):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as me:
        sid = _study(admin, evaluator="train", max_trials=7)
        session = me.study_session(sid)
        states = []
        for i, trial in enumerate(session.trials()):
            with trial:
                trial.report(1, 0.1 if i == 5 else 0.9)  # 5 good peers, then a poor one
                trial.complete(0.9)
            states.append(admin.trial(sid, trial.number).state.value)
        assert states == ["COMPLETE"] * 5 + ["PRUNED", "COMPLETE"], states
        pruned = next(t for t in admin.trials(sid) if t.state == "PRUNED")
        assert pruned.value == 0.1 and "pruned" in pruned.reason


def test_a_stopped_study_stops_the_trial(coordinator):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as me:
        sid = _study(admin, max_trials=3)
        with pytest.raises(TrialStopped), me.study_session(sid).trial(wait=10) as trial:
            admin.set_study_state(sid, "stopped")
            trial.report(0, 0.5)
        assert _state(admin, sid, trial.number) != "COMPLETE"


def test_the_script_rides_out_a_coordinator_restart(sqlite_url, monkeypatch):
    monkeypatch.setattr(session_module, "BACKOFF_CAP", 1.0)
    migrate(sqlite_url)
    env = {"ARCHSEARCH_LEASE_SECONDS": "60"}
    live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN, env=env)
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            sid = _study(admin, max_trials=1)
        me = Client(live.base_url, ADMIN_TOKEN, timeout=5)
        trial = me.study_session(sid, retry_seconds=90).trial(wait=10)
        stop_coordinator(live)
        with pytest.raises(httpx.TransportError):
            me.health()
        done: list[object] = []
        thread = threading.Thread(target=lambda: done.append(trial.complete(0.6)))
        with trial:
            thread.start()
            time.sleep(1.5)  # complete() is retrying against a dead port
            assert not done
            live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN, env=env, port=live.port)
            thread.join(timeout=60)
        assert done and done[0].state == "COMPLETE"  # type: ignore[attr-defined]
        me.close()
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            assert admin.trial(sid, trial.number).value == 0.6
    finally:
        stop_coordinator(live)


def test_the_readme_example_runs_as_it_stands(coordinator, tmp_path):
    live, _, _ = coordinator
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- ask-tell-example -->\n```python\n(.*?)```", readme, re.S)
    assert match, "the README's ask/tell example is missing"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    env = {**os.environ, "ARCHSEARCH_COORDINATOR": live.base_url, "ARCHSEARCH_TOKEN": ADMIN_TOKEN}
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    best = float(run.stdout.strip().splitlines()[-1])
    assert 0.5 < best <= 1.0  # a linear head on digits features: well above chance (0.1)
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        study = admin.studies()[-1]
        trials = list(admin.trials(study.id))
    assert len(trials) == 3 and all(t.state == "COMPLETE" for t in trials)
    assert all(len(t.intermediate) == 3 for t in trials)
