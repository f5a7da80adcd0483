"""The coordinator's FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from . import __version__
from .config import Settings, get_settings
from .db import check_database, engine_from_settings, session_factory
from .errors import ErrorBody, install_error_handlers


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    db: str
    version: str = __version__


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment).

    The engine is created here and disposed when the app shuts down; the app holds no
    other state, so several coordinator processes can serve one database.
    """
    settings = settings or get_settings()
    engine = engine_from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="archsearch coordinator",
        version=__version__,
        lifespan=lifespan,
        responses={503: {"model": ErrorBody}},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    install_error_handlers(app)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse | Health:
        """``{"status": "ok", "db": "ok"}`` when the database answers, else 503 with a reason."""
        reason = await run_in_threadpool(check_database, engine)
        if reason is None:
            return Health(status="ok", db="ok")
        body = Health(status="unavailable", db=reason)
        return JSONResponse(body.model_dump(), status_code=503)

    return app
