"""Thin typed HTTP client for the archsearch coordinator (used by the CLI and the worker).

It lives outside ``service`` so that ``workers`` can use it without importing the
coordinator. Every non-2xx answer raises :class:`ApiError` carrying the JSON error body.
"""

from protocol.wire import CompleteReport, FailReport, ReportResult

from .http import MAX_BATCH, ApiError, Client, complete_report, fail_report
from .session import (
    AskedTrial,
    NoTrialAvailable,
    StudySession,
    TrialError,
    TrialLost,
    TrialPruned,
    TrialStopped,
)

__all__ = [
    "MAX_BATCH",
    "ApiError",
    "AskedTrial",
    "Client",
    "CompleteReport",
    "FailReport",
    "NoTrialAvailable",
    "ReportResult",
    "StudySession",
    "TrialError",
    "TrialLost",
    "TrialPruned",
    "TrialStopped",
    "complete_report",
    "fail_report",
]
