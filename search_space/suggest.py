"""Suggesters: one function of the history each (hyperopt's ``suggest(new_ids, domain,
trials, seed)``, OSS Vizier's stateless designers).

A suggester keeps no state between calls, so any coordinator process can serve any
study.  The protocol::

    suggest(space, history, n, seed) -> list[raw dict]
    suggest_encoded(encoded, n, seed) -> list[raw dict]

``suggest`` takes the history as a list (oldest first) and is exactly
``suggest_encoded(EncodedHistory.from_history(space, history), n, seed)``;
``suggest_encoded`` takes it encoded (:class:`~search_space.history.EncodedHistory`), which
a caller may keep between calls and update incrementally.  An encoded history is the same
whichever way it was built, so a cached one and a cold rebuild give identical suggestions
for equal history and seed.

Both return AT MOST ``n`` raw points of the space (choices as indices, active labels
only), distinct from each other and from every configuration of the history that is not
FAILED (configurations are compared by :meth:`Space.point_key`: equal architectures are
equal).  Fewer than ``n`` come back only when no new configuration could be found: the
space is (nearly) exhausted, e.g. a finished grid.  Equal arguments give equal results.

How each history state counts (docs/design.md section 3):

* ``COMPLETE``: observed, loss = ``-value`` (higher value = better, e.g. accuracy).
* ``PRUNED``: stopped early; its last reported value counts as a completed loss (it is
  what the trial had reached: a pessimistic, not a missing, observation).
* ``INFEASIBLE``: the worst score: loss = (largest completed loss) + 1, worse than every
  completed trial.  TPE uses only the ranking of losses, so the margin does not matter;
  TPE learns to avoid the region.  A COMPLETE / PRUNED value that is missing or not
  finite counts the same way.
* ``WAITING`` / ``RUNNING``: pending.  TPE reads them as hyperopt reads a running trial:
  loss = +inf (its pessimistic liar), so they fall in the "bad" group, which steers new
  suggestions away from them; and they are never suggested again.  Suggestions made
  earlier in the same call are added the same way, so ``n`` concurrent suggestions
  spread out.
* ``FAILED`` (crash, lost worker): left out entirely; the configuration may be suggested
  again (it is retried).

History must be in creation order (ascending trial id in an encoded history): TPE's
linear forgetting down-weights the oldest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from .history import FAILED_CODE, PENDING_CODES, STATES, EncodedHistory
from .space import MAX_GRID_POINTS, Space, SpaceError
from .tpe import DEFAULT_LF, TPEModel, TPESettings

TrialStateName = Literal["WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED", "INFEASIBLE"]
PENDING_STATES = frozenset(STATES[code] for code in PENDING_CODES)
SCORED_STATES = frozenset({"COMPLETE", "PRUNED"})

# TPE settings of Bergstra, Yamins & Cox (ICML 2013), hyperopt's defaults
DEFAULT_N_STARTUP_JOBS = 20
DEFAULT_GAMMA = 0.25
DEFAULT_N_EI_CANDIDATES = 24
DEFAULT_PRIOR_WEIGHT = 1.0
# hyperopt 0.3 has no argument for it: tpe.DEFAULT_LF (25) is bound as a default argument
# of its Parzen estimators at import time (a test checks the value); search_space.tpe
# follows hyperopt and keeps it fixed
LINEAR_FORGETTING = DEFAULT_LF

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
            history; fewer only when the space is (nearly) exhausted.  Equal to
            ``suggest_encoded(EncodedHistory.from_history(space, history), n, seed)``.

        Raises:
            ValueError: ``n < 0``; for ``grid``, a continuous or too large space
                (:class:`SpaceError`).
        """
        ...

    def suggest_encoded(self, encoded: EncodedHistory, n: int, seed: int) -> list[dict[str, Any]]:
        """As :meth:`suggest`, on an encoded history (its space is ``encoded.space``; ids
        ascending = creation order).  ``encoded`` is not modified (beyond caches)."""
        ...


def derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed from ``seed`` and counters: independent streams per slot and try."""
    words = [int(seed) % (2**32), *(int(p) % (2**32) for p in parts)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


class _Taken:
    """The configurations a call may not return: the history's (not FAILED) and its own."""

    def __init__(self, encoded: EncodedHistory) -> None:
        self.encoded = encoded
        self.mine: set[bytes] = set()

    def take(self, point: Mapping[str, Any]) -> bool:
        """Mark ``point`` (normalized) taken; False if it (or an equal configuration:
        equal ``Space.point_key``) already was."""
        key = self.encoded.key_of(point)
        if key in self.mine or self.encoded.is_taken(key):
            return False
        self.mine.add(key)
        return True


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def _random_points(space: Space, taken: _Taken, n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` new prior draws, in batches (one vectorised hyperopt pass each)."""
    out: list[dict[str, Any]] = []
    batch = max(16, 2 * n)
    for round_ in range(_RANDOM_ROUNDS):
        for point in space.sample_many(batch, derive_seed(seed, 0x52, round_)):
            if taken.take(point):
                out.append(point)
                if len(out) == n:
                    return out
    return out


class _Base:
    """``suggest`` on a list = ``suggest_encoded`` on its encoding."""

    name: ClassVar[str]

    def _check_space(self, space: Space) -> None:
        """Raise before any work if the suggester cannot serve ``space`` at all."""

    def suggest(
        self, space: Space, history: Sequence[HistoryItem], n: int, seed: int
    ) -> list[dict[str, Any]]:
        """See :class:`Suggester`."""
        _check_n(n)
        self._check_space(space)
        if n == 0:
            return []
        return self.suggest_encoded(EncodedHistory.from_history(space, history), n, seed)

    def suggest_encoded(self, encoded: EncodedHistory, n: int, seed: int) -> list[dict[str, Any]]:
        """See :class:`Suggester`."""
        _check_n(n)
        self._check_space(encoded.space)
        if n == 0:
            return []
        return self._suggest(encoded, n, seed)

    def _suggest(self, encoded: EncodedHistory, n: int, seed: int) -> list[dict[str, Any]]:
        raise NotImplementedError


class RandomSuggester(_Base):
    """Random search: draws from the prior (``hyperopt.rand``); ignores the scores."""

    name: ClassVar[str] = "random"

    def _suggest(self, encoded: EncodedHistory, n: int, seed: int) -> list[dict[str, Any]]:
        return _random_points(encoded.space, _Taken(encoded), n, seed)


class TPESuggester(_Base):
    """Tree-structured Parzen Estimator (hyperopt's ``tpe``, reimplemented in numpy by
    :mod:`search_space.tpe`), maximising the value.

    Until ``n_startup_jobs`` trials have FINISHED (COMPLETE, PRUNED or INFEASIBLE;
    pending ones do not count, unlike hyperopt's own rule), suggestions are prior draws.
    Then the TPE posterior is fitted once per call, and each slot proposes a point and
    adds it as a pending trial before the next slot (what ``hyperopt.tpe.suggest`` would
    see if asked again).  TPE maximises EI label by label, so its proposal is nearly the
    same for every seed and is often a configuration already in the history (typically
    the best one).  A study never evaluates a configuration twice, so such a proposal is
    replaced: first by up to three single draws from l(x), the density of the good
    trials (one EI candidate), then by a prior draw.

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

    @property
    def settings(self) -> TPESettings:
        return TPESettings(
            gamma=self.gamma,
            n_ei_candidates=self.n_ei_candidates,
            prior_weight=self.prior_weight,
            linear_forgetting=self.linear_forgetting,
        )

    def _suggest(self, encoded: EncodedHistory, n: int, seed: int) -> list[dict[str, Any]]:
        space = encoded.space
        taken = _Taken(encoded)
        if encoded.n_finished < self.n_startup_jobs:
            return _random_points(space, taken, n, seed)
        model = TPEModel(encoded, self.settings, room=n)
        out: list[dict[str, Any]] = []
        for slot in range(n):
            for attempt in range(_TPE_TRIES):
                rng = np.random.default_rng(derive_seed(seed, slot, attempt))
                # the EI argmax per label is nearly deterministic: once it lands on a
                # known configuration, other seeds land there too.  A retry draws from
                # l(x) instead (one candidate): still the good region, not the same point.
                raw = model.propose(rng, self.n_ei_candidates if attempt == 0 else 1)
                try:
                    point = space.normalize(raw)
                except SpaceError:
                    # a quantized draw rounded onto a bound's excluded edge (measure zero)
                    continue
                if taken.take(point):
                    model.add_pending(point)
                    out.append(point)
                    break
            else:
                # TPE keeps proposing known configurations (a converged model or a small
                # space): explore with a prior draw instead of returning a duplicate
                extra = _random_points(space, taken, 1, derive_seed(seed, slot, 0x7E))
                if not extra:
                    break
                out.append(extra[0])
                model.add_pending(extra[0])
        return out


class GridSuggester(_Base):
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

    def _check_space(self, space: Space) -> None:
        """Raises SpaceError: the space is continuous or has more than ``max_points``
        points."""
        if not space.is_discrete:
            space.grid()  # raises the SpaceError that names the continuous labels
        size = space.grid_size or 0
        if size > self.max_points:
            raise SpaceError(
                "",
                f"space {space.name!r} has {size:,} grid points, more than the "
                f"{self.max_points:,} a grid search may enumerate (use random or tpe)",
            )

    def _suggest(self, encoded: EncodedHistory, n: int, seed: int) -> list[dict[str, Any]]:
        """An empty list means the grid is done."""
        space = encoded.space
        size = space.grid_size or 0
        taken = _Taken(encoded)
        used = {
            index
            for index, state in zip(encoded.grid_indices(), encoded.states.tolist(), strict=True)
            if state != FAILED_CODE
        }
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
            if taken.take(point):  # also skips a duplicate-option twin of a seen point
                out.append(point)
                if len(out) == n:
                    break
        return out


# -- hyperopt Trials (the reference the tests and benchmarks run hyperopt on) -------------
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
