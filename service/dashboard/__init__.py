"""The results dashboard served by the coordinator (DESIGN.md sections 1 and 6).

Pages (``routes``): ``/`` studies, ``/studies/{id}``, ``/studies/{id}/trials/{n}``,
``/workers``; their data comes from ``queries`` (one function per chart or table), which
``service.api.results`` also serves as JSON under ``/api/v1``. Static files: ``/static/``
(this package's CSS and JS) and ``/static/plotly.min.js`` (from the plotly package).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .routes import HERE, PageError, TokenAccepted, page_error, router, token_redirect


def install_dashboard(app: FastAPI) -> None:
    """Add the pages, the static files and the HTML error answers to ``app``."""
    app.include_router(router)  # before the mount: it serves /static/plotly.min.js
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(TokenAccepted, token_redirect)
