"""Suggesters: one function of the history each (hyperopt's ``suggest(new_ids, domain,
trials, seed)``, OSS Vizier's stateless designers).

A suggester is rebuilt from the study history on every call, so any coordinator process
can serve any study.  The protocol::

    suggest(space, history, n, seed) -> list[raw dict]

returns AT MOST ``n`` raw points of ``space`` (choices as indices, active labels only),
distinct from each other and from every configuration of the history that is not FAILED
(configurations are compared by :meth:`Space.point_key`: equal architectures are equal).
Fewer than ``n`` come back only when no new configuration could be found: the space is
(nearly) exhausted, e.g. a finished grid.  Equal arguments give equal results.

How each history state counts (docs/design.md section 3):

* ``COMPLETE``: observed, loss = ``-value`` (higher value = better, e.g. accuracy).
* ``PRUNED``: stopped early; its last reported value counts as a completed loss (it is
  what the trial had reached: a pessimistic, not a missing, observation).
* ``INFEASIBLE``: the worst score: loss = (largest completed loss) + 1, worse than every
  completed trial.  TPE uses only the ranking of losses, so the margin does not matter;
  TPE learns to avoid the region.  A COMPLETE / PRUNED value that is missing or not
  finite counts the same way.
* ``WAITING`` / ``RUNNING``: pending.  They are in the hyperopt ``Trials`` with state
  running and no loss, which hyperopt's TPE reads as loss = +inf (its pessimistic liar):
  they fall in the "bad" group, which steers new suggestions away from them; and they are
  never suggested again.  Suggestions made earlier in the same call are added the same
  way, so ``n`` concurrent suggestions spread out.
* ``FAILED`` (crash, lost worker): left out entirely; the configuration may be suggested
  again (it is retried).

History should be in creation order: TPE's linear forgetting down-weights the oldest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from protocol.states import TrialState

from .space import MAX_GRID_POINTS, Space, SpaceError

log = logging.getLogger(__name__)

TrialStateName = Literal["WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED", "INFEASIBLE"]
STATES: tuple[str, ...] = ("WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED", "INFEASIBLE")
PENDING_STATES = frozenset(TrialState.pending())
SCORED_STATES = frozenset({"COMPLETE", "PRUNED"})

# TPE settings of Bergstra, Yamins & Cox (ICML 2013), hyperopt's defaults
DEFAULT_N_STARTUP_JOBS = 20
DEFAULT_GAMMA = 0.25
DEFAULT_N_EI_CANDIDATES = 24
DEFAULT_PRIOR_WEIGHT = 1.0
# hyperopt 0.3 has no argument for it: tpe.DEFAULT_LF (25) is bound as a default argument
# of its Parzen estimators at import time (a test checks the value)
LINEAR_FORGETTING = 25

# TPE proposals per slot before the slot falls back to a prior draw: the first maximises
# EI over n_ei_candidates draws, the others are single draws from l(x) (see TPESuggester)
_TPE_TRIES = 4
_RANDOM_ROUNDS = 8  # batches of prior draws per call before giving up (exhausted space)


@dataclass(frozen=True)
class HistoryItem:
    """One trial of the study as a suggester sees it.

    Attributes:
        raw: the trial's raw point (label -> value, choices as indices).
        state: one of :data:`STATES`.
        value: the score, higher is better (COMPLETE, PRUNED); None otherwise.
    """

    raw: Mapping[str, Any]
    state: TrialStateName
    value: float | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")


@runtime_checkable
class Suggester(Protocol):
    """Proposes new points of a space from the study history (stateless)."""

    name: ClassVar[str]

    def suggest(
        self, space: Space, history: Sequence[HistoryItem], n: int, seed: int
    ) -> list[dict[str, Any]]:
        """Propose up to ``n`` new distinct raw points.

        Args:
            space: the study's space.
            history: every trial of the study, oldest first.
            n: how many points are wanted (>= 0).
            seed: the randomness; equal arguments give equal results.

        Returns:
            At most ``n`` raw points, distinct from each other and from the non-FAILED
            history; fewer only when the space is (nearly) exhausted.

        Raises:
            ValueError: ``n < 0``; for ``grid``, a continuous or too large space
                (:class:`SpaceError`).
        """
        ...


def derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed from ``seed`` and counters: independent streams per slot and try."""
    words = [int(seed) % (2**32), *(int(p) % (2**32) for p in parts)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


class _Known:
    """The history, checked once: normalized points, their keys, what counts as seen."""

    def __init__(self, space: Space, history: Iterable[HistoryItem]) -> None:
        self.space = space
        self.items: list[tuple[dict[str, Any], HistoryItem]] = []
        self.seen: set[tuple[Any, ...]] = set()
        for item in history:
            if item.state == "FAILED":
                continue  # retried: neither observed nor blocking its configuration
            try:
                point = space.normalize(item.raw)
            except SpaceError as exc:
                # a point of another space version cannot be observed; a study's own
                # history never has one, so this is logged rather than fatal
                log.warning("history point ignored, not in space %r: %s", space.name, exc)
                continue
            self.items.append((point, item))
            self.seen.add(space.point_key(point))

    def take(self, point: dict[str, Any]) -> bool:
        """Mark ``point`` seen; False if it (or an equal configuration) already was."""
        key = self.space.point_key(point)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    @property
    def n_finished(self) -> int:
        return sum(1 for _, item in self.items if item.state not in PENDING_STATES)


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def _random_points(space: Space, known: _Known, n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` new prior draws, in batches (one vectorised hyperopt pass each)."""
    out: list[dict[str, Any]] = []
    batch = max(16, 2 * n)
    for round_ in range(_RANDOM_ROUNDS):
        for point in space.sample_many(batch, derive_seed(seed, 0x52, round_)):
            if known.take(point):
                out.append(point)
                if len(out) == n:
                    return out
    return out


class RandomSuggester:
    """Random search: draws from the prior (``hyperopt.rand``); ignores the scores."""

    name: ClassVar[str] = "random"

    def suggest(
        self, space: Space, history: Sequence[HistoryItem], n: int, seed: int
    ) -> list[dict[str, Any]]:
        """See :class:`Suggester`."""
        _check_n(n)
        if n == 0:
            return []
        return _random_points(space, _Known(space, history), n, seed)


class TPESuggester:
    """Tree-structured Parzen Estimator (``hyperopt.tpe``), maximising the value.

    Until ``n_startup_jobs`` trials have FINISHED (COMPLETE, PRUNED or INFEASIBLE;
    pending ones do not count, unlike hyperopt's own rule), suggestions are prior draws.
    Then each slot calls ``hyperopt.tpe.suggest`` on the history plus the slots already
    filled (as pending trials).  hyperopt maximises EI label by label, so its proposal is
    nearly the same for every seed and is often a configuration already in the history
    (typically the best one).  A study never evaluates a configuration twice, so such a
    proposal is replaced: first by up to three single draws from l(x), the density of
    the good trials (``n_EI_candidates=1``), then by a prior draw.

    Args:
        n_startup_jobs: finished trials before TPE takes over (paper: 20).
        gamma: fraction of "good" trials, ``ceil(gamma * sqrt(n))`` capped at 25 (0.25).
        n_ei_candidates: draws from l(x) scored by l(x)/g(x) per suggestion (24).
        linear_forgetting: must be 25: hyperopt 0.3's fixed value.
        prior_weight: weight of the prior in the Parzen estimators (1.0).

    Raises:
        ValueError: an out-of-range setting.
    """

    name: ClassVar[str] = "tpe"

    def __init__(
        self,
        n_startup_jobs: int = DEFAULT_N_STARTUP_JOBS,
        gamma: float = DEFAULT_GAMMA,
        n_ei_candidates: int = DEFAULT_N_EI_CANDIDATES,
        linear_forgetting: int = LINEAR_FORGETTING,
        prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    ) -> None:
        if n_startup_jobs < 0:
            raise ValueError(f"n_startup_jobs must be >= 0, got {n_startup_jobs}")
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if n_ei_candidates < 1:
            raise ValueError(f"n_ei_candidates must be >= 1, got {n_ei_candidates}")
        if linear_forgetting != LINEAR_FORGETTING:
            raise ValueError(
                f"linear_forgetting must be {LINEAR_FORGETTING} (hyperopt's tpe.DEFAULT_LF; "
                f"hyperopt 0.3 cannot change it), got {linear_forgetting}"
            )
        if not prior_weight > 0:
            raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
        self.n_startup_jobs = n_startup_jobs
        self.gamma = gamma
        self.n_ei_candidates = n_ei_candidates
        self.linear_forgetting = linear_forgetting
        self.prior_weight = prior_weight

    def suggest(
        self, space: Space, history: Sequence[HistoryItem], n: int, seed: int
    ) -> list[dict[str, Any]]:
        """See :class:`Suggester`."""
        _check_n(n)
        if n == 0:
            return []
        known = _Known(space, history)
        if known.n_finished < self.n_startup_jobs:
            return _random_points(space, known, n, seed)
        from hyperopt import tpe

        trials = _build_trials(space, known.items)
        domain = space.domain
        out: list[dict[str, Any]] = []
        for slot in range(n):
            tid = len(known.items) + slot
            for attempt in range(_TPE_TRIES):
                docs = tpe.suggest(
                    [tid],
                    domain,
                    trials,
                    derive_seed(seed, slot, attempt),
                    prior_weight=self.prior_weight,
                    n_startup_jobs=0,  # decided above, on finished trials only
                    # hyperopt picks the EI argmax PER LABEL, which is nearly
                    # deterministic: once it lands on a known configuration, other seeds
                    # land there too.  A retry draws from l(x) instead (one candidate):
                    # still the good region, but not the same point.
                    n_EI_candidates=self.n_ei_candidates if attempt == 0 else 1,
                    gamma=self.gamma,
                    verbose=False,
                )
                vals = docs[0]["misc"]["vals"]
                point = space.normalize({k: v[0] for k, v in vals.items() if v})
                if known.take(point):
                    _add_pending(trials, docs[0])
                    out.append(point)
                    break
            else:
                # TPE keeps proposing known configurations (a converged model or a small
                # space): explore with a prior draw instead of returning a duplicate
                extra = _random_points(space, known, 1, derive_seed(seed, slot, 0x7E))
                if not extra:
                    break
                out.append(extra[0])
                _add_pending(trials, _doc_for(trials, space, extra[0], tid))
        return out


class GridSuggester:
    """Every point of a small discrete space once, in a seeded random order.

    Args:
        shuffle: True (default): visit the grid in an order drawn from ``seed``; False:
            in the fixed order of :meth:`Space.grid` (the seed is then unused).
        max_points: refuse grids larger than this.
    """

    name: ClassVar[str] = "grid"

    def __init__(self, shuffle: bool = True, max_points: int = MAX_GRID_POINTS) -> None:
        self.shuffle = shuffle
        self.max_points = max_points

    def suggest(
        self, space: Space, history: Sequence[HistoryItem], n: int, seed: int
    ) -> list[dict[str, Any]]:
        """See :class:`Suggester`; an empty list means the grid is done.

        Raises:
            SpaceError: the space is continuous or has more than ``max_points`` points.
        """
        _check_n(n)
        if not space.is_discrete:
            space.grid()  # raises the SpaceError that names the continuous labels
        size = space.grid_size or 0
        if size > self.max_points:
            raise SpaceError(
                "",
                f"space {space.name!r} has {size:,} grid points, more than the "
                f"{self.max_points:,} a grid search may enumerate (use random or tpe)",
            )
        if n == 0:
            return []
        known = _Known(space, history)
        used = {space.grid_index(point) for point, _ in known.items}
        order: Iterable[int] = (
            np.random.default_rng(derive_seed(seed)).permutation(size).tolist()
            if self.shuffle
            else range(size)
        )
        out: list[dict[str, Any]] = []
        for index in order:
            if index in used:
                continue
            point = space.grid_point(index)
            if known.take(point):  # also skips a duplicate-option twin of a seen point
                out.append(point)
                if len(out) == n:
                    break
        return out


# -- hyperopt Trials -------------------------------------------------------------------
def _losses(items: Sequence[tuple[dict[str, Any], HistoryItem]]) -> list[float | None]:
    """Loss per item (None: pending), following the table in the module docstring."""
    scored = [
        -float(item.value)
        for _, item in items
        if item.state in SCORED_STATES and item.value is not None and math.isfinite(item.value)
    ]
    worst = max(scored, default=0.0) + 1.0
    losses: list[float | None] = []
    for _, item in items:
        if item.state in PENDING_STATES:
            losses.append(None)
        elif item.state in SCORED_STATES and item.value is not None and math.isfinite(item.value):
            losses.append(-float(item.value))
        else:
            losses.append(worst)
    return losses


def history_to_trials(space: Space, history: Sequence[HistoryItem]) -> Any:
    """A hyperopt ``Trials`` holding the history (what ``tpe.suggest`` reads).

    Every document's ``misc.vals`` carries EVERY label of the space (``[]`` when
    inactive) and ``misc.idxs`` the matching ``[tid]`` / ``[]``.  Finished trials are
    ``ok`` with the loss of the module docstring; pending ones are ``running`` with no
    loss; FAILED ones are left out.  ``tid`` numbers the remaining trials in order.

    Raises:
        SpaceError: a history point is not a point of ``space``.
    """
    pairs = [(space.normalize(item.raw), item) for item in history if item.state != "FAILED"]
    return _build_trials(space, pairs)


def _build_trials(space: Space, pairs: Sequence[tuple[dict[str, Any], HistoryItem]]) -> Any:
    from hyperopt import Trials
    from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING, STATUS_OK

    trials = Trials()
    losses = _losses(pairs)
    tids = list(range(len(pairs)))
    results: list[dict[str, Any]] = [
        {"status": "new"} if loss is None else {"status": STATUS_OK, "loss": loss}
        for loss in losses
    ]
    miscs = [_misc(space, point, tid) for tid, (point, _) in zip(tids, pairs, strict=True)]
    docs = trials.new_trial_docs(tids, [None] * len(tids), results, miscs)
    for doc, loss in zip(docs, losses, strict=True):
        doc["state"] = JOB_STATE_RUNNING if loss is None else JOB_STATE_DONE
    trials.insert_trial_docs(docs)
    trials.refresh()
    return trials


def _misc(space: Space, point: Mapping[str, Any], tid: int) -> dict[str, Any]:
    # normalized points hold exactly the active labels: no need to walk the space again
    return {
        "tid": tid,
        "cmd": None,
        "workdir": None,
        "idxs": {label: [tid] if label in point else [] for label in space.labels},
        "vals": {label: [point[label]] if label in point else [] for label in space.labels},
    }


def _doc_for(trials: Any, space: Space, point: Mapping[str, Any], tid: int) -> dict[str, Any]:
    return trials.new_trial_docs([tid], [None], [{"status": "new"}], [_misc(space, point, tid)])[0]


def _add_pending(trials: Any, doc: dict[str, Any]) -> None:
    """Add a fresh suggestion as a running trial: TPE's liar for the next slot."""
    from hyperopt.base import JOB_STATE_RUNNING

    doc["state"] = JOB_STATE_RUNNING
    doc["result"] = {"status": "new"}
    trials.insert_trial_docs([doc])
    trials.refresh()


# -- registry --------------------------------------------------------------------------
_SUGGESTERS: dict[str, type] = {
    "random": RandomSuggester,
    "tpe": TPESuggester,
    "grid": GridSuggester,
}
_OPTIONS: dict[str, frozenset[str]] = {
    "random": frozenset(),
    "tpe": frozenset(
        {"n_startup_jobs", "gamma", "n_ei_candidates", "linear_forgetting", "prior_weight"}
    ),
    "grid": frozenset({"shuffle", "max_points"}),
}


def get_suggester(name: str, **options: Any) -> Suggester:
    """A suggester by name (``random``, ``tpe``, ``grid``).

    Options meant for another algorithm are ignored, so that one options dict (a study's
    ``algorithm_options``) serves whichever algorithm the study uses.

    Raises:
        KeyError: unknown name.
        ValueError: an option no suggester knows, or a bad value.
    """
    if name not in _SUGGESTERS:
        raise KeyError(f"unknown suggester {name!r}; known: {list(_SUGGESTERS)}")
    known = frozenset().union(*_OPTIONS.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown suggester options {unknown}; known: {sorted(known)}")
    mine = {k: v for k, v in options.items() if k in _OPTIONS[name]}
    return _SUGGESTERS[name](**mine)  # type: ignore[no-any-return]
