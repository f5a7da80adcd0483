"""Suggesters: one contract suite for random, tpe and grid, then TPE specifics."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import pytest

from search_space import (
    Architecture,
    GridSuggester,
    HistoryItem,
    InfeasibleArchitecture,
    RandomSuggester,
    Space,
    SpaceError,
    Suggester,
    TPESuggester,
    get_space,
    get_suggester,
    history_to_trials,
    parse_space,
    validate,
)
from search_space.suggest import LINEAR_FORGETTING
from tests.search_space.test_spaces import small_discrete_doc


def small_space() -> Space:
    """19 points: depth 1 (2 * 3 * 3 = 18 points) or depth 2 (one point)."""
    return parse_space(small_discrete_doc())


def objective(arch: Architecture) -> float | None:
    """A cheap stand-in for accuracy in (0, 1); None when the shape walk says infeasible.

    Smooth in log n_filters, prefers energy pooling, ReLU, lnorm 5 with threshold 1 and
    depth 2: the kind of structure TPE can find and random search stumbles on.
    """
    try:
        validate(arch)
    except InfeasibleArchitecture:
        return None
    s = 0.0
    for layer in arch.layers:
        s -= (math.log2(layer.fbcorr.n_filters) - 6) ** 2 / 4
        s -= abs(layer.lnorm.size - 5) / 4
        s += 0.5 if layer.lpool.order == 2 else 0.0
        s += 0.3 if layer.activation.min_out == 0 else 0.0
        s -= abs(math.log10(layer.lnorm.threshold)) / 2
    s -= abs(arch.depth - 2) * 0.5
    return 1 / (1 + math.exp(-s))


def scored(space: Space, raw: dict[str, Any]) -> HistoryItem:
    value = objective(space.to_arch(raw))
    if value is None:
        return HistoryItem(raw, "INFEASIBLE")
    return HistoryItem(raw, "COMPLETE", value)


def random_history(space: Space, n: int, seed: int = 0) -> list[HistoryItem]:
    seen: set[Any] = set()
    out = []
    for raw in space.sample_many(4 * n, seed):
        key = space.point_key(raw)
        if key not in seen:
            seen.add(key)
            out.append(scored(space, raw))
        if len(out) == n:
            break
    return out


def keys(space: Space, raws: list[dict[str, Any]]) -> list[Any]:
    return [space.point_key(space.normalize(r)) for r in raws]


# -- the contract suite ----------------------------------------------------------------
@dataclass
class Case:
    name: str
    suggester: Suggester
    space: Space
    history: list[HistoryItem]  # finished trials, enough for TPE to model


@pytest.fixture(params=["random", "tpe", "grid"])
def case(request) -> Case:
    if request.param == "grid":
        space = small_space()
        return Case("grid", GridSuggester(), space, random_history(space, 8))
    space = get_space("pinto-cox")
    suggester: Suggester = (
        RandomSuggester() if request.param == "random" else TPESuggester(n_startup_jobs=10)
    )
    return Case(request.param, suggester, space, random_history(space, 30))


@pytest.fixture(params=["random", "tpe", "grid"])
def small_case(request) -> Case:
    """Every suggester on the 19-point space (exhaustion and re-suggestion)."""
    suggester = {
        "random": RandomSuggester(),
        "tpe": TPESuggester(n_startup_jobs=5),
        "grid": GridSuggester(),
    }[request.param]
    return Case(request.param, suggester, small_space(), [])


def test_it_is_a_suggester(case):
    assert isinstance(case.suggester, Suggester)
    assert get_suggester(case.name).name == case.name


def test_returns_n_valid_distinct_new_points(case):
    out = case.suggester.suggest(case.space, case.history, 4, seed=1)
    assert len(out) == 4
    for raw in out:
        assert case.space.normalize(raw) == raw  # canonical raw form
        case.space.to_arch(raw)  # resolves
    new = keys(case.space, out)
    assert len(set(new)) == 4
    assert not set(new) & set(keys(case.space, [h.raw for h in case.history]))


def test_without_history(case):
    out = case.suggester.suggest(case.space, [], 3, seed=2)
    assert len(out) == 3 and len(set(keys(case.space, out))) == 3


def test_reproducible_for_equal_seeds_and_different_for_different_seeds(case):
    a = case.suggester.suggest(case.space, case.history, 3, seed=5)
    b = case.suggester.suggest(case.space, case.history, 3, seed=5)
    c = case.suggester.suggest(case.space, case.history, 3, seed=6)
    assert a == b
    assert a != c


def test_n_zero_and_negative(case):
    assert case.suggester.suggest(case.space, case.history, 0, seed=1) == []
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        case.suggester.suggest(case.space, case.history, -1, seed=1)


def test_failed_trials_are_ignored(case):
    failed = [HistoryItem(h.raw, "FAILED") for h in random_history(case.space, 5, seed=9)]
    base = case.suggester.suggest(case.space, case.history, 3, seed=3)
    mixed = failed[:2] + case.history + failed[2:]
    assert case.suggester.suggest(case.space, mixed, 3, seed=3) == base


def test_a_pending_configuration_is_not_suggested_again(case):
    first = case.suggester.suggest(case.space, case.history, 1, seed=4)[0]
    for state in ("RUNNING", "WAITING"):
        history = [*case.history, HistoryItem(first, state)]
        again = case.suggester.suggest(case.space, history, 3, seed=4)
        assert case.space.point_key(first) not in keys(case.space, again)


def test_only_unseen_points_come_back_and_failed_ones_may(small_case):
    space, suggester = small_case.space, small_case.suggester
    grid = list(space.grid())
    depth2 = next(p for p in grid if p["depth"] == 1)  # the likeliest point (prior 1/2)
    others = [p for p in grid if p is not depth2]
    history = [scored(space, p) for p in others[:12]]
    history += [HistoryItem(p, "RUNNING") for p in others[12:15]]
    history += [HistoryItem(p, "INFEASIBLE") for p in others[15:17]]  # not retried
    history.append(HistoryItem(depth2, "FAILED"))  # retried
    unseen = {space.point_key(p) for p in [*others[17:], depth2]}
    out = suggester.suggest(space, history, 5, seed=8)
    assert set(keys(space, out)) <= unseen
    assert space.point_key(depth2) in keys(space, out)
    if small_case.name == "grid":
        assert set(keys(space, out)) == unseen
    # nothing left: an empty answer, not a repeat
    done = [*history[:-1], HistoryItem(depth2, "COMPLETE", 0.5)]
    done += [HistoryItem(p, "COMPLETE", 0.5) for p in others[17:]]
    assert suggester.suggest(space, done, 3, seed=8) == []


def test_a_grid_is_covered_exactly_once():
    space = small_space()
    history: list[HistoryItem] = []
    for round_ in range(10):
        out = GridSuggester().suggest(space, history, 4, seed=round_)
        if not out:
            break
        history += [scored(space, raw) for raw in out]
    assert len(history) == 19
    assert len(set(keys(space, [h.raw for h in history]))) == 19
    unshuffled = GridSuggester(shuffle=False).suggest(space, [], 19, seed=1)
    assert unshuffled == list(space.grid())


def test_grid_refuses_continuous_and_huge_spaces():
    with pytest.raises(SpaceError, match="continuous"):
        GridSuggester().suggest(get_space("bergstra13"), [], 1, seed=0)
    with pytest.raises(SpaceError, match="grid points, more than the 1,000,000"):
        GridSuggester().suggest(get_space("fg11"), [], 1, seed=0)


# -- how TPE sees the history ----------------------------------------------------------
def test_history_to_trials_follows_the_state_table():
    space = get_space("pinto-cox")
    raws = space.sample_many(6, seed=1)
    history = [
        HistoryItem(raws[0], "COMPLETE", 0.9),
        HistoryItem(raws[1], "COMPLETE", 0.2),
        HistoryItem(raws[2], "INFEASIBLE"),
        HistoryItem(raws[3], "PRUNED", 0.4),
        HistoryItem(raws[4], "FAILED"),
        HistoryItem(raws[5], "RUNNING"),
    ]
    trials = history_to_trials(space, history)
    docs = trials.trials
    assert [d["tid"] for d in docs] == [0, 1, 2, 3, 4]  # FAILED left out
    losses = [d["result"].get("loss") for d in docs]
    assert losses[0] == -0.9 and losses[1] == -0.2 and losses[3] == -0.4
    assert losses[2] > max(losses[0], losses[1], losses[3])  # infeasible: the worst
    assert docs[4]["result"] == {"status": "new"} and losses[4] is None  # pending
    assert [d["state"] for d in docs] == [2, 2, 2, 2, 1]  # DONE x4, RUNNING
    for doc in docs:
        vals, idxs = doc["misc"]["vals"], doc["misc"]["idxs"]
        assert list(vals) == list(idxs) == list(space.labels)  # every label
        for label in space.labels:
            assert (vals[label] == []) == (idxs[label] == [])
            assert idxs[label] in ([], [doc["tid"]])
    assert {k: v[0] for k, v in docs[0]["misc"]["vals"].items() if v} == raws[0]


def test_tpe_treats_infeasible_as_worst():
    """Half the fg11 history has l1_min_out = -inf (option 0). Marked INFEASIBLE, TPE
    should move away from that option; marked as the BEST results, it should go there."""
    space = get_space("fg11")
    history = random_history(space, 40, seed=3)

    def relabel(bad_state: str) -> list[HistoryItem]:
        out = []
        for h in history:
            if h.raw["l1_min_out"] == 0:
                out.append(HistoryItem(h.raw, bad_state, 1.0 if bad_state == "COMPLETE" else None))
            else:
                out.append(HistoryItem(h.raw, "COMPLETE", 0.2 + 0.5 * (h.value or 0.0)))
        return out

    tpe = TPESuggester()

    def share_of_option0(items: list[HistoryItem]) -> float:
        picks = [tpe.suggest(space, items, 1, seed=s)[0]["l1_min_out"] for s in range(12)]
        return picks.count(0) / len(picks)

    assert share_of_option0(relabel("INFEASIBLE")) < 0.3
    assert share_of_option0(relabel("COMPLETE")) > 0.7


def test_tpe_settings_and_registry():
    from hyperopt import tpe

    assert tpe.DEFAULT_LF == LINEAR_FORGETTING == 25  # the paper's linear forgetting
    s = get_suggester(
        "tpe", n_startup_jobs=20, gamma=0.25, n_ei_candidates=24, linear_forgetting=25
    )
    assert isinstance(s, TPESuggester)
    assert (s.n_startup_jobs, s.gamma, s.n_ei_candidates) == (20, 0.25, 24)
    # one options dict serves every algorithm: TPE's options do not bother the others
    assert isinstance(get_suggester("random", gamma=0.3), RandomSuggester)
    assert isinstance(get_suggester("grid", n_startup_jobs=3), GridSuggester)
    with pytest.raises(ValueError, match="linear_forgetting must be 25"):
        get_suggester("tpe", linear_forgetting=50)
    with pytest.raises(ValueError, match="gamma must be in"):
        TPESuggester(gamma=1.5)
    with pytest.raises(ValueError, match=r"unknown suggester options \['nope'\]"):
        get_suggester("tpe", nope=1)
    with pytest.raises(KeyError, match="unknown suggester 'anneal'"):
        get_suggester("anneal")
    with pytest.raises(ValueError, match="state must be one of"):
        HistoryItem({}, "DONE")  # type: ignore[arg-type]


def test_history_points_outside_the_space_are_skipped(caplog):
    space = get_space("pinto-cox")
    history = [*random_history(space, 25), HistoryItem({"depth": 7}, "COMPLETE", 0.99)]
    out = TPESuggester().suggest(space, history, 2, seed=1)
    assert len(out) == 2
    assert "history point ignored" in caplog.text


def test_suggesting_over_1000_trials_is_fast():
    space = get_space("pinto-cox")
    assert space.domain is not None  # compile outside the timing
    history = random_history(space, 1000, seed=5)
    history += [HistoryItem(h.raw, "RUNNING") for h in random_history(space, 20, seed=6)]
    for suggester, limit in ((RandomSuggester(), 1.0), (TPESuggester(), 2.5)):
        start = time.perf_counter()
        out = suggester.suggest(space, history, 1, seed=1)
        elapsed = time.perf_counter() - start
        assert len(out) == 1
        # measured ~0.05 s (random) and ~0.3 s (tpe) on one core; the bound only catches
        # regressions such as quadratic work in the history length
        assert elapsed < limit, (suggester.name, elapsed)


def test_tpe_beats_random_search_at_equal_budget():
    """Median over 20 seeds of the best value after 50 sequential trials (20 startup).

    20 seeds, not 5: over 100 seeds both hyperopt's TPE and ours beat random search in
    3 seeds of 4, so a median of 5 still loses to random search about one time in ten,
    whichever seeds happen to be lucky."""
    space = get_space("pinto-cox")

    def best_after(suggester: Suggester, seed: int, budget: int = 50) -> float:
        history: list[HistoryItem] = []
        for t in range(budget):
            (raw,) = suggester.suggest(space, history, 1, seed=seed * 1000 + t)
            history.append(scored(space, raw))
        return max((h.value for h in history if h.value is not None), default=0.0)

    tpe = statistics.median(best_after(TPESuggester(), seed) for seed in range(20))
    rand = statistics.median(best_after(RandomSuggester(), seed) for seed in range(20))
    assert tpe > rand, (tpe, rand)
