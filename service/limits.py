"""Plain ASGI middleware that runs before any body is read or parsed: authentication of
API writes, then the request body size limit."""

from __future__ import annotations

import json
from typing import Any

from anyio import to_thread
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .auth import Caller, authorize
from .errors import ArchsearchError, error_response
from .models import Role

# Every write under /api/v1 needs at least the worker role (studies need admin: the
# route's own dependency checks that). Checked here, before the body is read, so that an
# unauthenticated caller gets 401 whatever it sends (garbage, huge), never 413 or 422.
API_PREFIX = "/api/v1/"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Where the caller found here is left for the route's role check (``service.deps``), which
# then need not look the token up again: ``scope["state"][CALLER_KEY]``.
CALLER_KEY = "archsearch_caller"

Scope = dict[str, Any]


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 with the JSON error body when a request body exceeds ``max_bytes``.

    Checks ``Content-Length`` first, and counts streamed chunks for chunked bodies. Before
    that, a write (POST, PUT, PATCH, DELETE) under ``/api/v1/`` must carry a known worker
    (or admin) token: else 401/403 at once, with the body unread. The caller it found is
    left in the request state (:data:`CALLER_KEY`) for the route's role check.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") in WRITE_METHODS and scope.get("path", "").startswith(API_PREFIX):
            refusal = await _authenticate(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send)
                    return
        received = 0
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "too_large",
                    "message": f"request body exceeds {self.max_bytes} bytes",
                    "field": "body",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _authenticate(scope: Scope) -> Any:
    """``None`` when the request's bearer token has at least the worker role, else the
    JSON error response to send (401, 403; 503 when the database is away)."""
    app = scope.get("app")
    state = getattr(app, "state", None)
    settings = getattr(state, "settings", None)
    if settings is None:  # not mounted in the coordinator app: nothing to check against
        return None
    header = None
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None

    def check() -> Caller:
        with state.sessions() as session:
            return authorize(
                session,
                header,
                Role.WORKER,
                admin_token=admin,
                open_reads=settings.open_reads,
                cache=state.token_cache,
            )

    try:
        caller = await to_thread.run_sync(check)
    except ArchsearchError as exc:
        return error_response(exc.status_code, exc.code, exc.message, exc.field)
    except PoolTimeout:
        return error_response(503, "unavailable", "all database connections are busy; retry")
    except OperationalError as exc:
        reason = str(exc.orig or exc).splitlines()[0] if str(exc.orig or exc) else "error"
        return error_response(503, "unavailable", f"database unavailable: {reason}")
    scope.setdefault("state", {})[CALLER_KEY] = caller
    return None
