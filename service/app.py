"""The coordinator's FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Literal

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from . import __version__, lifecycle
from .api import results, spaces, studies, trials, workers
from .auth import TokenCache
from .config import Settings, get_settings
from .dashboard import install_dashboard
from .dashboard.redact import install_access_log_redaction
from .db import check_database, engine_from_settings, session_factory
from .deps import Reader
from .errors import ErrorBody, install_error_handlers
from .limits import BodySizeLimit
from .metrics import Metrics
from .suggester_process import watch_parent
from .suggestion_queue import SuggestionQueue
from .trial_store import TrialStore

log = logging.getLogger("archsearch.coordinator")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    db: str
    version: str = __version__
    # "ok", or why the suggester cannot run (its process pool cannot be created)
    suggester: str = "ok"


def maintenance_pass(store: TrialStore, queue: SuggestionQueue) -> None:
    """One pass: reap expired leases, move on studies left behind, top up queues.

    Each step is idempotent, and any coordinator process may run it at any time.
    """
    reaped = store.reap_expired()
    if reaped:
        log.info("reaped %d trial(s) with expired leases", reaped)
    moved = lifecycle.reconcile(store)
    if moved:
        log.info("reconciled %d stud(ies) whose trials had all finished", moved)
    queue.refill_all()


async def _maintenance_loop(app: FastAPI, interval: float) -> None:
    """:func:`maintenance_pass` at start-up, then every ``interval`` seconds, forever.
    Errors are logged, not fatal: the database may be away for a while and the loop must
    outlive that."""
    while True:
        try:
            await run_in_threadpool(maintenance_pass, app.state.store, app.state.queue)
        except Exception:
            log.exception("maintenance pass failed; retrying in %.1f s", interval)
        await asyncio.sleep(interval)


def create_app(settings: Settings | None = None, *, maintenance: bool = True) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment).

    The app keeps no state that the database does not have (the engine, per-process
    metrics and an in-process refill coalescer only), so several coordinator processes
    can serve one PostgreSQL. ``maintenance=False`` turns off the background reaper loop
    (tests drive it by hand).
    """
    settings = settings or get_settings()
    engine = engine_from_settings(settings)
    sessions = session_factory(engine)

    def make_pool() -> Executor:
        # the suggester's pool; also the replacement of one that broke (process killed)
        return ProcessPoolExecutor(
            settings.suggest_processes, mp_context=get_context("spawn"), initializer=watch_parent
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if maintenance:
            task = asyncio.create_task(_maintenance_loop(app, settings.reaper_interval_seconds))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            app.state.queue.close()
            renderer = getattr(app.state, "model_renderer", None)  # the dashboard's, if any
            if renderer is not None:
                renderer.close()
            engine.dispose()

    app = FastAPI(
        title="archsearch coordinator",
        version=__version__,
        description="Architecture search for Pinto & Cox style convnets. All errors are "
        'JSON bodies `{"error": {"code", "message", "field"}}`.',
        lifespan=lifespan,
        responses={503: {"model": ErrorBody}},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.store = TrialStore(
        sessions, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
    )
    app.state.queue = SuggestionQueue(
        app.state.store, executor_factory=make_pool if settings.suggest_processes else None
    )
    app.state.metrics = Metrics(sessions)
    app.state.token_cache = TokenCache()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for module in (spaces, studies, workers, trials, results):
        app.include_router(module.router)
    install_dashboard(app)
    # The dashboard is the one place that takes a token in a URL: keep it out of the
    # access log (idempotent: several apps in one process install one filter).
    install_access_log_redaction()

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse | Health:
        """``{"status": "ok", "db": "ok", "suggester": "ok"}`` when the database answers
        and the suggester can run (a broken suggester pool is replaced here), else 503
        with the reason in ``db`` or ``suggester``."""
        reason = await run_in_threadpool(check_database, engine)
        suggester = await run_in_threadpool(app.state.queue.suggester_health)
        if reason is None and suggester is None:
            return Health(status="ok", db="ok")
        body = Health(status="unavailable", db=reason or "ok", suggester=suggester or "ok")
        return JSONResponse(body.model_dump(), status_code=503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}},
            401: {"model": ErrorBody},
            403: {"model": ErrorBody},
        },
    )
    async def metrics(_: Reader) -> Response:
        """Prometheus text format: trials by state, claims, claim latency histogram."""
        data = await run_in_threadpool(generate_latest, app.state.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return app
