"""The client itself: one method per route of docs/design.md section 6.

Every method returns the route's wire model from :mod:`protocol` (``TrialOut``,
``ClaimOut``, ...), never a bare dict, so callers use attributes that a type checker sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from protocol.wire import (
    BestOut,
    ClaimOut,
    HeartbeatOut,
    SpaceList,
    SpaceOut,
    SpaceSummary,
    StudyList,
    StudyOut,
    TrialOut,
    TrialPage,
    WorkerOut,
)

JSON = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """A non-2xx answer. ``status``, ``code``, ``message`` and ``field`` come from the body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status} {code}: {message}{where}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class Client:
    """``Client("http://127.0.0.1:8000", token="...")``. Thread-safe (one httpx.Client).

    Transport errors (coordinator down) surface as ``httpx.TransportError``; callers that
    must ride out an outage (the worker) retry those.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ApiError(
                    response.status_code,
                    err.get("code", "error"),
                    err.get("message", response.text),
                    err.get("field"),
                )
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "http_error", response.text) from None
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._json(method, path, **kwargs))

    # -- health / spaces ----------------------------------------------------------------
    def health(self) -> JSON:
        """``{"status", "db", "version"}``; raises :class:`ApiError` when not ok (503)."""
        return self._json("GET", "/healthz")

    def spaces(self) -> list[SpaceSummary]:
        return self._model(SpaceList, "GET", "/api/v1/spaces").spaces

    def space(self, name: str) -> SpaceOut:
        return self._model(SpaceOut, "GET", f"/api/v1/spaces/{name}")

    # -- studies ----------------------------------------------------------------------
    def create_study(self, **body: Any) -> StudyOut:
        """POST /api/v1/studies with the fields of ``StudyCreate`` (name, dataset, ...)."""
        return self._model(StudyOut, "POST", "/api/v1/studies", json=body)

    def studies(self) -> list[StudyOut]:
        return self._model(StudyList, "GET", "/api/v1/studies").studies

    def study(self, study_id: int) -> StudyOut:
        return self._model(StudyOut, "GET", f"/api/v1/studies/{study_id}")

    def set_study_state(self, study_id: int, state: str) -> StudyOut:
        return self._model(StudyOut, "PATCH", f"/api/v1/studies/{study_id}", json={"state": state})

    def trials_page(
        self,
        study_id: int,
        *,
        state: str | None = None,
        order: str = "number",
        limit: int = 100,
        after: str | None = None,
    ) -> TrialPage:
        params: dict[str, Any] = {"order": order, "limit": limit}
        if state:
            params["state"] = state
        if after:
            params["after"] = after
        return self._model(TrialPage, "GET", f"/api/v1/studies/{study_id}/trials", params=params)

    def trials(
        self,
        study_id: int,
        *,
        state: str | None = None,
        order: str = "number",
        page_size: int = 500,
    ) -> Iterator[TrialOut]:
        """Every trial, following the ``next`` cursors."""
        after = None
        while True:
            page = self.trials_page(
                study_id, state=state, order=order, limit=page_size, after=after
            )
            yield from page.trials
            after = page.next
            if after is None:
                return

    def trial(self, study_id: int, number: int) -> TrialOut:
        return self._model(TrialOut, "GET", f"/api/v1/studies/{study_id}/trials/{number}")

    def enqueue(
        self, study_id: int, *, params: JSON | None = None, preset: str | None = None
    ) -> TrialOut:
        body = {"params": params} if params is not None else {"preset": preset}
        return self._model(TrialOut, "POST", f"/api/v1/studies/{study_id}/trials", json=body)

    def best(self, study_id: int, k: int = 5) -> list[TrialOut]:
        path = f"/api/v1/studies/{study_id}/best"
        return self._model(BestOut, "GET", path, params={"k": k}).trials

    def export_csv(self, study_id: int) -> str:
        return self._request("GET", f"/api/v1/studies/{study_id}/export").text

    # -- workers ----------------------------------------------------------------------
    def register_worker(
        self, name: str, *, host: str | None = None, device: str | None = None
    ) -> WorkerOut:
        body = {"name": name, "host": host, "device": device}
        return self._model(WorkerOut, "POST", "/api/v1/workers", json=body)

    def workers(self) -> list[WorkerOut]:
        return [WorkerOut.model_validate(w) for w in self._json("GET", "/api/v1/workers")]

    def claim(
        self, worker_id: int, studies: list[int] | None = None, exclude: list[int] | None = None
    ) -> ClaimOut | None:
        """The claimed trial with its study brief and lease, or ``None`` when there is no
        work (204)."""
        params: dict[str, Any] = {}
        if studies:
            params["study"] = studies
        if exclude:
            params["exclude"] = exclude
        response = self._request(
            "POST", f"/api/v1/workers/{worker_id}/claim", params=params or None
        )
        return None if response.status_code == 204 else ClaimOut.model_validate(response.json())

    def heartbeat(
        self, trial_id: int, worker_id: int, *, step: int | None = None, value: float | None = None
    ) -> HeartbeatOut:
        return self._model(
            HeartbeatOut,
            "POST",
            f"/api/v1/trials/{trial_id}/heartbeat",
            json={"worker_id": worker_id, "step": step, "value": value},
        )

    def complete(
        self,
        trial_id: int,
        worker_id: int,
        value: float,
        metrics: JSON | None = None,
        *,
        dataset_fingerprint: str | None = None,
    ) -> TrialOut:
        body: JSON = {"worker_id": worker_id, "value": value, "metrics": metrics or {}}
        if dataset_fingerprint is not None:
            body["dataset_fingerprint"] = dataset_fingerprint
        return self._model(TrialOut, "POST", f"/api/v1/trials/{trial_id}/complete", json=body)

    def fail(
        self,
        trial_id: int,
        worker_id: int,
        kind: str,
        reason: str,
        value: float | None = None,
        *,
        dataset_fingerprint: str | None = None,
    ) -> TrialOut:
        body: JSON = {"worker_id": worker_id, "kind": kind, "reason": reason}
        if value is not None:
            body["value"] = value
        if dataset_fingerprint is not None:
            body["dataset_fingerprint"] = dataset_fingerprint
        return self._model(TrialOut, "POST", f"/api/v1/trials/{trial_id}/fail", json=body)

    def release(self, trial_id: int, worker_id: int) -> TrialOut:
        return self._model(
            TrialOut, "POST", f"/api/v1/trials/{trial_id}/release", json={"worker_id": worker_id}
        )
