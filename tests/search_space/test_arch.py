"""Architecture as data: JSON round trip, content hash, shape walk, validation."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from search_space.arch import (
    Activation,
    Architecture,
    FBCorr,
    InfeasibleArchitecture,
    Layer,
    LNorm,
    LPool,
    Readout,
    TrainSettings,
    validate,
    walk,
)
from search_space.presets import FG11_HT_L3_1ST, get_preset

FULL = replace(
    FG11_HT_L3_1ST,
    layers=(
        replace(FG11_HT_L3_1ST.layers[0], activation=Activation(-math.inf, 1.0)),
        *FG11_HT_L3_1ST.layers[1:],
    ),
    readout=Readout("logistic", 1e-3),
    train=TrainSettings(lr=3e-4, weight_decay=0.0, dropout=0.25, batch_size=32, epochs=5),
    preprocess="div255",
)


def _reject_constants(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


def _shuffled(obj: Any, rng: random.Random) -> Any:
    """The same document with every object's keys in a random order."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [_shuffled(v, rng) for v in obj]
    return obj


def _layer(n: int = 8, fs: int = 3, pool: int = 3, norm: int = 3) -> Layer:
    return Layer(FBCorr(n, fs), Activation(), LPool(pool, 1.0, 2), LNorm(norm))


# -- JSON --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [FG11_HT_L3_1ST, FULL], ids=["fg11", "full"])
def test_json_round_trip_keeps_infinities(arch: Architecture) -> None:
    text = arch.to_json()
    doc = json.loads(text, parse_constant=_reject_constants)  # strict JSON: no Infinity
    assert doc["layers"][1]["activation"]["max_out"] == "inf"
    back = Architecture.from_json(text)
    assert back == arch
    assert math.isinf(back.layers[1].activation.max_out)
    assert back.content_hash() == arch.content_hash()
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_negative_infinity_round_trips() -> None:
    doc = FULL.to_dict()
    assert doc["layers"][0]["activation"]["min_out"] == "-inf"
    assert Architecture.from_dict(doc).layers[0].activation.min_out == -math.inf


def test_hash_ignores_key_order() -> None:
    doc = FULL.to_dict()
    rng = random.Random(0)
    hashes = {Architecture.from_dict(_shuffled(doc, rng)).content_hash() for _ in range(5)}
    assert hashes == {FULL.content_hash()}
    assert FULL.content_hash() == hashlib.sha256(FULL.to_json().encode()).hexdigest()


def test_hash_ignores_number_spelling() -> None:
    """hyperopt gives ints for choice([1, 10]) and 3.0 for quniform; NumPy gives np.int64.
    Equal architectures must hash equal whatever the spelling (dedup depends on it)."""
    spelled = Architecture(
        input_size=np.int64(200),
        input_channels=1.0,
        lnorm0=LNorm(size=9.0, remove_mean=0, stretch=10, threshold=np.float32(1.0)),
        layers=[
            Layer(
                FBCorr(np.int32(64), 3.0),
                Activation(0, math.inf),
                LPool(7, 1, 2),
                LNorm(5, False, 0.1, 1),
            ),
            Layer(
                FBCorr(128, 5), Activation(-0.0, float("inf")), LPool(5, 1, 2.0), LNorm(7, 0, 1, 1)
            ),
            Layer(
                FBCorr(256, 5), Activation(0.0, math.inf), LPool(7, 10, 2), LNorm(3, False, 10, 1)
            ),
        ],
        seed=np.int64(42),
    )
    assert spelled == FG11_HT_L3_1ST
    assert spelled.content_hash() == FG11_HT_L3_1ST.content_hash()
    assert hash(spelled) == hash(FG11_HT_L3_1ST)
    assert type(spelled.lnorm0.size) is int and type(spelled.lnorm0.stretch) is float
    assert spelled.lnorm0.remove_mean is False


@pytest.mark.parametrize(
    "variant",
    [
        replace(FG11_HT_L3_1ST, seed=43),
        replace(FG11_HT_L3_1ST, input_size=201),
        replace(FG11_HT_L3_1ST, preprocess="div255"),
        replace(FG11_HT_L3_1ST, lnorm0=None),
        replace(FG11_HT_L3_1ST, lnorm0=LNorm(9, True, 10.0, 1.0)),
        replace(FG11_HT_L3_1ST, lnorm0=LNorm(9, False, 10.0, 0.1)),
        replace(FG11_HT_L3_1ST, layers=FG11_HT_L3_1ST.layers[:2]),
        replace(FG11_HT_L3_1ST, readout=Readout("svm")),
        replace(FG11_HT_L3_1ST, train=TrainSettings()),
        replace(
            FG11_HT_L3_1ST,
            layers=(
                replace(FG11_HT_L3_1ST.layers[0], lpool=LPool(7, 2.0, 2)),
                *FG11_HT_L3_1ST.layers[1:],
            ),
        ),
        replace(
            FG11_HT_L3_1ST,
            layers=(
                replace(FG11_HT_L3_1ST.layers[0], activation=Activation(0.0, 1.0)),
                *FG11_HT_L3_1ST.layers[1:],
            ),
        ),
    ],
)
def test_different_architectures_hash_differently(variant: Architecture) -> None:
    assert variant != FG11_HT_L3_1ST
    assert variant.content_hash() != FG11_HT_L3_1ST.content_hash()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("layers"),
        lambda d: d["layers"][0].pop("fbcorr"),
        lambda d: d["layers"][0]["lpool"].update(bogus=1),
        lambda d: d.update(lnorm0={"size": 3, "colour": "red"}),
        lambda d: d["layers"][0]["fbcorr"].update(size="3"),
        lambda d: d["layers"][0]["fbcorr"].update(n_filters=3.5),
        lambda d: d["lnorm0"].update(threshold=float("nan")),
        lambda d: d["lnorm0"].update(remove_mean=2),
        lambda d: d.update(seed="forty-two"),
    ],
)
def test_malformed_documents_raise_value_error(mutate: Any) -> None:
    doc = FG11_HT_L3_1ST.to_dict()
    mutate(doc)
    with pytest.raises(ValueError):
        Architecture.from_dict(doc)


