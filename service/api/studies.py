"""Studies and their trials: /api/v1/studies..."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import re
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.responses import Response
from sqlalchemy import Float, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from protocol.wire import (
    BestOut,
    BlendCreate,
    BlendOut,
    EnqueueTrial,
    StudyCreate,
    StudyList,
    StudyOut,
    StudyPatch,
    TrialOut,
    TrialPage,
)
from search_space import get_preset

from .. import lifecycle
from .. import studies as studies_mod
from ..deps import (
    Admin,
    QueueDep,
    Reader,
    SessionDep,
    StoreDep,
    StudyId,
    TrialNumber,
)
from ..errors import ErrorBody, InvalidInput, NotFound
from ..models import Trial, TrialSource, TrialState
from ..views import study_out, trial_out

ERRORS = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    422: {"model": ErrorBody},
}
router = APIRouter(prefix="/api/v1/studies", tags=["studies"], responses=ERRORS)

# How long study creation waits for its first suggestions before answering.
CREATE_FILL_SECONDS = 2.0
Order = Literal["number", "-number", "value", "-value"]
# Keyset pagination on (value, number): NULL values sort last in both directions.
_NULL_LAST = {"value": 1e308, "-value": -1e308}


def _one(session: Session, study_id: int) -> StudyOut:
    study = studies_mod.get_study(session, study_id)
    return study_out(study, studies_mod.stats(session, [study.id])[study.id])


@router.post("", response_model=StudyOut, status_code=201)
def create_study(
    body: StudyCreate,
    _: Admin,
    store: StoreDep,
    queue: QueueDep,
    session: SessionDep,
    background: BackgroundTasks,
) -> StudyOut:
    """Validate and store a study, then start filling its suggestion queue: for at most
    ``CREATE_FILL_SECONDS`` before answering (a small study's queue is full by then), the
    rest in the background and in the maintenance loop.

    The checks (the dataset's files included, within a time budget) run before the write
    transaction. The study exists once stored: a suggester that fails for its space pauses
    it with the reason in ``error`` (still 201), and a refill that fails otherwise (no
    suggester pool right now) is left to the maintenance loop rather than failing the
    request."""
    checked = studies_mod.check_study(body)
    with store.transaction() as s:
        study_id = studies_mod.create_study(s, body, checked).id
    queue.refill_quietly(study_id, budget_seconds=CREATE_FILL_SECONDS)
    background.add_task(queue.refill_quietly, study_id)
    return _one(session, study_id)


@router.get("", response_model=StudyList)
def list_studies(_: Reader, session: SessionDep) -> StudyList:
    rows = studies_mod.list_studies(session)
    stats = studies_mod.stats(session, [s.id for s in rows])
    return StudyList(studies=[study_out(s, stats[s.id]) for s in rows])


@router.get("/{study_id}", response_model=StudyOut)
def get_study(study_id: StudyId, _: Reader, session: SessionDep) -> StudyOut:
    return _one(session, study_id)


@router.patch("/{study_id}", response_model=StudyOut, responses={409: {"model": ErrorBody}})
def patch_study(
    study_id: StudyId,
    body: StudyPatch,
    _: Admin,
    store: StoreDep,
    queue: QueueDep,
    session: SessionDep,
    background: BackgroundTasks,
) -> StudyOut:
    """Pause (no new claims; running trials finish), resume, or stop (running trials are
    told ``stop`` at their next heartbeat; the top-k are queued for final evaluation)."""
    with store.transaction() as s:
        lifecycle.set_state(store, s, study_id, body.state)
    if body.state == "running":
        background.add_task(queue.refill_quietly, study_id)
    return _one(session, study_id)


_CURSOR_NUMBER_MAX = 2**31 - 1  # trial numbers are 32-bit (TrialNumber)


def _bad_cursor() -> InvalidInput:
    return InvalidInput("after is not a cursor returned by this route", field="after")


def _decode_cursor(after: str, order: str) -> tuple[float, int]:
    """The ``(key, number)`` of a cursor that :func:`_encode_cursor` made for ``order``.

    Anything else (not base64, not JSON, another shape or type, a non-finite or
    out-of-range value, a non-canonical spelling of a real cursor) is a 422 naming
    ``after``: a forged cursor must never reach the database.
    """
    try:
        raw = base64.b64decode(after.encode("ascii"), altchars=b"-_", validate=True)
        decoded = json.loads(raw.decode("utf-8"))
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise _bad_cursor() from None
    if not (isinstance(decoded, list) and len(decoded) == 2):
        raise _bad_cursor()
    key, number = decoded
    if isinstance(key, bool) or not isinstance(key, int | float):
        raise _bad_cursor()
    if isinstance(number, bool) or not isinstance(number, int):
        raise _bad_cursor()
    try:
        key = float(key)
    except OverflowError:
        raise _bad_cursor() from None
    if not math.isfinite(key) or not 0 <= number <= _CURSOR_NUMBER_MAX:
        raise _bad_cursor()
    if not order.endswith("value") and key != number:
        raise _bad_cursor()  # a number-order cursor's key is its number
    issued = {_encode_cursor(key, number)}
    if key.is_integer():  # the spelling of the previous version: [5, 5]
        issued.add(base64.urlsafe_b64encode(json.dumps([int(key), number]).encode()).decode())
    if after not in issued:
        raise _bad_cursor()  # only a spelling this route issues
    return key, number


def _encode_cursor(key: float, number: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([float(key), number]).encode()).decode()


@router.get("/{study_id}/trials", response_model=TrialPage)
def list_trials(
    study_id: StudyId,
    _: Reader,
    session: SessionDep,
    state: TrialState | None = None,
    order: Order = "number",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> TrialPage:
    """A page of trials. ``after`` is the ``next`` cursor of the previous page."""
    studies_mod.get_study(session, study_id)
    desc = order.startswith("-")
    if order.endswith("value"):
        key = func.coalesce(Trial.value, cast(_NULL_LAST[order], Float))
    else:
        key = cast(Trial.number, Float)
    q = select(Trial, key.label("k")).where(Trial.study_id == study_id)
    if state is not None:
        q = q.where(Trial.state == state)
    if after is not None:
        k, n = _decode_cursor(after, order)
        if desc:
            q = q.where(or_(key < k, and_(key == k, Trial.number < n)))
        else:
            q = q.where(or_(key > k, and_(key == k, Trial.number > n)))
    q = q.order_by(
        key.desc() if desc else key.asc(), Trial.number.desc() if desc else Trial.number.asc()
    ).limit(limit + 1)
    rows = session.execute(q).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = _encode_cursor(rows[-1].k, rows[-1].Trial.number) if more and rows else None
    return TrialPage(trials=[trial_out(r.Trial) for r in rows], next=nxt)


def _trial_by_number(session: Session, study_id: int, number: int) -> Trial:
    trial = session.scalars(
        select(Trial).where(Trial.study_id == study_id, Trial.number == number)
    ).first()
    if trial is None:
        raise NotFound(f"study {study_id} has no trial number {number}", field="number")
    return trial


@router.get("/{study_id}/trials/{number}", response_model=TrialOut)
def get_trial(study_id: StudyId, number: TrialNumber, _: Reader, session: SessionDep) -> TrialOut:
    studies_mod.get_study(session, study_id)
    return trial_out(_trial_by_number(session, study_id, number))


@router.post("/{study_id}/trials", response_model=TrialOut, status_code=201)
def enqueue_trial(
    study_id: StudyId, body: EnqueueTrial, _: Admin, queue: QueueDep, session: SessionDep
) -> TrialOut:
    """Queue a user-given configuration (raw ``params`` or a ``preset`` name). It runs
    before suggested trials and joins the history the suggester learns from."""
    study = studies_mod.get_study(session, study_id)
    space = studies_mod.study_space(study)
    if body.preset is not None:
        try:
            raw = space.raw_from_arch(get_preset(body.preset))
        except KeyError as exc:
            raise InvalidInput(str(exc.args[0]), field="preset") from None
        except ValueError as exc:
            raise InvalidInput(str(exc), field="preset") from None
    else:
        raw = body.params or {}
    trial = queue.enqueue_user(study, space, raw)
    return trial_out(trial)


@router.post(
    "/{study_id}/blend",
    response_model=BlendOut,
    status_code=201,
    responses={409: {"model": ErrorBody}},
)
def queue_blend(study_id: StudyId, body: BlendCreate, _: Admin, store: StoreDep) -> BlendOut:
    """Queue a blend of the study's best ``k`` COMPLETE search trials (a finished study is
    ``finishing`` again until it ends; a stopped one stays stopped). 409 (field
    ``state``) for a study still searching or finishing, 409 (field ``k``) for a blend
    already queued; 422 (field ``k``) for more members than the study has, (field
    ``evaluator``) for a train or plugin study."""
    with store.transaction() as s:
        trial = lifecycle.queue_blend(store, s, study_id, body.k, body.weights)
        return _blend_outs(s, [trial])[0]


def blend_outs(session: Session, study_id: int) -> list[BlendOut]:
    """Every blend trial of the study with its members' numbers: COMPLETE ones by value
    (best first), then the others by number."""
    blends = session.scalars(
        select(Trial)
        .where(Trial.study_id == study_id, Trial.source == TrialSource.BLEND.value)
        .order_by(Trial.number)
    )
    outs = _blend_outs(session, list(blends))
    done = sorted(
        (o for o in outs if o.state == TrialState.COMPLETE),
        key=lambda o: (-(o.value or 0.0), o.number),
    )
    return done + [o for o in outs if o.state != TrialState.COMPLETE]


def _blend_outs(session: Session, blends: list[Trial]) -> list[BlendOut]:
    ids = {m for b in blends for m in _member_ids(b)}
    numbers = dict(session.execute(select(Trial.id, Trial.number).where(Trial.id.in_(ids))).all())
    return [
        BlendOut(
            **trial_out(b).model_dump(),
            member_numbers=[numbers[m] for m in _member_ids(b) if m in numbers],
        )
        for b in blends
    ]


def _member_ids(blend: Trial) -> list[int]:
    members = blend.params.get("members") if isinstance(blend.params, dict) else None
    return [m for m in members if isinstance(m, int)] if isinstance(members, list) else []


@router.get("/{study_id}/best", response_model=BestOut)
def best(
    study_id: StudyId, _: Reader, session: SessionDep, k: Annotated[int, Query(ge=1, le=1000)] = 5
) -> BestOut:
    """The k best COMPLETE search trials by search score (highest first), with their
    ``test_value`` once the final evaluation ran; and the study's blends (``blends``),
    each with its validation (``value``) and test score and its members' numbers."""
    studies_mod.get_study(session, study_id)
    rows = session.scalars(lifecycle.top_trials(study_id, k))
    return BestOut(trials=[trial_out(t) for t in rows], blends=blend_outs(session, study_id))


EXPORT_COLUMNS = [
    "number",
    "state",
    "value",
    "test_value",
    "attempt",
    "worker_id",
    "source",
    "config_hash",
    "architecture",
    "reason",
    "created_at",
    "started_at",
    "finished_at",
]
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(value: object) -> object:
    """``value`` safe for a spreadsheet: a string that starts with ``= + - @``, a tab or a
    carriage return gets a leading single quote (the OWASP rule), unless it is a plain
    number such as ``-0.5`` or ``+1e-3``; every other value is written as it is."""
    if (
        isinstance(value, str)
        and value.startswith(_FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def _blend_summary(trial: TrialOut, numbers: dict[int, int]) -> str:
    """A blend's architecture cell: its members by trial number and its weights."""
    members = trial.params.get("members")
    ids = members if isinstance(members, list) else []
    listed = " ".join(f"#{numbers[i]}" if i in numbers else f"id {i}" for i in ids)
    return f"blend of {len(ids)}: {listed} ({trial.params.get('weights', 'uniform')} weights)"


@router.get(
    "/{study_id}/export",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "All trials as CSV"}},
)
def export(study_id: StudyId, _: Reader, session: SessionDep) -> Response:
    """Every trial as CSV: fixed columns, then one ``param:<label>`` column per label. A
    blend's row (source ``blend``) has its test score in ``test_value`` and its members
    in ``architecture`` (``blend of 3: #4 #1 #7 (uniform weights)``)."""
    studies_mod.get_study(session, study_id)
    trials = [
        trial_out(t)
        for t in session.scalars(
            select(Trial).where(Trial.study_id == study_id).order_by(Trial.number)
        )
    ]
    numbers = {t.id: t.number for t in trials}
    labels = sorted({label for t in trials for label in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([csv_cell(c) for c in EXPORT_COLUMNS + [f"param:{label}" for label in labels]])
    for t in trials:
        dumped = t.model_dump(mode="json")
        row = [dumped.get(c) for c in EXPORT_COLUMNS]
        row[EXPORT_COLUMNS.index("architecture")] = (
            _blend_summary(t, numbers) if t.source == TrialSource.BLEND else t.arch_summary
        )
        row += [json.dumps(t.params[label]) if label in t.params else "" for label in labels]
        writer.writerow([csv_cell(cell) for cell in row])
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="study-{study_id}.csv"'},
    )
