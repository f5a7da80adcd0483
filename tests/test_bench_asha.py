"""The pure pieces of bench/asha.py: the worker-second curves it reports, and the Optuna
view of a space (a real Optuna study asking real points of the built-in space)."""

from __future__ import annotations

import optuna
import pytest

from bench.asha import (
    PER_CLASS,
    QUICK_PER_CLASS,
    QUICK_SCHEDULE,
    SCHEDULE,
    Evaluation,
    RowRun,
    Setup,
    best_at,
    best_curve,
    load_runs,
    median_curve,
    merge_runs,
    save_runs,
    seconds_to_reach,
    suggest_raw,
)
from search_space import get_space


def test_curve_counts_every_second_but_only_full_results() -> None:
    evals = [
        Evaluation(1.0, 0.50, False, "a0"),  # a lower rung: costs, adds no point
        Evaluation(2.0, None, False, "x"),  # infeasible
        Evaluation(3.0, 0.40, True, "b"),
        Evaluation(1.5, 0.90, False, "c0"),  # better, but on fewer images
        Evaluation(2.5, 0.45, True, "c"),
        Evaluation(4.0, 0.99, True, "d"),  # ends at 14.0: past a budget of 12
    ]
    curve = best_curve(evals, budget=12.0)
    assert curve == [(6.0, 0.40, "b"), (10.0, 0.45, "c")]
    assert best_at(curve, 5.9) is None
    assert best_at(curve, 6.0) == 0.40
    assert best_at(curve, 11.0) == 0.45
    assert seconds_to_reach(curve, 0.42) == 10.0
    assert seconds_to_reach(curve, 0.5) is None
    # With room for the last one it counts, and the best keeps the ref of its trial.
    assert best_curve(evals, budget=14.0)[-1] == (14.0, 0.99, "d")


def test_a_worse_full_result_keeps_the_best_so_far() -> None:
    evals = [Evaluation(1.0, 0.6, True, 1), Evaluation(1.0, 0.3, True, 2)]
    assert best_curve(evals, 10.0) == [(1.0, 0.6, 1), (2.0, 0.6, 1)]


def test_median_curve_counts_no_result_as_zero() -> None:
    a = [(1.0, 0.5, None), (3.0, 0.7, None)]
    b = [(2.0, 0.6, None)]
    c: list[tuple[float, float, None]] = []
    med = median_curve([a, b, c], [0.5, 1.0, 2.0, 3.0])
    assert [m[1] for m in med] == [0.0, 0.0, 0.5, 0.6]


@pytest.mark.parametrize(
    ("schedule", "per_class"), [(SCHEDULE, PER_CLASS), (QUICK_SCHEDULE, QUICK_PER_CLASS)]
)
def test_top_rung_is_the_whole_fit_split(schedule: dict, per_class: dict) -> None:
    """The flat rows' budget equals ASHA's top rung: the 80% of the non-test images per
    class that the validation split leaves for the fit."""
    setup = Setup("imagefolder:/x.zip", per_class, schedule, 1.0)
    levels = setup.resources()
    assert levels[-1] == round(per_class["train"] * 0.8)
    assert levels[0] == schedule["min"] and levels == sorted(set(levels))


def test_optuna_points_are_points_of_the_space() -> None:
    space = get_space("pinto-cox")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths = set()
    for _ in range(30):
        trial = study.ask()
        raw = suggest_raw(space, trial)
        # Exactly the active labels, each in range: normalize refuses anything else.
        assert space.normalize(raw) == raw
        depth = raw["depth"] + 1
        depths.add(depth)
        assert all(
            not label.startswith("d") or label == "depth" or label.startswith(f"d{depth}_")
            for label in raw
        )
        space.to_arch(raw, input_channels=3)
        study.tell(trial, 0.0)
    assert depths == {1, 2, 3}


def test_optuna_view_refuses_what_it_cannot_map() -> None:
    space = get_space("bergstra13")  # has uniform / lognormal parameters
    study = optuna.create_study()
    with pytest.raises(ValueError, match="only choice parameters"):
        suggest_raw(space, study.ask())


def test_a_saved_run_reads_back_with_only_the_seeds_every_row_finished(tmp_path) -> None:
    setup = Setup("imagefolder:/x.zip", PER_CLASS, SCHEDULE, 60.0)
    runs = {
        "a": [
            RowRun("a", 0, [Evaluation(1.5, 0.4, True, 7)], {7: 0.38}, 9.0, 1, 0),
            RowRun("a", 1, [Evaluation(2.0, None, False, 8)], {}, 3.0, 1, 0),
        ],
        "b": [RowRun("b", 0, [Evaluation(1.0, 0.5, True, 3)], {3: 0.45}, 5.0, 1, 0)],
    }
    path = tmp_path / "runs.json"
    save_runs(runs, setup, False, 12.0, path)
    back, setup2, quick, wall = load_runs(path)
    assert setup2 == setup and quick is False and wall == 12.0
    assert [r.seed for r in back["a"]] == [0] and [r.seed for r in back["b"]] == [0]
    assert back["a"][0].evals == runs["a"][0].evals
    assert back["a"][0].best_test(60.0) == 0.38


def test_runs_of_two_files_merge_by_seed_and_refuse_a_repeat() -> None:
    setup = Setup("imagefolder:/x.zip", PER_CLASS, SCHEDULE, 60.0)
    late = {"a": [RowRun("a", 4, [], {}, 1.0, 0, 0)]}
    early = {"a": [RowRun("a", 0, [], {}, 1.0, 0, 0)]}
    runs, _, _, wall = merge_runs([(late, setup, False, 10.0), (early, setup, False, 5.0)])
    assert [r.seed for r in runs["a"]] == [0, 4] and wall == 15.0
    with pytest.raises(ValueError, match="twice"):
        merge_runs([(early, setup, False, 1.0), (early, setup, False, 1.0)])
    other = Setup("imagefolder:/x.zip", PER_CLASS, SCHEDULE, 30.0)
    with pytest.raises(ValueError, match="different setups"):
        merge_runs([(early, setup, False, 1.0), (late, other, False, 1.0)])
