"""Thin typed HTTP client for the archsearch coordinator (used by the CLI and the worker).

It lives outside ``service`` so that ``workers`` can use it without importing the
coordinator. Every non-2xx answer raises :class:`ApiError` carrying the JSON error body.
"""

from protocol.wire import CompleteReport, FailReport, ReportResult

from .http import MAX_BATCH, ApiError, Client, complete_report, fail_report

__all__ = [
    "MAX_BATCH",
    "ApiError",
    "Client",
    "CompleteReport",
    "FailReport",
    "ReportResult",
    "complete_report",
    "fail_report",
]
