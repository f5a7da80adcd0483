"""The dashboard's HTML pages: /, /studies/{id}, /studies/{id}/trials/{n}, /workers.

Pages are rendered server-side (Jinja2, autoescape on: every user-given string such as a
study name or a failure reason is escaped) from the query functions in
``service.dashboard.study_queries`` and ``service.dashboard.worker_queries``; the charts
are drawn in the browser by plotly.js (served from the installed ``plotly`` package, no
CDN) from the JSON routes in ``service.api.results``, which call the same functions.
Installed on the app by ``service.dashboard.install_dashboard``.

Auth (reader role): a bearer header, or the ``archsearch_token`` cookie, or nothing under
``open_reads``. Opening any page with ``?token=<token>`` checks the token, stores it in
that cookie (HttpOnly, SameSite=Lax, 30 days) and redirects to the same page without it,
so the token does not stay in the address bar or the history; ``/logout`` drops it.
uvicorn's access log would still show that first request line: importing this module
installs ``service.dashboard.redact``'s filter on the ``uvicorn.access`` logger, which
writes ``token=[redacted]`` instead of the value.
A page that may not be shown answers an HTML page with the reason (401/403/404).

The trial page's model section (``model_view``): the layer diagram is rendered with the
page; the first layer's filters (``.../filters.png``) and the feature maps of one image
(``.../features/{stage}.png``) are images the browser fetches after the page, rendered on
the dashboard's own render thread and cached (never on a request thread).

``?partial=1`` answers only the page's live section (what the 5-second refresh loop in
``static/dashboard.js`` swaps in); its ``data-version`` changes when the data does, which
is when the charts are fetched again.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from datetime import datetime
from functools import cache
from pathlib import Path as FilePath
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Cookie, Depends, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import select

from search_space.arch import Architecture

from .. import studies as studies_mod
from ..db import close_quietly
from ..deps import MAX_ID, SessionDep, require
from ..errors import Forbidden, NotFound, Unauthorized
from ..models import Role, Study, Trial
from . import model_view, render_thread, study_queries, worker_queries
from .common import as_utc

HERE = FilePath(__file__).parent
COOKIE = "archsearch_token"
COOKIE_MAX_AGE = 30 * 24 * 3600
REFRESH_SECONDS = 5

T = TypeVar("T")


class PageError(Exception):
    """A page that cannot be shown: rendered as an HTML error page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TokenAccepted(Exception):
    """``?token=`` was valid: answered by a redirect to ``location`` that sets the cookie."""

    def __init__(self, location: str, token: str) -> None:
        super().__init__(location)
        self.location = location
        self.token = token


# -- formatting helpers for the templates -----------------------------------------------
def fmt_score(value: float | None) -> str:
    """A score with 4 significant digits; an en dash for none."""
    return "\u2013" if value is None else f"{value:.4g}"


def fmt_time(value: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC; an en dash for none."""
    value = as_utc(value)
    return "\u2013" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; an en dash for none."""
    if seconds is None:
        return "\u2013"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_gflops(value: float | None) -> str:
    """GFLOP per image with 3 significant digits; an en dash for none."""
    return "\u2013" if value is None else f"{value:.3g}"


def fmt_count(value: int | None) -> str:
    """An integer with thousands separators; an en dash for none."""
    return "\u2013" if value is None else f"{value:,}"


def fmt_per_image(seconds: float | None) -> str:
    """Seconds per image as ``1.23 ms`` (or ``45.6 \u00b5s``, ``1.2 s``); a dash for none."""
    if seconds is None:
        return "\u2013"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} \u00b5s"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        score=fmt_score,
        time=fmt_time,
        duration=fmt_duration,
        gflops=fmt_gflops,
        thousands=fmt_count,
        per_image=fmt_per_image,
    )
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``templates/<name>`` with ``context`` (plus ``root``, the app's mount path)."""
    context.setdefault("refresh_seconds", REFRESH_SECONDS)
    context["root"] = request.scope.get("root_path", "")
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _version(model: Any) -> str:
    return hashlib.sha1(model.model_dump_json().encode()).hexdigest()[:12]


# -- auth -------------------------------------------------------------------------------
_check_reader = require(Role.READER)


def page_reader(
    request: Request,
    token: Annotated[
        str | None,
        Query(
            max_length=512,
            description="A reader (or stronger) token: checked, stored in the "
            "archsearch_token cookie, then removed from the URL by a redirect.",
        ),
    ] = None,
    authorization: Annotated[str | None, Header()] = None,
    archsearch_token: Annotated[str | None, Cookie(include_in_schema=False)] = None,
) -> None:
    """The reader check of the JSON routes, answered as HTML pages (see module doc).

    Raises :class:`TokenAccepted` for a valid ``?token=`` and :class:`PageError` (401 or
    403) for a missing, unknown or too weak token.
    """
    try:
        if token is not None:
            _check_reader(request, authorization=f"Bearer {token}", archsearch_token=None)
            url = request.url.remove_query_params("token")
            raise TokenAccepted(url.path + (f"?{url.query}" if url.query else ""), token)
        _check_reader(request, authorization=authorization, archsearch_token=archsearch_token)
    except (Unauthorized, Forbidden) as exc:
        raise PageError(exc.status_code, exc.message) from None


PageReader = Annotated[None, Depends(page_reader)]


def _or_404(fn: Callable[..., T], *args: Any) -> T:
    if not all(1 <= a <= MAX_ID for a in args if isinstance(a, int)):
        raise PageError(404, "no such page: an id out of range")
    try:
        return fn(*args)
    except NotFound as exc:
        raise PageError(404, exc.message) from None


router = APIRouter(
    tags=["dashboard"],
    default_response_class=HTMLResponse,
    responses={
        401: {"description": "HTML page: how to pass a token"},
        403: {"description": "HTML page: the token's role is too low"},
    },
)
Partial = Annotated[bool, Query(description="Only the live section (the refresh loop).")]


# -- pages -------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def index(
    request: Request, _: PageReader, session: SessionDep, partial: Partial = False
) -> HTMLResponse:
    """Studies: name, state, progress, best score, started, workers busy."""
    data = study_queries.overview(session)
    return render(
        request, "_index_live.html" if partial else "index.html", data=data, version=_version(data)
    )


