"""FastAPI dependencies: the session, the store, and role checks as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Cookie, Depends, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field
from sqlalchemy.orm import Session

from .auth import RANK, Caller, authorize
from .config import Settings
from .db import close_quietly
from .errors import Forbidden
from .limits import CALLER_KEY
from .models import Role
from .suggestion_queue import SuggestionQueue
from .trial_store import TrialStore


# The getters below are ``async``: FastAPI runs a plain ``def`` dependency in its thread
# pool, a hop that costs more than the attribute read itself on every request.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session for reads. Closing it never fails the request: by then the answer may be
    on its way, and a connection the database dropped is simply discarded by the pool."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        close_quietly(session)


async def get_store(request: Request) -> TrialStore:
    return request.app.state.store


async def get_queue(request: Request) -> SuggestionQueue:
    return request.app.state.queue


# Ids are 64-bit in the database: anything outside that range cannot exist (404 rather
# than an overflow deep in the driver).
MAX_ID = 2**63 - 1
StudyId = Annotated[int, Path(ge=1, le=MAX_ID, description="Study id")]
TrialId = Annotated[int, Path(ge=1, le=MAX_ID, description="Trial id")]
WorkerId = Annotated[int, Path(ge=1, le=MAX_ID, description="Worker id")]
TrialNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="Trial number in its study")]
IdList = Annotated[list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None, Query()]

SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[TrialStore, Depends(get_store)]
QueueDep = Annotated[SuggestionQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def require(role: Role) -> Callable[..., Caller]:
    """A dependency (a plain function, also called directly by the dashboard) that checks
    the bearer token for ``role``.

    It uses its own short session so that the request's connection is not held while
    the route waits for another one (two connections per request exhaust the pool).
    For the reader role (GET routes only, so no CSRF surface) a browser may present the
    token as the ``archsearch_token`` cookie instead (set by the dashboard's ``?token=``);
    the header wins when both are sent, and the cookie is ignored under ``open_reads``.
    Answers the :class:`~service.auth.Caller` (role and token id: worker routes bind
    workers to it). Raises :class:`~service.errors.Unauthorized` (401) and
    :class:`~service.errors.Forbidden` (403).
    """

    def check(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        archsearch_token: Annotated[str | None, Cookie(include_in_schema=False)] = None,
    ) -> Caller:
        settings: Settings = request.app.state.settings
        cookie = archsearch_token if role == Role.READER and not settings.open_reads else None
        if not authorization and cookie:
            authorization = f"Bearer {cookie}"
        admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        with request.app.state.sessions() as session:
            return authorize(
                session,
                authorization,
                role,
                admin_token=admin,
                open_reads=settings.open_reads,
                cache=request.app.state.token_cache,
            )

    return check


def require_write(role: Role) -> Callable[..., Awaitable[Caller]]:
    """:func:`require` for routes that write (POST, PATCH under /api/v1).

    Their token was checked before the body was read (:class:`service.limits.BodySizeLimit`),
    which left the caller in the request state: then this is the role check alone, on
    the event loop, with neither a second token lookup nor a hop to the thread pool (a
    worker's claims and reports are the hot path). Without it (the app mounted without
    that middleware) it is :func:`require`, in the thread pool.
    """
    full = require(role)

    async def check(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        known: Caller | None = request.scope.get("state", {}).get(CALLER_KEY)
        if known is None or known.role is None:
            return await run_in_threadpool(full, request, authorization, None)
        if RANK[known.role] < RANK[role]:
            raise Forbidden(
                f"this route needs the {role.value} role; the token is {known.role.value}",
                field="Authorization",
            )
        return known

    return check


Reader = Annotated[Caller, Depends(require(Role.READER))]
WorkerRole = Annotated[Caller, Depends(require_write(Role.WORKER))]
Admin = Annotated[Caller, Depends(require_write(Role.ADMIN))]
