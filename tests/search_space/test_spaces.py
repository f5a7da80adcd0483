"""Space documents: parsing, error messages, compilation, sampling, grids, built-ins."""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from typing import Any

import pytest

from search_space import (
    DEFAULT_SPACE,
    PRESETS,
    InfeasibleArchitecture,
    SpaceError,
    build_architecture,
    get_space,
    list_spaces,
    parse_space,
    preset_raw,
    validate,
)
from search_space.space import MAX_CHOICE_NESTING, MAX_DOCUMENT_BYTES

BUILTINS = ("fg11", "pinto-cox", "bergstra13")


def choice(*options: Any) -> dict[str, Any]:
    return {"type": "choice", "options": list(options)}


def tiny_doc() -> dict[str, Any]:
    """A one-layer space with two choices: 4 points."""
    return {
        "name": "tiny",
        "input_size": 32,
        "layers": [
            {
                "n_filters": choice(8, 16),
                "filter_size": 3,
                "pool_size": choice(2, 3),
                "norm_size": 3,
            }
        ],
    }


def small_discrete_doc() -> dict[str, Any]:
    """Depth 1 or 2; depth 1 has 2 * 3 * (1 + 2) = 18 points, depth 2 one point: 19."""
    fixed = {"n_filters": 8, "filter_size": 3, "pool_size": 2, "norm_size": 3}
    return {
        "name": "small",
        "input_size": 48,
        "depth": choice(
            {
                "layers": [
                    {
                        "n_filters": choice(8, 16),
                        "filter_size": {"type": "quniform", "low": 2.5, "high": 5.5, "q": 1},
                        "pool_size": choice(2, {"type": "randint", "low": 3, "high": 5}),
                        "norm_size": 3,
                    }
                ]
            },
            {"layers": [dict(fixed), dict(fixed)]},
        ),
    }


def error_of(doc: Any) -> SpaceError:
    with pytest.raises(SpaceError) as info:
        parse_space(doc)
    return info.value


# -- built-ins -------------------------------------------------------------------------
def test_builtins_are_listed_with_the_default_first():
    names = [s.name for s in list_spaces()]
    assert names[0] == DEFAULT_SPACE == "pinto-cox"
    assert sorted(names) == sorted(BUILTINS)
    with pytest.raises(KeyError, match="unknown space 'nope'"):
        get_space("nope")


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_parses_compiles_and_round_trips(name):
    space = get_space(name)
    assert space.description
    doc = space.to_dict()
    text = json.dumps(doc, allow_nan=False)  # JSON-safe: infinities are "inf" strings
    again = parse_space(text)
    assert again == space
    assert again.to_dict() == doc
    assert again.labels == space.labels
    assert parse_space(again.to_dict()).digest() == space.digest()
    # hyperopt accepts the expression: every label once (Domain raises on duplicates)
    assert set(space.domain.params) == set(space.labels)
    described = space.describe()
    assert all(label in described for label in space.labels)


def test_builtin_discreteness():
    assert get_space("fg11").is_discrete
    assert get_space("pinto-cox").is_discrete
    assert not get_space("bergstra13").is_discrete
    # 4 lnorm0 labels of 4*2*3*3 and per layer 4*2*2*4*3*4*2*3*3 * n_filters
    per_layer = 4 * 2 * 2 * 4 * 3 * 4 * 2 * 3 * 3
    assert get_space("fg11").grid_size == (4 * 2 * 3 * 3) * per_layer**3 * 3 * 4 * 5


@pytest.mark.parametrize("name", BUILTINS)
def test_samples_resolve_to_buildable_or_infeasible_architectures(name):
    space = get_space(name)
    raws = space.sample_many(1000, seed=7)
    reasons = Counter()
    for raw in raws:
        arch = space.to_arch(raw)
        try:
            validate(arch)
        except InfeasibleArchitecture as exc:
            assert exc.reason.strip()
            reasons["infeasible"] += 1
        else:
            reasons["ok"] += 1
    assert reasons["ok"] > 500, reasons


@pytest.mark.parametrize("name", BUILTINS)
def test_own_resolution_matches_hyperopt_space_eval(name):
    from hyperopt import space_eval

    space = get_space(name)
    for raw in space.sample_many(50, seed=3):
        assert build_architecture(space_eval(space.expr, raw)) == space.to_arch(raw)


