"""Bounded waits for tests that drive real processes: poll, and fail with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from client import Client
from protocol import StudyOut

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 30, what: str = "condition", step: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test
    after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(step)


def wait_finished(admin: Client, sid: int, timeout: float) -> StudyOut:
    """The study once it is ``finished``; fails with its counts after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (study := admin.study(sid)).state != "finished":
        assert time.monotonic() < deadline, f"study {sid} not finished: {study.counts}"
        time.sleep(0.5)
    return study