@router.get(
    "/studies/{study_id}",
    response_class=HTMLResponse,
    responses={404: {"description": "HTML page: no such study"}},
)
def study_page(
    request: Request, study_id: int, _: PageReader, session: SessionDep, partial: Partial = False
) -> HTMLResponse:
    """One study: charts (best so far, scores by state, accuracy against GFLOPs with the
    Pareto front, the rungs of a schedule, parallel coordinates, parameter importance),
    counts by state, leaderboard (cost columns, blends with links to their members),
    failures with reasons."""
    data = _or_404(study_queries.summary, session, study_id)
    return render(
        request, "_study_live.html" if partial else "study.html", s=data, version=_version(data)
    )


@router.get(
    "/studies/{study_id}/trials/{number}",
    response_class=HTMLResponse,
    responses={404: {"description": "HTML page: no such study or trial"}},
)
def trial_page(
    request: Request,
    study_id: int,
    number: int,
    _: PageReader,
    session: SessionDep,
    partial: Partial = False,
) -> HTMLResponse:
    """One trial: parameters, architecture, intermediate values, timings, worker, attempts,
    reason."""
    data = _or_404(study_queries.trial_detail, session, study_id, number)
    if partial:  # the model does not change: only the full page draws it
        return render(request, "_trial_live.html", d=data, t=data.trial, version=_version(data))
    dataset = studies_mod.get_study(session, study_id).dataset  # loaded by trial_detail
    return render(
        request,
        "trial.html",
        d=data,
        t=data.trial,
        version=_version(data),
        # A blend's arch lists its members' architectures: the page shows the members.
        model=None if data.blend else model_view.model_section(data.trial.arch, dataset),
    )


# -- the model's pictures (model_view) ------------------------------------------------------
PNG_HEADERS = {"Cache-Control": "private, max-age=86400"}  # a trial's model never changes


def _trial_model(
    request: Request, study_id: int, number: int
) -> tuple[Architecture, model_view.ImageSource]:
    """The trial's architecture and where its feature maps' image comes from (the study's
    dataset and split options); :class:`PageError` 404 when there is no such trial or it
    has no (readable) architecture. Blocking: run in a thread."""
    if not (1 <= study_id <= MAX_ID and 1 <= number <= MAX_ID):
        raise PageError(404, "no such page: an id out of range")
    session = request.app.state.sessions()
    try:
        study = session.get(Study, study_id)
        arch = session.scalar(
            select(Trial.arch).where(Trial.study_id == study_id, Trial.number == number)
        )
        if study is None or arch is None:
            raise PageError(404, f"study {study_id} has no trial {number} with an architecture")
        dataset = model_view.ImageSource.for_study(
            study.dataset, study.seed, study.evaluator_options
        )
    finally:
        close_quietly(session)
    try:
        return Architecture.from_dict(arch), dataset
    except ValueError as exc:
        raise PageError(404, f"the architecture cannot be read: {exc}") from None


def _refused(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


async def _render(request: Request, key: Any, fn: Callable[[], Any]) -> Any:
    """``fn()`` through the app's :class:`render_thread.Renderer` (cached, on its thread)."""
    renderer: render_thread.Renderer = request.app.state.model_renderer
    return await renderer.get(key, fn)


PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG"},
    404: {"description": "HTML page: no such study or trial, or no architecture"},
    422: {"description": "JSON: the model cannot be drawn (why, in detail)"},
    503: {"description": "JSON: the render queue is full or slow; Retry-After"},
}