def test_sample_is_reproducible_and_normalized():
    space = get_space("bergstra13")
    assert space.sample(5) == space.sample(5)
    assert space.sample(5) != space.sample(6)
    raw = space.sample(5)
    assert space.normalize(raw) == raw
    assert all(type(v) in (int, float) for v in raw.values())
    json.dumps(raw, allow_nan=False)


def test_pinto_cox_depths_are_equally_likely_and_reachable():
    space = get_space("pinto-cox")
    n = 3000
    raws = space.sample_many(n, seed=11)
    depths = Counter(space.to_arch(r).depth for r in raws)
    sigma = math.sqrt(n * (1 / 3) * (2 / 3))
    for d in (1, 2, 3):
        assert abs(depths[d] - n / 3) < 4 * sigma, depths  # binomial, 4 sigma
    # the input size per depth makes every depth mostly feasible (docs/design.md section 3)
    feasible = Counter()
    for raw in raws[:1500]:
        arch = space.to_arch(raw)
        try:
            validate(arch)
        except InfeasibleArchitecture:
            continue
        feasible[arch.depth] += 1
    sampled = Counter(space.to_arch(r).depth for r in raws[:1500])
    for d in (1, 2, 3):
        assert feasible[d] / sampled[d] > 0.4, (d, feasible, sampled)


def test_labels_are_unique_and_prefixed():
    fg11 = get_space("fg11").labels
    assert len(fg11) == len(set(fg11)) == 4 + 3 * 10
    assert all(re.fullmatch(r"lnorm0_\w+|l[123]_\w+", label) for label in fg11)
    assert "l1_n_filters" in fg11 and "l3_norm_threshold" in fg11
    assert "l1_pool_stride" not in fg11  # a constant is not a parameter

    pc = get_space("pinto-cox").labels
    assert len(pc) == len(set(pc))
    assert "depth" in pc and "d2_input_size" in pc and "d3_l3_n_filters" in pc
    for label in pc:
        m = re.fullmatch(r"d(\d)_l(\d)_\w+", label)
        if m:
            assert int(m[2]) <= int(m[1])  # layer i exists only in depths >= i
        else:
            assert re.fullmatch(r"depth|d[123]_input_size|lnorm0_\w+", label), label

    b13 = get_space("bergstra13").labels
    assert "d1_l1_pool_order_o2" in b13  # the lognormal nested in option 2 of p
    assert "readout_l2" in b13


def test_trial_vals_carry_every_label():
    space = get_space("pinto-cox")
    raw = space.sample(1)
    vals = space.trial_vals(raw)
    assert list(vals) == list(space.labels)
    active = {label for label, v in vals.items() if v}
    assert active == set(raw)
    depth = space.to_arch(raw).depth
    assert all(
        vals[label] == []
        for label in space.labels
        if label.startswith("d") and label != "depth" and not label.startswith(f"d{depth}_")
    )


def test_fg11_preset_is_a_point_of_fg11():
    raw = preset_raw("fg11-ht-l3-1st")
    space = get_space("fg11")
    arch = space.to_arch(raw)
    assert arch == PRESETS["fg11-ht-l3-1st"]
    assert validate(arch).n_features == 25_600
    assert space.contains(arch)
    assert raw["l1_n_filters"] == 2  # 64 is option 2 of {16, 32, 64}
    # not a point of pinto-cox: 200px is no depth-3 input size there
    with pytest.raises(SpaceError, match="not a point of space 'pinto-cox'"):
        preset_raw("fg11-ht-l3-1st", "pinto-cox")


# -- grids -----------------------------------------------------------------------------
def test_grid_of_a_small_discrete_space():
    space = parse_space(small_discrete_doc())
    assert space.is_discrete and space.grid_size == 19
    points = list(space.grid())
    assert len(points) == 19
    archs = {space.to_arch(p).content_hash() for p in points}
    assert len(archs) == 19
    assert all(space.normalize(p) == p for p in points)
    assert [space.grid_index(p) for p in points] == list(range(19))
    # every prior draw (hyperopt's own sampler) is one of the grid points
    keys = {space.point_key(p) for p in points}
    drawn = {space.point_key(r) for r in space.sample_many(500, seed=1)}
    assert drawn == keys
    filter_sizes = {space.to_arch(p).layers[0].fbcorr.size for p in points if len(p) > 2}
    assert filter_sizes == {3, 4, 5}


