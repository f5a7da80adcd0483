"""Study creation answers in bounded time, whatever the queue depth asked for, and one
deep queue does not hold up other studies (a live uvicorn coordinator, both backends)."""

from __future__ import annotations

import time

import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from service.suggestion_queue import QUEUE_CAP
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, migrate

pytestmark = pytest.mark.slow


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def test_a_4096_deep_queue_answers_fast_and_others_still_get_suggestions(db_url):
    migrate(db_url)
    live = start_coordinator(db_url, admin_token=ADMIN_TOKEN)
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            big, took_big = timed(
                lambda: admin.create_study(
                    name="deep", max_trials=100_000, max_parallel=4096, top_k=0, **FG11_STUDY
                )
            )
            small, took_small = timed(
                lambda: admin.create_study(
                    name="small", max_trials=4, max_parallel=4, top_k=0, **FG11_STUDY
                )
            )
            assert took_big < 20, f"creating the deep study took {took_big:.1f} s"
            assert took_small < 20, f"creating the small study took {took_small:.1f} s"
            assert small.counts.get("WAITING", 0) + small.counts.get("INFEASIBLE", 0) == 4
            time.sleep(2)
            queued = admin.study(big.id).counts.get("WAITING", 0)
            assert 0 < queued <= QUEUE_CAP
    finally:
        stop_coordinator(live)
