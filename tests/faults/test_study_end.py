"""A study always ends: over real HTTP to a uvicorn coordinator, on SQLite and PostgreSQL.

* the worker that claims the last trial goes silent: the reaper fails the trial, and the
  lifecycle queues the final evaluation in the same transaction (within two lease periods);
* kill -9 of the coordinator right after the last report: after a restart the study
  finishes;
* a study left behind in an inconsistent state (its trials all ended, its state still
  ``running``) is moved on by the restarted coordinator's first maintenance pass.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import delete, update

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from protocol import StudyState, TrialSource, TrialState
from service.db import make_engine, session_factory
from service.models import Role, Study, Trial
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, db_trials, make_token, migrate
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

LEASE = 2.0
FAST_LEASES = {
    "ARCHSEARCH_LEASE_SECONDS": str(LEASE),
    "ARCHSEARCH_MAX_ATTEMPTS": "1",
    "ARCHSEARCH_REAPER_INTERVAL_SECONDS": "0.25",
}


def two_trial_study(admin: Client) -> int:
    study = admin.create_study(name="end", max_trials=2, max_parallel=2, top_k=1, **FG11_STUDY)
    assert study.counts == {"WAITING": 2}, study.counts  # both draws can be built
    return study.id


def test_a_silent_worker_on_the_last_trial_does_not_hang_the_study(db_url):
    migrate(db_url)
    token = make_token(db_url, Role.WORKER)
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, env=FAST_LEASES)
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as w:
            sid = two_trial_study(admin)
            a = w.register_worker("a").id
            b = w.register_worker("b").id
            first = w.claim(a, [sid])
            w.complete(first.trial.id, a, 0.5)
            w.claim(b, [sid])  # ... and b is never heard of again
            silent_since = time.monotonic()
            final = wait_for(lambda: w.claim(a, [sid]), timeout=4 * LEASE, what="the final")
            waited = time.monotonic() - silent_since
            assert final.trial.source == TrialSource.FINAL
            assert final.trial.final_of_id == first.trial.id
            # The lease (2 s) runs out, then the reaper's next pass (every 0.25 s) ends it.
            assert waited <= 2 * LEASE, f"final queued {waited:.1f} s after the silence"
            assert admin.study(sid).state == StudyState.FINISHING
            w.complete(final.trial.id, a, 0.75)
            study = admin.study(sid)
            assert study.state == StudyState.FINISHED
            assert study.counts == {"COMPLETE": 2, "FAILED": 1}
    finally:
        stop_coordinator(live)
    lost = [t for t in db_trials(db_url, sid) if t.state == TrialState.FAILED]
    assert len(lost) == 1 and "lease expired" in (lost[0].reason or "")


def _both_trials_reported_then_kill_9(db_url: str) -> tuple[int, int, str, int]:
    """A coordinator whose two-trial study got both reports, then killed with -9.

    Returns ``(study id, worker id, worker token, port)``."""
    migrate(db_url)
    token = make_token(db_url, Role.WORKER)
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN)
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin, Client(live.base_url, token) as w:
            sid = two_trial_study(admin)
            wid = w.register_worker("w").id
            for value in (0.4, 0.6):
                got = w.claim(wid, [sid])
                w.complete(got.trial.id, wid, value)
    finally:
        os.kill(live.process.pid, signal.SIGKILL)
        live.process.wait()
    return sid, wid, token, live.port


def _final_runs_and_study_finishes(base_url: str, token: str, sid: int, wid: int) -> None:
    with Client(base_url, ADMIN_TOKEN) as admin, Client(base_url, token) as w:
        final = w.claim(wid, [sid])
        assert final is not None and final.trial.is_final
        w.complete(final.trial.id, wid, 0.7)
        assert admin.study(sid).state == StudyState.FINISHED
        assert [t.test_value for t in admin.best(sid, k=2)] == [0.7, None]


def test_kill_9_right_after_the_last_report_then_restart(db_url):
    sid, wid, token, port = _both_trials_reported_then_kill_9(db_url)
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, port=port)
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            assert admin.study(sid).state == StudyState.FINISHING  # moved on with the report
        _final_runs_and_study_finishes(live.base_url, token, sid, wid)
    finally:
        stop_coordinator(live)


def test_restart_reconciles_a_study_left_behind(db_url):
    sid, wid, token, port = _both_trials_reported_then_kill_9(db_url)
    # What a crash between the trial's end and the study's advance would have left:
    # every trial ended, the study still running, no final queued.
    engine = make_engine(db_url)
    with session_factory(engine).begin() as s:
        s.execute(delete(Trial).where(Trial.source == TrialSource.FINAL.value))
        s.execute(update(Study).where(Study.id == sid).values(state=StudyState.RUNNING))
    engine.dispose()
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN, port=port)
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            wait_for(
                lambda: admin.study(sid).state == StudyState.FINISHING,
                timeout=10,
                what="the reconcile pass",
            )
        _final_runs_and_study_finishes(live.base_url, token, sid, wid)
    finally:
        stop_coordinator(live)
