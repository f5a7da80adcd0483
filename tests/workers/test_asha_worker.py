"""The worker side of ASHA (issue 14 item 1): nested per-class fit subsets, and real studies
over HTTP (a uvicorn coordinator on a loopback port, a real worker daemon, real torch on
scikit-learn's digits) whose rung trials spend their rung's resource: ``screen`` fits on
``train_per_class`` images per class, ``train`` runs that many epochs; finals spend max."""

from __future__ import annotations

import numpy as np
import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from protocol.options import ScheduleOptions
from service.models import Role
from tests.helpers.archs import one_layer_space
from tests.helpers.coordinator import ADMIN_TOKEN, make_token, migrate
from tests.helpers.waiting import wait_finished
from tests.helpers.worker import worker_thread
from workers.datasets import load_dataset
from workers.stages import _splits, cap_per_class


def test_cap_per_class_is_nested_deterministic_and_per_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=400)
    y[y == 3] = 2  # class 3 absent, class 2 large
    idx = np.flatnonzero(rng.random(400) < 0.8)
    previous: set[int] = set()
    for n in (1, 5, 20, 60, 1000):
        kept = cap_per_class(idx, y, n, seed=7)
        assert np.all(np.diff(kept) > 0) and set(kept) <= set(idx)
        for c in np.unique(y[idx]):
            assert np.sum(y[kept] == c) == min(n, np.sum(y[idx] == c))
        assert previous <= set(kept)  # a rung's images include the rung below's
        previous = set(kept)
        assert np.array_equal(kept, cap_per_class(idx, y, n, seed=7))  # deterministic
    assert previous == set(idx)  # n above every class size: everything
    assert not np.array_equal(cap_per_class(idx, y, 5, 7), cap_per_class(idx, y, 5, 8))
    with pytest.raises(ValueError, match="train_per_class must be >= 1"):
        cap_per_class(idx, y, 0, seed=7)


def test_the_scored_split_is_the_same_at_every_rung():
    ds = load_dataset("builtin:digits", color="gray")
    fit_all, scored_all, _ = _splits(ds, False, 0.2, 3)
    for n in (10, 40):
        fit, scored, split = _splits(ds, False, 0.2, 3, train_per_class=n)
        assert split == "validation" and np.array_equal(scored, scored_all)
        assert set(fit) <= set(fit_all) and np.bincount(ds.y[fit]).max() == n


# Four one-layer models (a grid over the filter count) on 16 px digits: cheap to score.
SPACE = one_layer_space(
    "asha-e2e",
    16,
    {"type": "choice", "options": [4, 8, 12, 16]},
    3,
    train={"lr": 0.01, "batch_size": 32, "dropout": 0.0},
)


@pytest.mark.slow
@pytest.mark.e2e
def test_rung_trials_spend_their_rungs_resource(sqlite_url, tmp_path):
    """A screen study (train_per_class 10 -> 20 -> 40) and a train study (epochs 1 -> 2
    -> 4), 4 configurations each, on 60 training images per class, run by one real
    worker daemon: every search trial's metrics show its rung's resource, the scored
    split never changes, promotions happened and read their features from the worker's
    cache, and finals spend max."""
    migrate(sqlite_url)
    live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN)
    token = make_token(sqlite_url, Role.WORKER)
    screen_schedule = {"resource": "train_per_class", "min": 10, "max": 40, "eta": 2}
    train_schedule = {"resource": "epochs", "min": 1, "max": 4, "eta": 2}
    common = {
        "dataset": "builtin:digits",
        "space": SPACE,
        "algorithm": "grid",
        "max_trials": 4,
        "max_parallel": 4,
        "top_k": 1,
        # 48 per class in the search's fit split, 60 for finals: more than max (40).
        "evaluator_options": {"max_per_class": {"train": 60, "test": 10}},
    }
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            screen = admin.create_study(name="s", schedule=screen_schedule, **common).id
            train = admin.create_study(
                name="t", evaluator="train", schedule=train_schedule, **common
            ).id
            work = worker_thread(
                live.base_url, token, tmp_path / "w", idle_exit_seconds=3.0, poll_seconds=0.2
            )
            with work:
                wait_finished(admin, screen, timeout=240)
                wait_finished(admin, train, timeout=240)
            trials = {sid: list(admin.trials(sid)) for sid in (screen, train)}
    finally:
        stop_coordinator(live)

    levels = ScheduleOptions.model_validate(screen_schedule).resources()
    assert levels == [10, 20, 40]
    rows = trials[screen]
    assert all(t.state == "COMPLETE" for t in rows), [(t.state, t.reason) for t in rows]
    search = [t for t in rows if not t.is_final]
    assert sorted(t.rung for t in search) == [0, 0, 0, 0, 1, 1, 2]
    scored = {t.metrics["n_scored"] for t in search}
    assert len(scored) == 1  # the validation split is the same at every rung
    for t in search:
        assert t.metrics["train_per_class"] == levels[t.rung]
        assert t.metrics["n_fit"] == 10 * levels[t.rung]  # 10 digit classes
        assert t.value > 0.3  # chance is 0.1
        # The worker's feature cache: a promotion extracts only the fit images its rung
        # adds; the validation split and the rung below's fit images come from the cache.
        below = 10 * levels[t.rung - 1] if t.rung else 0
        assert t.metrics["cached_images"] == (t.metrics["n_scored"] + below if t.rung else 0)
    (final,) = [t for t in rows if t.is_final]
    assert final.metrics["train_per_class"] == 40 and final.metrics["n_fit"] == 400
    assert 0 < final.metrics["cached_images"] < final.metrics["n_images"]  # the test split is new
    assert final.final_of_id == next(t.id for t in search if t.rung == 2)

    epochs = ScheduleOptions.model_validate(train_schedule).resources()
    assert epochs == [1, 2, 4]
    rows = trials[train]
    assert all(t.state == "COMPLETE" for t in rows), [(t.state, t.reason) for t in rows]
    search = [t for t in rows if not t.is_final]
    assert sorted(t.rung for t in search) == [0, 0, 0, 0, 1, 1, 2]
    for t in search:
        assert t.metrics["epochs"] == epochs[t.rung]
        assert [step for step, _ in t.intermediate] == list(range(1, epochs[t.rung] + 1))
    (final,) = [t for t in rows if t.is_final]
    assert final.metrics["epochs"] == 4