# -- walk --------------------------------------------------------------------------------
def test_walk_fg11_shapes() -> None:
    report = walk(FG11_HT_L3_1ST)
    assert report.shapes == (
        ("input", 200, 200, 1),
        ("L0 lnorm", 192, 192, 1),
        ("L1 fbcorr", 190, 190, 64),
        ("L1 lpool", 92, 92, 64),
        ("L1 lnorm", 88, 88, 64),
        ("L2 fbcorr", 84, 84, 128),
        ("L2 lpool", 40, 40, 128),
        ("L2 lnorm", 34, 34, 128),
        ("L3 fbcorr", 30, 30, 256),
        ("L3 lpool", 12, 12, 256),
        ("L3 lnorm", 10, 10, 256),
    )
    assert report.n_features == 25_600
    assert report.n_params == 64 * 3 * 3 * 1 + 128 * 5 * 5 * 64 + 256 * 5 * 5 * 128
    assert report.activation_bytes == 4 * 190 * 190 * 64  # the L1 fbcorr map is the largest
    assert report.flops > 2 * 30 * 30 * 256 * 5 * 5 * 128  # at least the L3 correlation


def test_walk_smallest_fg11_input_is_121() -> None:
    assert walk(get_preset("fg11-ht-l3-1st", input_size=121)).shapes[-1] == ("L3 lnorm", 1, 1, 256)
    with pytest.raises(InfeasibleArchitecture):
        walk(get_preset("fg11-ht-l3-1st", input_size=120))


def test_walk_non_square_input() -> None:
    arch = Architecture(30, 1, LNorm(3), (_layer(pool=5),))
    # 30 x 13 -> lnorm 28 x 11 -> fbcorr 26 x 9 -> pool 5 s2: 11 x 3 -> lnorm 9 x 1
    assert walk(arch, (30, 13)).shapes[-1] == ("L1 lnorm", 9, 1, 8)


# -- validate ----------------------------------------------------------------------------
def test_validate_returns_the_report() -> None:
    assert validate(FG11_HT_L3_1ST) == walk(FG11_HT_L3_1ST)


def test_vanishing_map_is_infeasible_with_a_reason() -> None:
    with pytest.raises(InfeasibleArchitecture) as info:
        validate(get_preset("fg11-ht-l3-1st", input_size=64))
    assert "does not fit" in info.value.reason
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work


def test_too_many_features_is_infeasible() -> None:
    validate(FG11_HT_L3_1ST, max_features=25_600)
    with pytest.raises(InfeasibleArchitecture, match="features"):
        validate(FG11_HT_L3_1ST, max_features=25_599)
    wide = Architecture(200, 3, None, (_layer(n=256, pool=2, norm=1),))
    with pytest.raises(InfeasibleArchitecture, match="100000"):
        validate(wide)  # 99 x 99 x 256 features > the default cap


def test_too_many_params_is_infeasible() -> None:
    n_params = walk(FG11_HT_L3_1ST).n_params
    validate(FG11_HT_L3_1ST, max_params=n_params)
    with pytest.raises(InfeasibleArchitecture, match="parameters"):
        validate(FG11_HT_L3_1ST, max_params=n_params - 1)


