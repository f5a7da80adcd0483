"""A connection that drops with no answer, against a real coordinator over HTTP.

The transport below is real HTTP with one fault: the connection of a chosen request
drops. ``after=True`` drops it once the coordinator has carried the request out (the
answer is lost: the worst case for a repeat), ``after=False`` before it is sent. The
client sends a request that is safe to repeat (claims, heartbeats, reports, reads) once
more; the database must then look as if it had been sent once. Anything else surfaces
the error, and the coordinator saw it once.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from client import Client, complete_report, fail_report
from service.db import make_engine, session_factory
from service.models import Role, TrialState, Worker
from tests.helpers.coordinator import db_trials, make_token, queued_study

pytestmark = pytest.mark.slow


class DropOnce(httpx.HTTPTransport):
    """Drop the connection of the first ``times`` requests whose path ends with one of
    ``suffixes`` (each suffix counted on its own)."""

    def __init__(self, *suffixes: str, after: bool = True, times: int = 1) -> None:
        super().__init__()
        self.left = dict.fromkeys(suffixes, times)
        self.after = after
        self.dropped: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        suffix = next((k for k in self.left if request.url.path.endswith(k)), None)
        if suffix is None or self.left[suffix] == 0:
            return super().handle_request(request)
        self.left[suffix] -= 1
        self.dropped.append(request.url.path)
        if self.after:
            response = super().handle_request(request)
            response.read()
            response.close()
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=request
        )


def _workers_named(url: str, name: str) -> int:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return s.scalar(select(func.count()).select_from(Worker).where(Worker.name == name))
    finally:
        engine.dispose()


def test_lost_answers_to_claims_heartbeats_and_reports_are_asked_again(live, db_url):
    token = make_token(db_url, Role.WORKER)
    sid, claimable = queued_study(live.base_url, "drops", 12)
    assert claimable >= 8
    drops = DropOnce("/claims", "/claim", "/heartbeat", "/reports", "/complete", "/fail")
    with Client(live.base_url, token, transport=drops) as worker:
        wid = worker.register_worker("dropper").id

        got = worker.claim_many(wid, 3, [sid])
        one = worker.claim(wid, [sid])
        # The repeated claim answered the trials the first copy had claimed: the worker
        # holds exactly what it was told, nothing was claimed behind its back.
        assert one is not None and one.trial.id == got[0].trial.id
        running = [r for r in db_trials(db_url, sid) if r.state == TrialState.RUNNING]
        assert sorted(r.id for r in running) == sorted(g.trial.id for g in got)
        assert {(r.worker_id, r.attempt) for r in running} == {(wid, 1)}

        first, second, third = (g.trial.id for g in got)
        beat = worker.heartbeat(first, wid, step=1, value=0.25)
        assert beat.action == "continue"
        worker.complete(first, wid, 0.5, {"by": "dropper"})
        worker.fail(second, wid, "infeasible", "too big for this test")
        results = worker.report_many(wid, [complete_report(third, 0.75, {"by": "dropper"})])
        assert [r.status for r in results] == [200]
        assert sorted(drops.dropped) == sorted(
            [
                f"/api/v1/workers/{wid}/claims",
                f"/api/v1/workers/{wid}/claim",
                f"/api/v1/trials/{first}/heartbeat",
                f"/api/v1/trials/{first}/complete",
                f"/api/v1/trials/{second}/fail",
                f"/api/v1/workers/{wid}/reports",
            ]
        )

    rows = {r.id: r for r in db_trials(db_url, sid)}
    assert rows[first].intermediate == [[1, 0.25]], "a repeated heartbeat recorded twice"
    assert (rows[first].state, rows[first].value) == (TrialState.COMPLETE, 0.5)
    assert rows[second].state == TrialState.INFEASIBLE
    assert (rows[third].state, rows[third].value) == (TrialState.COMPLETE, 0.75)
    assert all(r.attempt == 1 for r in rows.values())
    assert sum(r.state == TrialState.RUNNING for r in rows.values()) == 0


def test_a_batch_of_fail_reports_and_releases_sent_twice_lands_once(live, db_url):
    token = make_token(db_url, Role.WORKER)
    sid, _ = queued_study(live.base_url, "drops", 8)
    drops = DropOnce("/reports", "/releases")
    with Client(live.base_url, token, transport=drops) as worker:
        wid = worker.register_worker("dropper").id
        a, b, c = (g.trial.id for g in worker.claim_many(wid, 3, [sid]))
        results = worker.report_many(wid, [fail_report(a, "infeasible", "too big")])
        assert [r.status for r in results] == [200]
        released = worker.release_many(wid, [b, c], unstarted=True)
        # The first copy released both; the second finds them no longer held.
        assert (released.trials, released.lost) == ([], [b, c])
        assert len(drops.dropped) == 2
    rows = {r.id: r for r in db_trials(db_url, sid)}
    assert rows[a].state == TrialState.INFEASIBLE
    assert [(rows[t].state, rows[t].attempt) for t in (b, c)] == [(TrialState.WAITING, 1)] * 2


def test_requests_that_are_not_safe_to_repeat_are_not_sent_again(live, db_url):
    token = make_token(db_url, Role.WORKER)
    drops = DropOnce("/api/v1/workers")
    with (
        Client(live.base_url, token, transport=drops) as worker,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        worker.register_worker("once")
    # The coordinator registered it (the answer was lost), and only once.
    assert _workers_named(db_url, "once") == 1


def test_a_second_drop_surfaces_and_a_drop_before_sending_is_sent_again(live, db_url):
    token = make_token(db_url, Role.WORKER)
    sid, _ = queued_study(live.base_url, "drops", 4)
    twice = DropOnce("/claims", times=2)
    with Client(live.base_url, token, transport=twice) as worker:
        wid = worker.register_worker("twice").id
        with pytest.raises(httpx.RemoteProtocolError):
            worker.claim_many(wid, 2, [sid])
        # Both copies reached the coordinator: the worker holds 2 trials, not 4, and
        # its next claim is told which.
        held = sorted(g.trial.id for g in worker.claim_many(wid, 2, [sid]))
    running = [r.id for r in db_trials(db_url, sid) if r.state == TrialState.RUNNING]
    assert sorted(running) == held and len(held) == 2

    before = DropOnce(f"/studies/{sid}", after=False)
    with Client(live.base_url, token, transport=before) as reader:
        assert reader.study(sid).id == sid
        assert before.dropped == [f"/api/v1/studies/{sid}"]
