"""How an evaluation can end other than with a score, shared by evaluators and daemon."""

from __future__ import annotations


class Pruned(Exception):
    """The coordinator said ``prune`` (early stopping); ``value`` is the last intermediate."""

    def __init__(self, message: str = "pruned", value: float | None = None) -> None:
        super().__init__(message)
        self.value = value


class Stopped(Exception):
    """The coordinator said ``stop`` (the study was stopped, or the lease is gone)."""


class TimedOut(Exception):
    """The trial ran past its study's ``trial_timeout_seconds``: checked by the daemon's
    tick and by the evaluators between batches and steps; reported FAILED with a one-line
    reason, never a traceback."""
