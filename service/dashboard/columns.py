"""The COMPLETE search trials of a study, column by column, and the result cache.

Holds :class:`Columns` and :func:`complete_columns` (one query over the COMPLETE search
trials, each configuration once at its highest COMPLETE rung as
``service.lifecycle.top_trials`` takes them, turned into one float column per varying
parameter label), and
:class:`ResultCache`, keyed by the number of COMPLETE search trials (:func:`cache_key`,
:func:`n_complete`), which caches both the columns (:data:`COLUMNS_CACHE`) and the
importance fits of ``importance``.

Called by ``study_queries.parallel`` and ``importance.importance``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..lifecycle import top_trials
from ..models import Study, Trial, TrialState
from .common import IS_SEARCH, option_text, space_of

CacheKey = tuple[str, int, int]


def cache_key(session: Session, study_id: int, n_complete: int) -> CacheKey:
    """``(database URL, study id, COMPLETE count)``: apps on other databases in the same
    process (tests, benchmarks) never see each other's entries."""
    url = session.get_bind().url.render_as_string(hide_password=True)
    return (url, study_id, n_complete)


class ResultCache:
    """Results keyed by ``(database, study id, number of COMPLETE search trials)``, the
    least recently used dropped beyond ``size``. A COMPLETE trial never changes, so the
    count identifies the data a result was computed from. Thread-safe; ``compute_lock``
    serialises the (CPU-bound) computations so that a burst of requests computes once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[CacheKey, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.compute_lock = threading.Lock()

    def get(self, key: CacheKey) -> Any | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            return hit

    def put(self, key: CacheKey, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


@dataclass(frozen=True)
class Columns:
    """The COMPLETE search trials column by column (what parallel and importance use).

    ``columns[label]`` holds one float (or ``None`` where the label is inactive) per
    trial, for the labels in ``labels`` only: those that take more than one value."""

    numbers: list[int]
    values: list[float]
    labels: list[str]
    columns: dict[str, list[float | None]]
    options: dict[str, list[str] | None]


COLUMNS_CACHE = ResultCache(size=8)
MAX_ROWS = 1_000_000  # no real bound: every configuration is a column entry


def n_complete(session: Session, study_id: int) -> int:
    """How many COMPLETE search trials with a score ``study_id`` has (one count query)."""
    return (
        session.scalar(
            select(func.count()).where(
                Trial.study_id == study_id,
                IS_SEARCH,
                Trial.state == TrialState.COMPLETE,
                Trial.value.is_not(None),
            )
        )
        or 0
    )


def complete_columns(session: Session, study: Study, cache: ResultCache | None = None) -> Columns:
    """The :class:`Columns` of ``study``, cached per number of COMPLETE trials."""
    cache = cache or COLUMNS_CACHE
    key = cache_key(session, study.id, n_complete(session, study.id))
    if (hit := cache.get(key)) is not None:
        return hit
    with cache.compute_lock:
        if (hit := cache.get(key)) is not None:
            return hit
        result = _columns(session, study)
        # Keyed by the count read before: trials completing in between make the entry
        # newer than its key, never older (the count only grows, so that key is not asked
        # for again once it is stale). The rows read are configurations, fewer than the
        # count when promotions completed: they cannot be the key.
        cache.put(key, result)
        return result


def _columns(session: Session, study: Study) -> Columns:
    # Each configuration once, at its highest COMPLETE rung (top_trials' rule): with an
    # ASHA schedule a promoted configuration has a COMPLETE row per rung it reached.
    rows = session.execute(
        top_trials(study.id, MAX_ROWS)
        .with_only_columns(Trial.number, Trial.value, Trial.params)
        .where(Trial.value.is_not(None))
        .order_by(None)
        .order_by(Trial.number)
    ).all()
    n = len(rows)
    raw: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        for label, value in (row.params or {}).items():
            column = raw.get(label)
            if column is None:
                column = raw[label] = [None] * n
            column[i] = value
    space = space_of(study)
    varying = {label for label, column in raw.items() if _varies(column)}
    labels = [label for label in (space.labels if space else ()) if label in varying]
    labels += sorted(varying - set(labels))
    options: dict[str, list[str] | None] = {}
    for label in labels:
        info = space.params.get(label) if space else None
        options[label] = [option_text(o) for o in info.options] if info and info.options else None
    return Columns(
        numbers=[r.number for r in rows],
        values=[r.value for r in rows],
        labels=labels,
        columns={label: _numeric(raw[label]) for label in labels},
        options=options,
    )


def _varies(column: list[Any]) -> bool:
    try:
        return len(set(column)) > 1
    except TypeError:  # lists or dicts as values (a custom space): compare their text
        return len({repr(v) for v in column}) > 1


def _numeric(values: list[Any]) -> list[float | None]:
    """Raw values as finite floats (bool -> 0/1; other types -> their rank among the
    distinct values, by text); ``None`` (and a non-finite number) -> ``None``."""
    others = sorted({repr(v) for v in values if v is not None and not isinstance(v, int | float)})
    rank = {text: i for i, text in enumerate(others)}
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, int | float):  # bool is an int
            f = float(v)
            out.append(f if math.isfinite(f) else None)
        else:
            out.append(float(rank[repr(v)]))
    return out
