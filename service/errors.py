"""The few domain exceptions, and the one place that maps them to HTTP answers.

Every error body is ``{"error": {"code": ..., "message": ..., "field": ...}}``;
request validation errors list every broken field with its rule.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException


class ArchsearchError(Exception):
    """Base of the domain errors. ``field`` names the offending input, when there is one."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(ArchsearchError):
    status_code = 422
    code = "invalid"


class NotFound(ArchsearchError):
    status_code = 404
    code = "not_found"


class Conflict(ArchsearchError):
    """The request contradicts the stored state (lost lease, different second report)."""

    status_code = 409
    code = "conflict"


class Unauthorized(ArchsearchError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ArchsearchError):
    status_code = 403
    code = "forbidden"


class Unavailable(ArchsearchError):
    """The database cannot be reached right now; retry later."""

    status_code = 503
    code = "unavailable"


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """The JSON body of every 4xx/5xx answer (the OpenAPI error model)."""

    error: ErrorDetail


def error_response(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> JSONResponse:
    detail = ErrorDetail(code=code, message=message, field=field, **extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        ErrorBody(error=detail).model_dump(exclude_none=True), status_code=status, headers=headers
    )


# Ids are 64-bit signed integers in the database.
MAX_ID = 2**63 - 1


def _out_of_range(request: Request) -> tuple[int, str, str]:
    """(status, field, message) for an integer the database cannot hold: a path id
    cannot exist (404), a query or body number is invalid (422)."""
    for name, value in request.path_params.items():
        if isinstance(value, int) and not -MAX_ID - 1 <= value <= MAX_ID:
            return 404, name, f"no such {name}: {value} is beyond 64-bit ids"
    for name, value in request.query_params.multi_items():
        text = value.strip().lstrip("+-")
        if text.isascii() and text.isdigit() and int(text) > MAX_ID:
            return 422, name, f"{name}: {value} is beyond the 64-bit range"
    return 422, "body", "a value does not fit the database column it is stored in"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ArchsearchError)
    async def _domain(_req: Request, exc: ArchsearchError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p != "body") or "body",
                "rule": e["type"],
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return error_response(
            422, "invalid", f"{first['field']}: {first['message']}", first["field"], errors=errors
        )

    @app.exception_handler(PoolTimeout)
    async def _pool_busy(_req: Request, exc: PoolTimeout) -> JSONResponse:
        return error_response(503, "unavailable", "all database connections are busy; retry")

    @app.exception_handler(OperationalError)
    async def _db_down(_req: Request, exc: OperationalError) -> JSONResponse:
        # A lost or refused connection: the client may retry; nothing was half-written
        # because every write is one transaction.
        reason = str(exc.orig or exc).splitlines()[0] if str(exc.orig or exc) else "error"
        return error_response(503, "unavailable", f"database unavailable: {reason}")

    # Ids beyond 64 bits on routes that take a plain ``int`` reach the driver: SQLite
    # raises OverflowError, PostgreSQL "bigint out of range". A JSON 404/422 naming the
    # field, never a 500.
    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _number_out_of_range(req: Request, exc: Exception) -> JSONResponse:
        status, field, message = _out_of_range(req)
        return error_response(status, "not_found" if status == 404 else "invalid", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"http_{exc.status_code}", str(exc.detail))
