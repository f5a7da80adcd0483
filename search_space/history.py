"""A study's history, encoded once as numpy arrays and kept up to date incrementally.

A suggester reads the history on every call.  Normalizing thousands of raw points (Python
dicts) per call costs more than the suggestion itself, so :class:`EncodedHistory` does it
once per trial: parameters never change once a trial exists, only its state and value
do.  The service keeps one per study and brings it up to date with the few rows that
changed since the last round (:meth:`EncodedHistory.sync`); a cold rebuild
(:meth:`EncodedHistory.from_history`) gives the very same arrays, so a cached and a
rebuilt history give the same suggestions.

Rows are keyed by an integer trial id and kept in ascending id order, which must be the
creation order: TPE's linear forgetting down-weights the oldest trials by this order.

The API: ``EncodedHistory(space)`` is empty; ``EncodedHistory.from_history(space, items)``
holds a list of ``HistoryItem``s under ids ``0 .. len - 1``.  A row is
``(trial_id, raw | None, state, value)``; ``raw`` is read only for an id not known yet.
``update(rows)`` adds and changes the rows given and leaves the others alone;
``sync(rows)`` makes the history exactly ``rows`` (a known id missing from them is
dropped: a trial that left the search history).  ``missing(ids)`` and ``known_ids()``
tell a caller whose parameters it still has to send.

Contract:

* ``X[i, j]`` is the value of label ``labels[j]`` in row ``i``: the option INDEX for a
  choice, the value for a numeric label (randint included), NaN when the label is
  inactive in that point.
* ``states[i]`` is the index in :data:`STATES` of the row's state, ``values[i]`` its
  score (NaN for None).
* ``keys[i]`` is the row's de-duplication key: the bytes of a canonical form of the row,
  equal for two rows exactly when ``Space.point_key`` of their normalized points is
  (equal architectures).  :meth:`EncodedHistory.point` gives a row's normalized point
  back, exactly as ``Space.normalize`` returned it.
* Raw points are normalized column by column with numpy (a per-point ``Space.normalize``
  costs more than a whole TPE suggestion at 10,000 trials); a value the vectorised checks
  cannot vouch for sends its point through ``Space.normalize`` itself, so the result is
  always exactly ``Space.normalize``'s.
* Rows whose point is not in the space (``SpaceError`` from ``Space.normalize``, e.g. a
  point of an older space version) are skipped with a logged warning, as the suggesters
  always did; their ids still count as known (:meth:`missing` does not ask for them again).
* Building from a list at once and building it in any number of :meth:`update` /
  :meth:`sync` steps that end at the same rows give identical arrays.

Not thread-safe: one caller at a time (the service holds a lock per study).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from protocol.states import TrialState

from .space import Space, SpaceError
from .space_params import ParamInfo

log = logging.getLogger(__name__)

STATES: tuple[str, ...] = ("WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED", "INFEASIBLE")
STATE_CODE: dict[str, int] = {name: code for code, name in enumerate(STATES)}
PENDING_CODES: tuple[int, ...] = tuple(STATE_CODE[s.value] for s in TrialState.pending())
SCORED_CODES: tuple[int, ...] = tuple(STATE_CODE[s.value] for s in TrialState.scored())
FAILED_CODE = STATE_CODE["FAILED"]

# One history row as a caller sends it: (trial id, raw point or None, state, value).
Row = tuple[int, Mapping[str, Any] | None, str, float | None]


class _Item(Protocol):
    """What :meth:`EncodedHistory.from_history` reads (``suggest.HistoryItem``)."""

    @property
    def raw(self) -> Mapping[str, Any]: ...
    @property
    def state(self) -> str: ...
    @property
    def value(self) -> float | None: ...


# -- the space's labels, as columns ------------------------------------------------------
@dataclass(frozen=True)
class LabelCodec:
    """How one label is encoded and when it is active.

    Attributes:
        label: the hyperopt label.
        column: its column in ``X`` (the position in ``Space.labels``).
        info: the compiled parameter.
        parent: the column of the choice this label is nested in, or -1 (always active).
        option: the option of ``parent`` that activates it (-1 when ``parent`` is -1).
        n_categories: choice: the number of options; randint: ``high - low``; else 0.
        offset: randint: ``low`` (value = offset + category); else 0.
    """

    label: str
    column: int
    info: ParamInfo
    parent: int
    option: int
    n_categories: int
    offset: int

    @property
    def type(self) -> str:
        return self.info.type

    @property
    def is_categorical(self) -> bool:
        """Choices and randints: TPE models both as categoricals (as hyperopt does)."""
        return self.n_categories > 0


def _nested(template: Any) -> list[ParamInfo]:
    """The parameters directly inside one choice option (not those nested deeper)."""
    if isinstance(template, ParamInfo):
        return [template]
    if isinstance(template, dict):
        return [p for value in template.values() for p in _nested(value)]
    if isinstance(template, list | tuple):
        return [p for value in template for p in _nested(value)]
    return []


def space_codecs(space: Space) -> tuple[LabelCodec, ...]:
    """One :class:`LabelCodec` per label, in ``Space.labels`` order, in which every choice
    comes before the labels nested in its options (document order is a pre-order walk).
    """
    column = {label: j for j, label in enumerate(space.labels)}
    parent: dict[str, tuple[int, int]] = {}
    for label, info in space.params.items():
        for i, option in enumerate(info.options):
            for child in _nested(option):
                parent[child.label] = (column[label], i)
    out = []
    for label, info in space.params.items():
        p, option = parent.get(label, (-1, -1))
        assert p < column[label], "a choice precedes the labels nested in it"
        if info.options:
            n_cat, offset = len(info.options), 0
        elif info.type == "randint":
            n_cat, offset = info.spec.high - info.spec.low, info.spec.low  # type: ignore[union-attr]
        else:
            n_cat, offset = 0, 0
        out.append(LabelCodec(label, column[label], info, p, option, n_cat, offset))
    return tuple(out)


def history_losses(states: np.ndarray, values: np.ndarray) -> np.ndarray:
    """TPE's loss per row, following the state table of ``search_space.suggest``.

    ``-value`` for COMPLETE / PRUNED with a finite value; ``+inf`` for pending rows (what
    hyperopt gives a running trial); the worst score, (largest such loss) + 1, for
    INFEASIBLE rows and scored rows without a finite value.  FAILED rows get NaN: they are
    not part of the search history (callers drop them first).
    """
    scored = np.isin(states, SCORED_CODES) & np.isfinite(values)
    losses = np.where(scored, -values, np.nan)
    worst = (float(np.max(losses[scored])) if scored.any() else 0.0) + 1.0
    losses[~scored] = worst
    losses[np.isin(states, PENDING_CODES)] = np.inf
    losses[states == FAILED_CODE] = np.nan
    return losses


@dataclass(frozen=True)
class _Layout:
    """What encoding needs to know about a space (derived once per Space object)."""

    codecs: tuple[LabelCodec, ...]
    label_set: frozenset[str]
    column: dict[str, int]
    # point_key's view of a choice: its option's key (duplicate constants are equal), as
    # the index of the first option with an equal key; taken from point_key itself
    option_class: dict[int, np.ndarray]
    # integer fields that are not choices: point_key rounds them
    int_columns: list[int]


_LAYOUTS: dict[int, tuple[weakref.ref[Space], _Layout]] = {}
_LAYOUTS_LOCK = threading.Lock()


def _layout(space: Space) -> _Layout:
    """The space's :class:`_Layout`, cached for as long as the Space object lives (a
    Space is immutable; histories of one study are rebuilt often)."""
    key = id(space)
    entry = _LAYOUTS.get(key)
    if entry is not None and entry[0]() is space:
        return entry[1]
    codecs = space_codecs(space)
    option_class: dict[int, np.ndarray] = {}
    for codec in codecs:
        if codec.info.options:
            okeys = [space.point_key({codec.label: i}) for i in range(codec.n_categories)]
            option_class[codec.column] = np.asarray(
                [okeys.index(k) for k in okeys], dtype=np.float64
            )
    layout = _Layout(
        codecs=codecs,
        label_set=frozenset(space.labels),
        column={label: j for j, label in enumerate(space.labels)},
        option_class=option_class,
        int_columns=[c.column for c in codecs if c.info.kind == "int" and not c.info.options],
    )

    def forget(_: object, key: int = key) -> None:
        with _LAYOUTS_LOCK:
            _LAYOUTS.pop(key, None)

    with _LAYOUTS_LOCK:
        _LAYOUTS[key] = (weakref.ref(space, forget), layout)
    return layout


# -- the fast encoder -------------------------------------------------------------------
_EXACT_INT = 2.0**53  # ints beyond this do not survive the trip through float64


def _column_checks(codec: LabelCodec, values: np.ndarray) -> np.ndarray:
    """Which ``values`` (floats of ``int`` / ``float`` inputs, already finite) are surely
    accepted by ``Space.normalize`` unchanged (as ``int(v)`` / ``float(v)``).  Stricter
    than ``normalize`` where that is simpler: a value failing here is not rejected, it is
    sent to ``normalize`` to decide."""
    spec: Any = codec.info.spec
    kind = codec.type
    if codec.is_categorical:
        low = codec.offset
        return (values >= low) & (values < low + codec.n_categories) & (np.abs(values) < _EXACT_INT)
    if kind in ("uniform", "loguniform"):
        return (values >= spec.low) & (values <= spec.high)
    if kind in ("quniform", "qloguniform"):
        k = values / spec.q
        k_round = np.round(k)
        k_low, k_high = codec.info.q_bounds
        # half of normalize's tolerance: what passes here passes there
        near = np.abs(k - k_round) <= 0.5e-6 * np.maximum(1.0, np.abs(k))
        return near & (k_round >= k_low) & (k_round <= k_high)
    if kind == "lognormal":
        return values > 0
    return np.ones(len(values), dtype=bool)  # normal: any finite value


# -- the history -------------------------------------------------------------------------
class EncodedHistory:
    """A study's trials as numpy arrays, in ascending trial id order.

    Update it with :meth:`update` (some rows changed or were added) or :meth:`sync` (here
    is the whole current history).  Read it through the attributes below; treat them as
    read-only (they are replaced, not modified in place, when rows are added or dropped).

    Attributes:
        space: the study's space.
        labels: ``space.labels``: the columns of ``X``.
        codecs: per label, how it is encoded and when it is active.
        ids: int64 (n,): trial ids, ascending.
        X: float64 (n, len(labels)): see the module docstring.
        states: int8 (n,): index into :data:`STATES`.
        values: float64 (n,): the score, NaN for None.
        keys: per row, the de-duplication key (:meth:`key_of` of its point).
    """

    def __init__(self, space: Space) -> None:
        self.space = space
        layout = _layout(space)
        self.labels: tuple[str, ...] = space.labels
        self.codecs: tuple[LabelCodec, ...] = layout.codecs
        self._label_set = layout.label_set
        self._column = layout.column
        self._option_class = layout.option_class
        self._int_columns = layout.int_columns
        self.ids = np.zeros(0, dtype=np.int64)
        self.X = np.zeros((0, len(self.labels)), dtype=np.float64)
        self.states = np.zeros(0, dtype=np.int8)
        self.values = np.zeros(0, dtype=np.float64)
        self.keys: list[bytes] = []
        self._row: dict[int, int] = {}  # trial id -> row
        self._foreign: set[int] = set()  # ids whose point is not in the space (skipped)
        self._key_count: dict[bytes, int] = {}  # non-FAILED rows per key
        self._grid: list[int | None] = []  # Space.grid_index per row, computed lazily

    @classmethod
    def from_history(cls, space: Space, history: Iterable[_Item]) -> EncodedHistory:
        """The history of a list, oldest first (``HistoryItem``s): ids ``0 .. len - 1``."""
        encoded = cls(space)
        encoded.update(
            [(tid, item.raw, item.state, item.value) for tid, item in enumerate(history)]
        )
        return encoded

    # -- reading ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, trial_id: object) -> bool:
        return trial_id in self._row

    def known_ids(self) -> frozenset[int]:
        """Every id whose parameters were received (skipped foreign points included)."""
        return frozenset(self._row) | frozenset(self._foreign)

    def missing(self, ids: Iterable[int]) -> list[int]:
        """The ids of ``ids`` whose parameters this history has not received yet, in the
        order given: fetch the parameters of these only."""
        return [
            int(tid) for tid in ids if int(tid) not in self._row and int(tid) not in self._foreign
        ]

    def column(self, label: str) -> int:
        return self._column[label]

    def point(self, i: int) -> dict[str, Any]:
        """Row ``i``'s normalized point (exactly what ``Space.normalize`` returned)."""
        return self.decode(self.X[i])

    def decode(self, row: np.ndarray) -> dict[str, Any]:
        """An X row as a normalized point: active labels in document order, option
        indices and randints as ``int``, the rest as ``float``."""
        out: dict[str, Any] = {}
        for codec, value in zip(self.codecs, row.tolist(), strict=True):
            if value == value:  # not NaN: active
                out[codec.label] = int(value) if codec.is_categorical else value
        return out

    def encode(self, point: Mapping[str, Any]) -> np.ndarray:
        """A NORMALIZED point as an X row."""
        row = np.full(len(self.labels), np.nan)
        column = self._column
        for label, value in point.items():
            row[column[label]] = value
        return row

    def _keys(self, X: np.ndarray) -> list[bytes]:
        """Per row, the bytes of its canonical form: equal exactly when
        ``Space.point_key`` is equal (a choice as its option's key class, an integer
        field rounded, -0.0 as 0.0, NaN for inactive)."""
        if X.shape[1] == 0:
            return [b""] * X.shape[0]  # no free parameter: the space has one point
        canon = X + 0.0
        for col, classes in self._option_class.items():
            values = canon[:, col]
            active = ~np.isnan(values)
            values[active] = classes[values[active].astype(np.int64)]
        if self._int_columns:
            canon[:, self._int_columns] = np.round(canon[:, self._int_columns]) + 0.0
        canon = np.ascontiguousarray(canon)
        return canon.view(np.dtype((np.void, canon.shape[1] * 8))).ravel().tolist()

    def key_of(self, point: Mapping[str, Any]) -> bytes:
        """The de-duplication key of a NORMALIZED point: equal keys exactly when
        ``Space.point_key`` gives equal keys (equal architectures)."""
        return self._keys(self.encode(point)[None, :])[0]

    def is_taken(self, key: bytes) -> bool:
        """True when a row that is not FAILED has the key ``key``."""
        return self._key_count.get(key, 0) > 0

    @property
    def n_finished(self) -> int:
        """Rows in a finished state other than FAILED (COMPLETE, PRUNED, INFEASIBLE)."""
        searched = (self.states != FAILED_CODE) & ~np.isin(self.states, PENDING_CODES)
        return int(np.count_nonzero(searched))

    def search_rows(self) -> np.ndarray:
        """Indices of the rows that are part of the search history (not FAILED)."""
        return np.flatnonzero(self.states != FAILED_CODE)

    def grid_indices(self) -> list[int | None]:
        """``Space.grid_index`` per row (the space must be discrete), computed once per
        row and kept: parameters never change."""
        for i in range(len(self._grid)):
            if self._grid[i] is None:
                self._grid[i] = self.space.grid_index(self.point(i))
        return self._grid

    # -- writing ----------------------------------------------------------------------
    def update(self, rows: Iterable[Row]) -> None:
        """Add new trials and change the state / value of known ones.

        Args:
            rows: ``(trial_id, raw, state, value)``.  ``raw`` is needed only for an id
                not known yet; for a known id it is ignored (parameters never change).
                Ids not mentioned keep their state and value.  When an id appears twice,
                the last row wins.

        Raises:
            KeyError: ``raw`` is None for an unknown id.
            ValueError: an unknown state.
            Nothing is changed when it raises.
        """
        self._apply(rows, complete=False)

    def sync(self, rows: Iterable[Row]) -> None:
        """Make the history exactly ``rows``: as :meth:`update`, and every known id that
        is not in ``rows`` is dropped (a trial that left the search history, e.g. turned
        into a final evaluation, or was deleted)."""
        self._apply(rows, complete=True)

    def _apply(self, rows: Iterable[Row], complete: bool) -> None:
        new: dict[int, tuple[Any, int, float]] = {}
        changed: dict[int, tuple[int, float]] = {}
        mentioned: set[int] = set()
        known, foreign = self._row, self._foreign
        for tid, raw, state, value in rows:
            tid = int(tid)
            code = STATE_CODE.get(state)  # type: ignore[arg-type]
            if code is None:
                raise ValueError(f"state must be one of {STATES}, got {state!r}")
            val = math.nan if value is None else float(value)
            mentioned.add(tid)
            if tid in known:
                changed[tid] = (code, val)
            elif tid in new:
                new[tid] = (new[tid][0], code, val)
            elif tid in foreign:
                continue
            elif raw is None:
                raise KeyError(f"trial {tid} is not known and its parameters were not given")
            else:
                new[tid] = (raw, code, val)
        # -- nothing raised: apply
        if changed:
            self._change(changed)
        if complete:
            self._foreign &= mentioned
            self._drop(mentioned)
        if new:
            self._append(new)

    def _count(self, key: bytes, delta: int) -> None:
        count = self._key_count.get(key, 0) + delta
        if count:
            self._key_count[key] = count
        else:
            self._key_count.pop(key, None)

    def _change(self, changed: Mapping[int, tuple[int, float]]) -> None:
        n = len(changed)
        rows = np.fromiter((self._row[tid] for tid in changed), dtype=np.int64, count=n)
        codes = np.fromiter((c for c, _ in changed.values()), dtype=np.int8, count=n)
        vals = np.fromiter((v for _, v in changed.values()), dtype=np.float64, count=n)
        old_failed = self.states[rows] == FAILED_CODE
        new_failed = codes == FAILED_CODE
        for i in np.flatnonzero(old_failed != new_failed):  # rare: a failure or a retry
            self._count(self.keys[rows[i]], 1 if old_failed[i] else -1)
        self.states[rows] = codes
        self.values[rows] = vals

    def _drop(self, keep_ids: set[int]) -> None:
        keep = np.fromiter((tid in keep_ids for tid in self.ids.tolist()), bool, len(self.ids))
        if keep.all():
            return
        for i in np.flatnonzero(~keep):
            if self.states[i] != FAILED_CODE:
                self._count(self.keys[i], -1)
        self._select(np.flatnonzero(keep))

    def _select(self, order: np.ndarray) -> None:
        """Keep the rows ``order`` (indices), in that order."""
        self.ids = self.ids[order]
        self.X = self.X[order]
        self.states = self.states[order]
        self.values = self.values[order]
        index = order.tolist()
        self.keys = [self.keys[i] for i in index]
        self._grid = [self._grid[i] for i in index]
        self._row = {tid: i for i, tid in enumerate(self.ids.tolist())}

    def _encode_raws(self, raws: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """X rows of raw points, as ``Space.normalize`` would make them, vectorised per
        label; a row the vectorised checks cannot vouch for goes through ``normalize``
        itself.  Returns ``(X, ok)``: ``ok`` False where the point is not in the space."""
        n, labels = len(raws), self._label_set
        X = np.full((n, len(self.labels)), np.nan)
        odd = np.fromiter((not (isinstance(r, dict) and r.keys() <= labels) for r in raws), bool, n)
        dicts = [{} if o else r for r, o in zip(raws, odd.tolist(), strict=True)]
        for codec in self.codecs:
            if codec.parent < 0:
                rows = np.flatnonzero(~odd)
            else:
                rows = np.flatnonzero((X[:, codec.parent] == codec.option) & ~odd)
            if not len(rows):
                continue
            label = codec.label
            given = [dicts[i].get(label) for i in rows.tolist()]
            allowed = (int,) if codec.is_categorical else (int, float)
            typed = np.fromiter((type(v) in allowed for v in given), bool, len(given))
            if not typed.all():
                given = [v if t else 0 for v, t in zip(given, typed.tolist(), strict=True)]
            try:
                values = np.asarray(given, dtype=np.float64)
            except OverflowError:  # an int too large for a float: normalize decides
                odd[rows] = True
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                ok = typed & np.isfinite(values) & _column_checks(codec, values)
            X[rows[ok], codec.column] = values[ok]
            odd[rows[~ok]] = True
        ok_rows = np.ones(n, dtype=bool)
        for i in np.flatnonzero(odd).tolist():
            X[i] = np.nan
            try:
                X[i] = self.encode(self.space.normalize(raws[i]))
            except SpaceError as exc:
                # a point of another space version cannot be observed; a study's own
                # history never has one, so this is logged rather than fatal
                log.warning("history point ignored, not in space %r: %s", self.space.name, exc)
                ok_rows[i] = False
        return X, ok_rows

    def _append(self, new: Mapping[int, tuple[Any, int, float]]) -> None:
        ids = sorted(new)
        X, ok = self._encode_raws([new[t][0] for t in ids])
        if not ok.all():
            self._foreign.update(t for t, good in zip(ids, ok.tolist(), strict=True) if not good)
            ids = [t for t, good in zip(ids, ok.tolist(), strict=True) if good]
            X = X[ok]
        if not ids:
            return
        n_old, n_new = len(self.ids), len(ids)
        states = np.fromiter((new[t][1] for t in ids), dtype=np.int8, count=n_new)
        values = np.fromiter((new[t][2] for t in ids), dtype=np.float64, count=n_new)
        keys = self._keys(X)
        for key, code in zip(keys, states.tolist(), strict=True):
            if code != FAILED_CODE:
                self._count(key, 1)
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        self.X = np.concatenate([self.X, X])
        self.states = np.concatenate([self.states, states])
        self.values = np.concatenate([self.values, values])
        self.keys += keys
        self._grid += [None] * n_new
        if n_old and ids[0] < self.ids[n_old - 1]:
            # an id older than a known one: restore ascending id order (TPE's age order)
            self._select(np.argsort(self.ids, kind="stable"))
        else:
            for i, tid in enumerate(ids):
                self._row[tid] = n_old + i

    # -- comparison (tests) -----------------------------------------------------------
    def same_as(self, other: EncodedHistory) -> bool:
        """True when both hold identical arrays and keys (NaN equal to NaN)."""
        return (
            self.labels == other.labels
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.X, other.X, equal_nan=True)
            and np.array_equal(self.states, other.states)
            and np.array_equal(self.values, other.values, equal_nan=True)
            and self.keys == other.keys
            and self._key_count == other._key_count
            and self._foreign == other._foreign
        )
