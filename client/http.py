"""The client itself: one method per route of docs/design.md section 6.

Every method returns the route's wire model from :mod:`protocol` (``TrialOut``,
``ClaimOut``, ...), never a bare dict, so callers use attributes that a type checker sees.

Batches (protocol 3): :meth:`Client.claim_many`, :meth:`Client.report_many`,
:meth:`Client.heartbeat_many` and :meth:`Client.release_many` act on up to
:data:`~protocol.wire.MAX_BATCH` trials of one worker per request. A report item is a
:class:`~protocol.wire.CompleteReport` or :class:`~protocol.wire.FailReport` (build them
with :func:`complete_report` / :func:`fail_report`, or directly).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from protocol.wire import (
    MAX_BATCH,
    BestOut,
    BlendOut,
    ClaimOut,
    ClaimsOut,
    CompleteReport,
    FailKind,
    FailReport,
    HeartbeatOut,
    HeartbeatsOut,
    ParetoOut,
    ReleasesOut,
    ReportResult,
    ReportsOut,
    SpaceList,
    SpaceOut,
    SpaceSummary,
    StudyList,
    StudyOut,
    TrialOut,
    TrialPage,
    WorkerOut,
)

from .session import StudySession

JSON = dict[str, Any]
M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)

# The connection broke with no answer, or in the middle of one. Most often the request
# went out on a keep-alive connection at the moment the server closed it for idleness
# (uvicorn's --keep-alive), a race that no client-side expiry closes: a process that
# stalls (a long GC pause, a starved host) while an answer sits unread comes back to a
# connection the server already counts as idle. A fresh connection then works.
DROPPED_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
__all__ = ["MAX_BATCH", "ApiError", "Client", "complete_report", "fail_report"]


def complete_report(
    trial_id: int,
    value: float,
    metrics: JSON | None = None,
    *,
    dataset_fingerprint: str | None = None,
) -> CompleteReport:
    """A batch report item: trial ``trial_id`` scored ``value``. Raises
    ``pydantic.ValidationError`` for a value the coordinator would refuse (NaN, ...)."""
    return CompleteReport(
        trial_id=trial_id,
        kind="complete",
        value=value,
        metrics=metrics or {},
        dataset_fingerprint=dataset_fingerprint,
    )


def fail_report(
    trial_id: int,
    kind: FailKind,
    reason: str,
    value: float | None = None,
    *,
    dataset_fingerprint: str | None = None,
) -> FailReport:
    """A batch report item: trial ``trial_id`` ended ``kind`` (infeasible | error |
    pruned) for ``reason``. Raises ``pydantic.ValidationError`` like
    :func:`complete_report`."""
    return FailReport(
        trial_id=trial_id,
        kind=kind,
        reason=reason,
        value=value,
        dataset_fingerprint=dataset_fingerprint,
    )


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
    must ride out an outage (the worker) retry those. A request that the coordinator may
    safely see twice (reads, claims, heartbeats, reports, batch releases: see
    :meth:`_request`) is sent once more, at once, on a fresh connection when its
    connection drops (:data:`DROPPED_CONNECTION`); any other surfaces that error.
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
    def _request(
        self, method: str, path: str, *, replay: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send one request; raise :class:`ApiError` for a 4xx/5xx answer.

        ``replay`` (default: for GET and HEAD only) says that the coordinator may see the
        request twice with the outcome of once, even when the first copy was carried out
        and only its answer lost: a claim answers the trials the worker already holds
        first, a repeated report is answered as the stored result, a heartbeat renews
        the same lease (a repeated intermediate value is not appended twice), a batch
        release lists trials no longer held as lost. Such a request is sent a second time
        when the connection drops; a second drop is raised.
        """
        replay = method in ("GET", "HEAD") if replay is None else replay
        try:
            response = self._http.request(method, path, **kwargs)
        except DROPPED_CONNECTION as exc:
            if not replay:
                raise
            log.info("%s %s: connection dropped (%s); sending it again", method, path, exc)
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
        # Parsed and validated in one pass by pydantic (a batch answer is large).
        return model.model_validate_json(self._request(method, path, **kwargs).content)

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

    def study_session(self, study_id: int, **options: Any) -> StudySession:
        """Ask/tell: this script as a worker of study ``study_id`` (see
        :mod:`client.session`; ``options``: ``name``, ``retry_seconds``, ``poll_seconds``).
        ``session.trial()`` claims one trial for a ``with`` block."""
        return StudySession(self, study_id, **options)

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
        return self.best_out(study_id, k).trials

    def best_out(self, study_id: int, k: int = 5) -> BestOut:
        """GET .../best: the k best search trials and the study's blends."""
        path = f"/api/v1/studies/{study_id}/best"
        return self._model(BestOut, "GET", path, params={"k": k})

    def blend(self, study_id: int, k: int, weights: str = "uniform") -> BlendOut:
        """Queue a blend of the best ``k`` of a finished or stopped study (its trial)."""
        body = {"k": k, "weights": weights}
        return self._model(BlendOut, "POST", f"/api/v1/studies/{study_id}/blend", json=body)

    def pareto(self, study_id: int, *, include_dominated: bool = False) -> ParetoOut:
        """GET .../pareto: the Pareto set of validation score against GFLOP per image
        (``include_dominated``: the other COMPLETE configurations too)."""
        path = f"/api/v1/studies/{study_id}/pareto"
        params = {"include_dominated": "true"} if include_dominated else None
        return self._model(ParetoOut, "GET", path, params=params)

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

    def workers_status(self) -> JSON:
        """``GET /api/v1/workers/status``: ``{"db_now", "alive_within_seconds", "workers":
        [...]}``, each worker with ``alive``, ``current`` (its RUNNING trial) and
        ``trials_done`` (the dashboard's schema, so plain JSON here)."""
        return self._json("GET", "/api/v1/workers/status")

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
            "POST", f"/api/v1/workers/{worker_id}/claim", params=params or None, replay=True
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
            replay=True,
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
        return self._model(
            TrialOut, "POST", f"/api/v1/trials/{trial_id}/complete", json=body, replay=True
        )

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
        return self._model(
            TrialOut, "POST", f"/api/v1/trials/{trial_id}/fail", json=body, replay=True
        )

    def release(self, trial_id: int, worker_id: int) -> TrialOut:
        return self._model(
            TrialOut, "POST", f"/api/v1/trials/{trial_id}/release", json={"worker_id": worker_id}
        )

    # -- batches (one request, many trials of one worker) --------------------------------
    def claim_many(
        self,
        worker_id: int,
        max_trials: int,
        study: list[int] | None = None,
        exclude: list[int] | None = None,
    ) -> list[ClaimOut]:
        """Claim up to ``max_trials`` (1..MAX_BATCH) trials, each with its own lease: the
        ones this worker already holds first (leases renewed), then new ones in queue
        order. An empty list when nothing waits. ``study`` / ``exclude``: only / never
        these study ids. Raises :class:`ApiError` (404 unknown worker, 403 another
        token's worker, 422 a bad ``max_trials``)."""
        body: JSON = {"max_trials": max_trials, "study": study or None, "exclude": exclude or None}
        return self._model(
            ClaimsOut, "POST", f"/api/v1/workers/{worker_id}/claims", json=body, replay=True
        ).claims

    def report_many(
        self, worker_id: int, reports: Sequence[CompleteReport | FailReport]
    ) -> list[ReportResult]:
        """Report up to MAX_BATCH results in one request; one :class:`ReportResult` per
        report, in order: ``status`` 200 (``trial`` is the stored trial, also for a repeat)
        or 404 / 409 / 422 (``error`` says why; the other reports are stored all the
        same). Raises :class:`ApiError` only for the request as a whole (unknown or
        another token's worker, a malformed item: 422 naming ``reports.<i>.<field>``)."""
        body = {"reports": [r.model_dump(mode="json") for r in reports]}
        return self._model(
            ReportsOut, "POST", f"/api/v1/workers/{worker_id}/reports", json=body, replay=True
        ).results

    def heartbeat_many(self, worker_id: int, trial_ids: Sequence[int]) -> HeartbeatsOut:
        """Extend the leases of up to MAX_BATCH held trials at once: ``.trials`` (action
        ``continue`` or ``stop`` and the new lease of each trial still held) and ``.lost``
        (ids this worker does not hold: stop working on them)."""
        return self._model(
            HeartbeatsOut,
            "POST",
            f"/api/v1/workers/{worker_id}/heartbeat",
            json={"trial_ids": list(trial_ids)},
            replay=True,
        )

    def release_many(
        self, worker_id: int, trial_ids: Sequence[int], *, unstarted: bool = False
    ) -> ReleasesOut:
        """Give back up to MAX_BATCH held trials at once (``.trials`` released, ``.lost``
        not held). ``unstarted``: the worker never began them, so no attempt is used up."""
        return self._model(
            ReleasesOut,
            "POST",
            f"/api/v1/workers/{worker_id}/releases",
            json={"trial_ids": list(trial_ids), "unstarted": unstarted},
            replay=True,
        )
