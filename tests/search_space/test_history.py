"""EncodedHistory: one encoding whichever way it was built, exactly Space.normalize's
points, Space.point_key's notion of equal, and updates that take effect."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from search_space import (
    EncodedHistory,
    HistoryItem,
    RandomSuggester,
    Space,
    SpaceError,
    TPESuggester,
    get_space,
    parse_space,
)
from search_space.history import STATES, history_losses
from tests.search_space.test_suggest import random_history, small_space
from tests.search_space.test_tpe import TPE_CHECK_DOC


def mixed_history(space: Space, n: int, seed: int) -> list[HistoryItem]:
    """Every state, missing and non-finite values, a point of another space."""
    rng = random.Random(seed)
    out = []
    for raw in space.sample_many(n, seed):
        state = rng.choice(STATES)
        value = rng.choice([None, math.nan, rng.random(), rng.random()])
        out.append(HistoryItem(raw, state, value))  # type: ignore[arg-type]
    out.insert(n // 2, HistoryItem({"no_such_label": 1}, "COMPLETE", 0.5))
    return out


@pytest.mark.parametrize("name", ["pinto-cox", "bergstra13"])
def test_incremental_equals_at_once(name):
    """Rows added in chunks, out of id order, first as WAITING then with their final
    state (raw None for known ids), plus a row that is later dropped by sync."""
    space = get_space(name)
    history = mixed_history(space, 300, seed=1)
    at_once = EncodedHistory.from_history(space, history)
    assert len(at_once) == 300  # the foreign point skipped
    rng = random.Random(2)
    for _ in range(3):
        ids = list(range(len(history)))
        rng.shuffle(ids)
        step = EncodedHistory(space)
        stray = space.sample(99)
        step.update([(10_000, stray, "COMPLETE", 0.9)])  # a final, dropped by sync below
        pos = 0
        while pos < len(ids):
            chunk = ids[pos : pos + rng.randint(1, 60)]
            pos += len(chunk)
            step.update([(i, history[i].raw, "WAITING", None) for i in chunk])
            # the state changes come later and without parameters
            step.update([(i, None, history[i].state, history[i].value) for i in chunk])
        assert not step.same_as(at_once)  # still holds the stray row
        step.sync([(i, None, h.state, h.value) for i, h in enumerate(history)])
        assert step.same_as(at_once)
        assert np.array_equal(step.ids, np.arange(len(history))[np.arange(len(history)) != 150])


def test_encoding_is_exactly_space_normalize():
    """Raw points in every shape a client may send: the encoded point is normalize's,
    and a point normalize rejects is skipped."""
    space = parse_space(TPE_CHECK_DOC)
    rng = random.Random(3)
    raws: list[Any] = []
    for raw in space.sample_many(200, seed=4):
        variant = dict(raw)
        kind = rng.randrange(8)
        label = rng.choice(list(variant))
        value = variant[label]
        if kind == 0:
            variant[label] = float(value)  # 1 -> 1.0 (an index as float)
        elif kind == 1:
            variant[label] = np.float64(value)  # numpy scalars (hyperopt's)
        elif kind == 2:
            variant[label] = value + 1e-9  # near a multiple of q: within tolerance
        elif kind == 3:
            variant[label] = 10**6  # out of range
        elif kind == 4:
            variant[label] = True  # a bool is not a number here
        elif kind == 5:
            del variant[label]  # missing (an error when active)
        elif kind == 6:
            other = [lb for lb in space.labels if lb not in variant]
            if other:  # an inactive label with junk: dropped, as normalize does
                variant[rng.choice(other)] = "junk"
        else:
            variant = OrderedDict(variant)  # a Mapping that is not a dict
        raws.append(variant)
    raws += [{"depth": 0}, "not a point", {"depth": 2**80}, {"depth": math.inf}]
    encoded = EncodedHistory(space)
    encoded.update([(i, raw, "COMPLETE", 0.5) for i, raw in enumerate(raws)])
    accepted = 0
    for i, raw in enumerate(raws):
        try:
            expected = space.normalize(raw)
        except SpaceError:
            assert i not in encoded
            continue
        accepted += 1
        point = encoded.point(encoded._row[i])
        assert point == expected and list(point) == list(expected), (raw, point, expected)
        assert [type(v) for v in point.values()] == [type(v) for v in expected.values()]
    assert 100 < accepted < len(raws) - 20  # both kinds are exercised
    assert encoded.missing(range(len(raws))) == []  # rejected ids count as known


def test_keys_are_equal_exactly_when_point_keys_are():
    """A space with duplicate options and an integer quniform: equal architectures from
    different raw values share a key; different ones never do."""
    doc = parse_space(TPE_CHECK_DOC).to_dict()
    layer = doc["depth"]["options"][0]["layers"][0]
    layer["n_filters"] = {"type": "choice", "options": [8, 16, 8, 32]}  # 0 and 2 equal
    layer["pool_size"] = {
        "type": "choice",
        "options": [2, {"type": "randint", "low": 2, "high": 4}],
    }
    space = parse_space(doc)
    points = [space.normalize(r) for r in space.sample_many(400, seed=5)]
    twins = []
    for p in points[:100]:
        q = dict(p)
        if q.get("d1_l1_n_filters") in (0, 2):
            q["d1_l1_n_filters"] = 2 - q["d1_l1_n_filters"]
        if "d1_l1_filter_size" in q:
            q["d1_l1_filter_size"] += 1e-9  # an int field: rounds to the same value
        twins.append(space.normalize(q))
    points += twins
    encoded = EncodedHistory(space)
    keys = [encoded.key_of(p) for p in points]
    point_keys = [space.point_key(p) for p in points]
    groups_ours: dict[bytes, set[int]] = {}
    groups_theirs: dict[Any, set[int]] = {}
    for i, (k, pk) in enumerate(zip(keys, point_keys, strict=True)):
        groups_ours.setdefault(k, set()).add(i)
        groups_theirs.setdefault(pk, set()).add(i)
    assert sorted(map(sorted, groups_ours.values())) == sorted(map(sorted, groups_theirs.values()))
    assert len(groups_ours) < len(points)  # the twins did collide
    # the history's keys are the same function
    encoded.update([(i, p, "COMPLETE", 0.1) for i, p in enumerate(points)])
    assert encoded.keys == keys


def test_state_changes_take_effect():
    space = small_space()
    grid = list(space.grid())
    encoded = EncodedHistory(space)
    encoded.update([(i, p, "COMPLETE", 0.5) for i, p in enumerate(grid[:18])])
    last = grid[18]
    key = encoded.key_of(last)
    encoded.update([(18, last, "WAITING", None)])
    assert encoded.is_taken(key) and encoded.n_finished == 18
    tpe = TPESuggester(n_startup_jobs=5)
    assert tpe.suggest_encoded(encoded, 3, seed=1) == []  # all 19 taken
    encoded.update([(18, None, "FAILED", None)])  # retried: free again
    assert not encoded.is_taken(key)
    assert tpe.suggest_encoded(encoded, 3, seed=1) == [last]
    assert RandomSuggester().suggest_encoded(encoded, 3, seed=1) == [last]
    encoded.update([(18, None, "RUNNING", None)])
    assert encoded.is_taken(key) and tpe.suggest_encoded(encoded, 3, seed=1) == []
    encoded.update([(18, None, "COMPLETE", 0.9)])
    assert encoded.n_finished == 19
    losses = history_losses(encoded.states, encoded.values)
    assert losses[18] == -0.9 and losses.min() == -0.9
    encoded.sync([(i, None, "COMPLETE", 0.5) for i in range(18)])  # 18 left the history
    assert 18 not in encoded and not encoded.is_taken(key)
    assert tpe.suggest_encoded(encoded, 3, seed=1) == [last]


def test_update_errors_change_nothing():
    space = small_space()
    encoded = EncodedHistory(space)
    encoded.update([(0, space.grid_point(0), "COMPLETE", 0.5)])
    before = EncodedHistory(space)
    before.update([(0, space.grid_point(0), "COMPLETE", 0.5)])
    with pytest.raises(KeyError, match="trial 7 is not known"):
        encoded.update([(1, space.grid_point(1), "COMPLETE", 0.1), (7, None, "FAILED", None)])
    with pytest.raises(ValueError, match="state must be one of"):
        encoded.update([(0, None, "DONE", None)])
    assert encoded.same_as(before)
    assert encoded.missing([0, 1, 7]) == [1, 7]
    assert encoded.known_ids() == frozenset({0})


def test_cached_and_cold_suggestions_are_identical():
    """The service's path (an encoded history kept and synced between rounds) and the
    stateless one (rebuilt from the list) agree suggestion for suggestion."""
    space = get_space("pinto-cox")
    history = random_history(space, 60, seed=7)
    tpe = TPESuggester()
    cached = EncodedHistory(space)
    for round_ in range(4):
        # as the service does: states for all, parameters only for the ids it lacks
        missing = set(cached.missing(range(len(history))))
        cached.sync(
            [(i, h.raw if i in missing else None, h.state, h.value) for i, h in enumerate(history)]
        )
        warm = tpe.suggest_encoded(cached, 8, seed=round_)
        cold = tpe.suggest(space, history, 8, seed=round_)
        assert warm == cold and len(warm) == 8
        # the round's suggestions start running, one of the old trials fails
        history = [*history, *(HistoryItem(p, "RUNNING") for p in warm)]
        history[round_] = HistoryItem(history[round_].raw, "FAILED")


def test_a_space_without_free_parameters_has_one_point() -> None:
    fixed = parse_space(
        {
            "name": "one-point",
            "input_size": 28,
            "layers": [{"n_filters": 8, "filter_size": 5, "pool_size": 3, "norm_size": 3}],
        }
    )
    assert fixed.labels == ()
    first = RandomSuggester().suggest(fixed, [], 3, seed=0)
    assert first == [{}]
    done = [HistoryItem(raw={}, state="COMPLETE", value=0.5)]
    assert RandomSuggester().suggest(fixed, done, 1, seed=0) == []
    assert TPESuggester(n_startup_jobs=0).suggest(fixed, done, 1, seed=0) == []
