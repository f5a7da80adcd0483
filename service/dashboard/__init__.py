"""The results dashboard served by the coordinator (docs/design.md sections 1 and 6).

Pages (``routes``): ``/`` studies, ``/studies/{id}``, ``/studies/{id}/trials/{n}``,
``/workers``, and the trial page's model pictures (``model_view``: layer diagram, filters,
feature maps). Their data comes from the query modules (one function per chart or table),
which ``service.api.results`` also serves as JSON under ``/api/v1``:

- ``study_queries``: the studies overview, a study's summary, history and parallel
  coordinates, one trial's detail;
- ``importance``: random-forest parameter importance (JSON only; the page's chart);
- ``worker_queries``: the workers' status;
- ``columns``: the COMPLETE trials column by column and the result cache (shared by
  parallel and importance); ``common``: filters and helpers the others share;
- ``schemas``: the response models;
- ``model_view``: the trial page's layer diagram, filters and feature maps, drawn on
  ``render_thread``'s thread and cache.

Static files: ``/static/`` (this package's CSS and JS) and ``/static/plotly.min.js``
(from the plotly package). ``install_dashboard`` is called by ``service.app``. Nothing
here imports ``service.api``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .render_thread import Renderer
from .routes import HERE, PageError, TokenAccepted, page_error, router, token_redirect


def install_dashboard(app: FastAPI) -> None:
    """Add the pages, the static files and the HTML error answers to ``app``."""
    app.state.model_renderer = Renderer()  # the model pictures' render thread and cache
    app.include_router(router)  # before the mount: it serves /static/plotly.min.js
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(TokenAccepted, token_redirect)