def test_grid_of_a_continuous_space_is_refused():
    space = get_space("bergstra13")
    assert space.grid_size is None
    with pytest.raises(SpaceError, match=r"space 'bergstra13' is continuous \(labels "):
        space.grid()
    with pytest.raises(SpaceError, match="grid points, more than"):
        get_space("fg11").grid()


# -- documents -------------------------------------------------------------------------
def test_tiny_space_and_defaults():
    space = parse_space(tiny_doc())
    assert space.labels == ("l1_n_filters", "l1_pool_size")
    arch = space.to_arch({"l1_n_filters": 1, "l1_pool_size": 0}, input_channels=3, seed=7)
    assert arch.input_size == 32 and arch.input_channels == 3 and arch.seed == 7
    layer = arch.layers[0]
    assert (layer.fbcorr.n_filters, layer.lpool.size) == (16, 2)
    assert (layer.activation.min_out, layer.activation.max_out) == (0.0, math.inf)
    assert arch.lnorm0 is None and arch.readout.kind == "ridge" and arch.train is None


def test_constants_accept_inf_strings_and_booleans():
    doc = tiny_doc()
    doc["layers"][0].update(min_out=choice("-inf", 0), max_out="inf", norm_remove_mean=1)
    doc["train"] = {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}
    space = parse_space(json.dumps(doc))
    raw = {"l1_n_filters": 0, "l1_pool_size": 0, "l1_min_out": 0, "train_lr": 0.01}
    arch = space.to_arch(raw)
    assert arch.layers[0].activation.min_out == -math.inf
    assert arch.layers[0].lnorm.remove_mean is True
    assert arch.train is not None and arch.train.lr == 0.01
    assert space.to_dict()["layers"][0]["max_out"] == "inf"


def test_depth_options_may_set_their_own_input_size():
    doc = small_discrete_doc()
    doc.pop("input_size")
    doc["depth"]["options"][0]["input_size"] = choice(32, 40)
    doc["depth"]["options"][1]["input_size"] = 64
    space = parse_space(doc)
    assert "d1_input_size" in space.labels and "input_size" not in space.labels
    sizes = {space.to_arch(p).input_size for p in space.grid()}
    assert sizes == {32, 40, 64}


BAD_DOCS = [
    (
        lambda d: d["layers"][0].update(
            n_filters={"type": "quniform", "low": 64, "high": 32, "q": 16}
        ),
        "layers[0].n_filters.low",
        "must be < high, got 64 >= 32",
    ),
    (
        lambda d: d["layers"][0].update(pool_size=choice()),
        "layers[0].pool_size.options",
        "must not be empty",
    ),
    (
        lambda d: d["layers"][0].update(
            n_filters={"type": "quniform", "low": 16, "high": 64, "q": -16}
        ),
        "layers[0].n_filters.q",
        "must be > 0, got -16",
    ),
    (
        lambda d: d.update(readout={"l2": {"type": "loguniform", "low": 0, "high": 1}}),
        "readout.l2.low",
        "must be > 0 for loguniform, got 0",
    ),
    (
        lambda d: d["layers"][0].update(n_filters={"type": "gaussian", "mu": 1}),
        "layers[0].n_filters.type",
        "must be one of 'choice', 'uniform', 'quniform', 'loguniform', 'qloguniform', "
        "'normal', 'lognormal', 'randint', got 'gaussian'",
    ),
    (
        lambda d: d["layers"][0].update(n_filters={"low": 1}),
        "layers[0].n_filters.type",
        "is required",
    ),
    (lambda d: d["layers"][0].update(n_filtrs=3), "layers[0].n_filtrs", "is not a known field"),
    (lambda d: d["layers"][0].pop("norm_size"), "layers[0].norm_size", "is required"),
    (
        lambda d: d["layers"][0].update(n_filters={"type": "uniform", "low": 16, "high": 32}),
        "layers[0].n_filters.type",
        "must be one of 'choice', 'randint', 'quniform', 'qloguniform' for an integer field, "
        "got 'uniform'",
    ),
    (lambda d: d["layers"][0].update(n_filters=0), "layers[0].n_filters", "must be >= 1, got 0"),
    (
        lambda d: d["layers"][0].update(n_filters="16"),
        "layers[0].n_filters",
        "must be a number, got '16'",
    ),
    (
        lambda d: d["layers"][0].update(norm_stretch={"type": "normal", "mu": 1, "sigma": 1}),
        "layers[0].norm_stretch",
        "must be > 0, can produce -inf",
    ),
    (
        lambda d: d["layers"][0].update(norm_stretch={"type": "lognormal", "mu": 0, "sigma": 0}),
        "layers[0].norm_stretch.sigma",
        "must be > 0, got 0",
    ),
    (
        lambda d: d["layers"][0].update(min_out=choice(0, 1), max_out=choice(1, "inf")),
        "layers[0].max_out",
        "must be > min_out for every point, got max_out down to 1 and min_out up to 1",
    ),
    (
        lambda d: d["layers"][0].update(norm_remove_mean=2),
        "layers[0].norm_remove_mean",
        "must be true, false, 0 or 1, got 2",
    ),
    (
        lambda d: d.update(readout={"kind": "knn"}),
        "readout.kind",
        "must be one of 'ridge', 'logistic', 'svm', got 'knn'",
    ),
    (lambda d: d.update(input_size=4096), "input_size", "must be <= 2048, got 4096"),
    (lambda d: d.pop("input_size"), "input_size", "is required"),
    (
        lambda d: d.update(name="Bad Name"),
        "name",
        "is invalid: string should match pattern '^[a-z0-9][a-z0-9_.-]{0,63}$'",
    ),
    (
        lambda d: d["layers"][0].update(pool_size=choice(*range(1, 1002))),
        "layers[0].pool_size.options",
        "must have at most 1000 entries, got 1001",
    ),
    (
        lambda d: d.update(depth=choice()),
        "depth",
        "cannot be combined with layers: give layers for a fixed depth or depth for a choice "
        "of depths",
    ),
]


