"""Keep dashboard tokens out of uvicorn's access log.

The dashboard accepts a token once as ``?token=`` (then keeps it in an HttpOnly cookie and
redirects to the URL without it), but uvicorn logs that first request line, query string
included. :func:`install_access_log_redaction` adds a filter to the ``uvicorn.access``
logger that replaces the value of every ``token`` query parameter (however its name is
percent-encoded) with ``[redacted]``. A filter on the logger survives uvicorn's own
``logging.config.dictConfig`` (which replaces handlers, not logger filters).
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
SECRET_PARAMS = frozenset({"token"})


def redact_query(text: str) -> str:
    """``text`` (a path with its query, or a whole log line) with the values of the
    ``token`` query parameters replaced by ``[redacted]``."""
    if "?" not in text:
        return text
    head, _, query = text.partition("?")
    # The query ends at the first whitespace or quote (a log line goes on after it).
    end = len(query)
    for stop in (" ", '"', "\t", "\n"):
        at = query.find(stop)
        if at != -1:
            end = min(end, at)
    query, tail = query[:end], query[end:]
    pieces = []
    for piece in query.split("&"):
        name, eq, _value = piece.partition("=")
        if unquote_plus(name).strip().lower() in SECRET_PARAMS:
            piece = f"{name}={REDACTED}" if eq else piece
        pieces.append(piece)
    return f"{head}?{'&'.join(pieces)}{redact_query(tail)}"


class RedactTokens(logging.Filter):
    """Rewrites each access-log record so that no ``token`` query value is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact_query(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def install_access_log_redaction(logger_name: str = ACCESS_LOGGER) -> None:
    """Add :class:`RedactTokens` to ``logger_name`` (once; calling again is harmless)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