@router.get(
    "/studies/{study_id}/trials/{number}/filters.png",
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def trial_filters(request: Request, study_id: int, number: int, _: PageReader) -> Response:
    """Layer 1's filters as a PNG grid, generated from the architecture's seed as the
    workers build them (``model_view.filters_png``). Cached by filter bank."""
    arch, _dataset = await run_in_threadpool(_trial_model, request, study_id, number)
    if not arch.layers:
        return _refused(422, "the architecture has no layer, hence no filters")
    try:
        png = await _render(
            request, model_view.filters_key(arch), lambda: model_view.filters_png(arch)
        )
    except render_thread.RendererBusy as exc:
        return _refused(503, f"busy: {exc}; try again", retry_after=2)
    except TimeoutError:
        return _refused(503, "the render is slow; try again", retry_after=5)
    return Response(png, media_type="image/png", headers=PNG_HEADERS)


@router.get(
    "/studies/{study_id}/trials/{number}/features/{stage}.png",
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def trial_features(
    request: Request,
    study_id: int,
    number: int,
    stage: Annotated[int, Path(ge=0, le=64, description="Index into the diagram's drawn stages.")],
    _: PageReader,
) -> Response:
    """The first maps of one image after the ``stage``-th drawn stage (0: the preprocessed
    input, then L0 lnorm if any, then each layer), computed with the real model on the
    render thread; all stages are rendered and cached together. Models above the
    dashboard's cost caps answer 422 with the reason instead."""
    arch, dataset = await run_in_threadpool(_trial_model, request, study_id, number)
    try:
        refused = model_view.refusal(arch)
    except model_view.InfeasibleArchitecture as exc:
        return _refused(422, f"infeasible: {exc.reason}")
    if refused is not None:
        return _refused(422, refused)
    if stage >= len(model_view.feature_stage_names(arch)):
        raise PageError(404, f"the model has no drawn stage {stage}")
    try:
        pngs = await _render(
            request,
            model_view.features_key(arch, dataset),
            lambda: model_view.render_features(arch, dataset),
        )
    except render_thread.RendererBusy as exc:
        return _refused(503, f"busy: {exc}; try again", retry_after=2)
    except TimeoutError:
        return _refused(503, "the render is slow; try again", retry_after=5)
    except (ValueError, model_view.InfeasibleArchitecture) as exc:
        return _refused(422, f"the model cannot be run: {exc}")
    return Response(pngs[stage], media_type="image/png", headers=PNG_HEADERS)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(
    request: Request, _: PageReader, session: SessionDep, partial: Partial = False
) -> HTMLResponse:
    """Workers: alive or not, device, current trial, last heartbeat, trials done."""
    data = worker_queries.workers_status(session, request.app.state.settings.lease_seconds)
    return render(
        request,
        "_workers_live.html" if partial else "workers.html",
        data=data,
        version=_version(data),
    )


@router.get("/logout", response_class=RedirectResponse, status_code=303)
def logout(request: Request) -> RedirectResponse:
    """Forget the dashboard's token cookie, then go to the studies page."""
    response = RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -- plotly.js from the installed plotly package -------------------------------------------
@cache
def _plotly() -> tuple[bytes, bytes, str]:
    """``(plotly.min.js, its gzip, an ETag)``, read and compressed once per process."""
    import plotly

    path = FilePath(plotly.__file__).parent / "package_data" / "plotly.min.js"
    data = path.read_bytes()
    etag = f'"plotly-{plotly.__version__}-{hashlib.sha1(data).hexdigest()[:12]}"'
    return data, gzip.compress(data, compresslevel=6, mtime=0), etag


@router.get("/static/plotly.min.js", response_class=Response, include_in_schema=False)
def plotly_js(request: Request) -> Response:
    """plotly.js as shipped in the ``plotly`` Python package (works offline), gzip when
    the browser accepts it, cacheable for a day, 304 for a matching If-None-Match."""
    data, gz, etag = _plotly()
    headers = {"ETag": etag, "Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(gz, media_type="text/javascript", headers=headers)
    return Response(data, media_type="text/javascript", headers=headers)


def token_redirect(request: Request, exc: Exception) -> Response:
    """The answer to :class:`TokenAccepted`: 303 to the page, setting the cookie."""
    assert isinstance(exc, TokenAccepted)
    response = RedirectResponse(exc.location, status_code=303)
    response.set_cookie(
        COOKIE,
        exc.token,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


def page_error(request: Request, exc: Exception) -> Response:
    """The answer to :class:`PageError`: an HTML page with the status and the reason."""
    assert isinstance(exc, PageError)
    return render(
        request, "error.html", status_code=exc.status, status=exc.status, message=exc.message
    )