@pytest.mark.parametrize(("mutate", "path", "message"), BAD_DOCS)
def test_validation_errors_name_the_path_and_the_rule(mutate, path, message):
    doc = tiny_doc()
    mutate(doc)
    err = error_of(doc)
    assert (err.path, err.message) == (path, message)
    assert str(err) == f"{path} {message}"
    assert isinstance(err, ValueError)


def test_errors_inside_depth_options_carry_the_option_path():
    doc = small_discrete_doc()
    doc["depth"]["options"][1]["layers"][1]["pool_size"] = {"type": "randint", "low": 5, "high": 5}
    err = error_of(doc)
    assert str(err) == "depth.options[1].layers[1].pool_size.low must be < high, got 5 >= 5"

    doc = small_discrete_doc()
    doc.pop("layers", None)
    doc["depth"]["options"] = []
    assert str(error_of(doc)) == "depth.options must not be empty"

    doc = small_discrete_doc()
    doc["depth"]["options"][1]["layers"].pop()
    assert str(error_of(doc)) == (
        "depth.options[1].layers must differ in length from depth.options[0].layers, both "
        "have 1 (labels are d<depth>_...)"
    )

    doc = small_discrete_doc()
    doc["input_size"] = choice(32, 64)
    doc["depth"]["options"][0]["input_size"] = 40
    assert str(error_of(doc)).startswith(
        "depth.options[0].input_size cannot be set when the top-level input_size is a parameter"
    )


def test_too_deep_choice_nesting_is_refused():
    doc = tiny_doc()
    leaf: Any = 3
    for _ in range(MAX_CHOICE_NESTING + 1):
        leaf = choice(leaf)
    doc["layers"][0]["pool_size"] = leaf
    err = error_of(doc)
    assert err.path == "layers[0].pool_size" + ".options[0]" * MAX_CHOICE_NESTING
    assert err.message == "nests choices 5 levels deep, the limit is 4"

    leaf = 3
    for _ in range(MAX_CHOICE_NESTING):
        leaf = choice(leaf)
    doc["layers"][0]["pool_size"] = leaf
    assert (
        parse_space(doc)
        .to_arch(
            {
                "l1_n_filters": 0,
                "l1_pool_size": 0,
                "l1_pool_size_o0": 0,
                "l1_pool_size_o0_o0": 0,
                "l1_pool_size_o0_o0_o0": 0,
            }
        )
        .layers[0]
        .lpool.size
        == 3
    )


def test_hostile_nesting_and_size_are_refused_without_crashing():
    deep = "[" * 30_000 + "]" * 30_000  # under the size limit, far over any stack
    assert str(error_of(deep)) == "document nests deeper than 32 levels"
    nested: Any = 1
    for _ in range(40):
        nested = {"a": nested}
    doc = tiny_doc()
    doc["description"] = nested
    assert error_of(doc).message == "nests deeper than 32 levels"

    doc = tiny_doc()
    doc["description"] = "x" * MAX_DOCUMENT_BYTES
    err = error_of(doc)
    assert err.path == ""
    assert re.fullmatch(r"document is \d+ bytes of JSON, the limit is 65536", err.message)
    # JSON text is measured as sent (with its whitespace), a dict as compact JSON
    text = json.dumps(doc, indent=1)
    assert str(error_of(text)) == (
        f"document is {len(text.encode())} bytes of JSON, the limit is 65536"
    )