NONSENSE = [
    replace(FG11_HT_L3_1ST, input_size=0),
    replace(FG11_HT_L3_1ST, input_channels=-1),
    replace(FG11_HT_L3_1ST, lnorm0=LNorm(0)),
    replace(FG11_HT_L3_1ST, lnorm0=LNorm(3, stretch=0.0)),
    replace(FG11_HT_L3_1ST, lnorm0=LNorm(3, stretch=math.inf)),
    replace(FG11_HT_L3_1ST, lnorm0=LNorm(3, threshold=-1.0)),
    replace(FG11_HT_L3_1ST, layers=(Layer(FBCorr(0, 3), Activation(), LPool(3), LNorm(3)),)),
    replace(
        FG11_HT_L3_1ST, layers=(Layer(FBCorr(8, 3), Activation(), LPool(3, 1.0, 0), LNorm(3)),)
    ),
    replace(FG11_HT_L3_1ST, layers=(Layer(FBCorr(8, 3), Activation(), LPool(3, -2.0), LNorm(3)),)),
    replace(
        FG11_HT_L3_1ST, layers=(Layer(FBCorr(8, 3), Activation(), LPool(3, math.inf), LNorm(3)),)
    ),
    replace(
        FG11_HT_L3_1ST, layers=(Layer(FBCorr(8, 3), Activation(1.0, 0.0), LPool(3), LNorm(3)),)
    ),
    replace(FG11_HT_L3_1ST, readout=Readout("knn")),  # type: ignore[arg-type]
    replace(FG11_HT_L3_1ST, preprocess="zscore"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("arch", NONSENSE, ids=range(len(NONSENSE)))
def test_nonsense_values_raise_value_error_not_infeasible(arch: Architecture) -> None:
    with pytest.raises(ValueError) as info:
        validate(arch)
    assert not isinstance(info.value, InfeasibleArchitecture)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LNorm(3.5),
        lambda: LNorm(3, threshold=float("nan")),
        lambda: LNorm(3, remove_mean="yes"),
        lambda: FBCorr(True, 3),
        lambda: LPool(3, order=float("nan")),
        lambda: LPool(3, stride=math.inf),
        lambda: Activation(float("nan"), 1.0),
        lambda: Architecture("200", 1, None, ()),
        lambda: TrainSettings(batch_size=32.5),
        lambda: Readout("ridge", l2="auto"),
    ],
)
def test_constructors_reject_values_of_the_wrong_type(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_summary_names_the_layers() -> None:
    line = FG11_HT_L3_1ST.summary()
    assert line.startswith("200px | L0 norm9 | 64x3x3 relu pool7 p1 norm5")
    assert line.endswith("256x5x5 relu pool7 p10 norm3")


# -- cost caps (EvaluatorOptions.max_gflops_per_image / max_activation_mb_per_image) ------
def test_cost_caps_make_a_huge_candidate_infeasible_with_the_cap_and_value() -> None:
    huge = replace(FG11_HT_L3_1ST, input_size=4000)  # ~3.3 TFLOP, ~3.9 GiB map per image
    report = walk(huge)
    with pytest.raises(InfeasibleArchitecture) as info:
        validate(huge, max_features=10**12)
    assert "max_gflops_per_image=200" in info.value.reason
    assert f"{report.gflops:.4g} GFLOP per image" in info.value.reason
    with pytest.raises(InfeasibleArchitecture) as info:
        validate(huge, max_features=10**12, max_gflops_per_image=math.inf)
    assert "max_activation_mb_per_image=2048" in info.value.reason
    assert f"{report.activation_mb:.4g} MiB" in info.value.reason
    validate(huge, max_features=10**12, max_gflops_per_image=1e4, max_activation_mb_per_image=4e3)


def test_cost_caps_are_exact_and_adjustable() -> None:
    report = walk(FG11_HT_L3_1ST)
    assert report.gflops == pytest.approx(4.571, abs=1e-3)  # docs/design.md section 2
    validate(FG11_HT_L3_1ST, max_gflops_per_image=report.gflops)
    with pytest.raises(InfeasibleArchitecture, match=r"max_gflops_per_image=4\.5"):
        validate(FG11_HT_L3_1ST, max_gflops_per_image=4.5)
    validate(FG11_HT_L3_1ST, max_activation_mb_per_image=report.activation_mb)
    with pytest.raises(InfeasibleArchitecture, match="max_activation_mb_per_image=8"):
        validate(FG11_HT_L3_1ST, max_activation_mb_per_image=8)


def test_default_cost_caps_live_in_the_evaluator_options() -> None:
    import inspect

    from protocol.options import EvaluatorOptions

    defaults = EvaluatorOptions()
    params = inspect.signature(validate).parameters
    assert params["max_gflops_per_image"].default == defaults.max_gflops_per_image == 200
    assert params["max_activation_mb_per_image"].default == defaults.max_activation_mb_per_image
    assert defaults.max_activation_mb_per_image == 2048


def test_the_preset_and_sensible_builtin_candidates_pass_the_default_cost_caps() -> None:
    from search_space import list_spaces

    report = validate(FG11_HT_L3_1ST)  # 4.57 GFLOP, 8.8 MiB: far below the caps
    assert report.gflops < 10 and report.activation_mb < 10
    for space in list_spaces():
        for raw in space.sample_many(300, seed=5):
            for channels in (1, 3):
                arch = space.to_arch(raw, input_channels=channels)
                try:  # infeasible for another reason (a vanishing map, the feature cap)?
                    validate(
                        arch, max_gflops_per_image=math.inf, max_activation_mb_per_image=math.inf
                    )
                except InfeasibleArchitecture:
                    continue
                validate(arch)  # then the default cost caps must not refuse it
