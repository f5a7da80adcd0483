"""Thin typed HTTP client for the archsearch coordinator (used by the CLI and the worker).

It lives outside ``service`` so that ``workers`` can use it without importing the
coordinator. Every non-2xx answer raises :class:`ApiError` carrying the JSON error body.
"""

from .http import ApiError, Client

__all__ = ["ApiError", "Client"]