def test_not_json_or_not_an_object_or_nan():
    assert str(error_of("{")).startswith("document is not valid JSON")
    assert str(error_of("[1, 2]")) == "document must be a JSON object, got list"
    assert str(error_of('{"name": "a", "input_size": NaN}')).startswith(
        "document is not valid JSON: NaN is not allowed"
    )
    doc = tiny_doc()
    doc["layers"][0]["n_filters"] = float("nan")
    assert str(error_of(doc)) == "layers[0].n_filters must be a number, got nan"


def test_too_many_parameters_are_refused():
    layer = {
        "n_filters": choice(1, 2),
        "filter_size": choice(1, 2),
        "pool_size": choice(1, 2),
        "norm_size": choice(1, 2),
        "pool_order": choice(1, 2),
        "min_out": choice(0, -1),
        "norm_stretch": choice(1, 2),
        "norm_threshold": choice(1, 2),
        "norm_remove_mean": choice(0, 1),
        "pool_stride": choice(1, 2),
    }
    doc: dict[str, Any] = {"name": "wide", "input_size": 64}
    # depths 1..9: 10 labels per layer, 45 layers -> 450 labels + depth: accepted
    doc["depth"] = choice(*({"layers": [layer] * d} for d in range(1, 10)))
    assert len(parse_space(doc).labels) == 451
    # depths 1..10: 550 + 1 labels, over the limit of 512
    doc["depth"] = choice(*({"layers": [layer] * d} for d in range(1, 11)))
    err = error_of(doc)
    assert (err.path, err.message) == ("", "document has more than 512 parameters")


# -- raw points ------------------------------------------------------------------------
def test_raw_points_are_checked():
    space = parse_space(small_discrete_doc())
    good = {
        "depth": 0,
        "d1_l1_n_filters": 1,
        "d1_l1_filter_size": 4.0,
        "d1_l1_pool_size": 1,
        "d1_l1_pool_size_o1": 4,
    }
    assert space.to_arch(good).layers[0].lpool.size == 4
    cases = [
        ({**good, "depth": 2}, "depth must be an option index in [0, 2), got 2"),
        (
            {**good, "d1_l1_filter_size": 4.5},
            "d1_l1_filter_size must be a multiple of 1 in [3, 5], got 4.5",
        ),
        (
            {**good, "d1_l1_filter_size": 6.0},
            "d1_l1_filter_size must be a multiple of 1 in [3, 5], got 6",
        ),
        (
            {**good, "d1_l1_pool_size_o1": 5},
            "d1_l1_pool_size_o1 must be a randint value in [3, 5), got 5",
        ),
        (
            {k: v for k, v in good.items() if k != "d1_l1_pool_size_o1"},
            "d1_l1_pool_size_o1 is missing (the parameter is active)",
        ),
        ({**good, "nope": 1}, "nope is not a parameter of this space"),
        ({**good, "depth": "0"}, "depth must be a number, got '0'"),
        ({**good, "depth": True}, "depth must be a number, got True"),
    ]
    for raw, message in cases:
        with pytest.raises(SpaceError) as info:
            space.to_arch(raw)
        assert str(info.value) == message
    # inactive labels are dropped, not refused: hyperopt records carry them as []
    assert space.normalize({"depth": 1, "d1_l1_n_filters": 0}) == {"depth": 1}


def test_config_key_identifies_architectures():
    doc = tiny_doc()
    doc["layers"][0]["n_filters"] = choice(8, 8, 16)  # options 0 and 1 are the same
    space = parse_space(doc)
    a = space.config_key({"l1_n_filters": 0, "l1_pool_size": 0})
    b = space.config_key({"l1_n_filters": 1, "l1_pool_size": 0})
    c = space.config_key({"l1_n_filters": 2, "l1_pool_size": 0})
    assert a == b != c


def test_original_document_is_not_modified():
    doc = small_discrete_doc()
    before = copy.deepcopy(doc)
    parse_space(doc)
    assert doc == before
