"""search_space.tpe against hyperopt 0.3.0's own functions.

Each building block is compared with the hyperopt function it reimplements on random
inputs (to 1e-9); the samplers against the exact distributions; the incremental updates
of one call against a model rebuilt from scratch; and whole proposals, distribution-wise,
against ``hyperopt.tpe.suggest`` on the same history.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np
import pytest
from hyperopt import pyll
from hyperopt import tpe as htpe
from hyperopt.base import miscs_to_idxs_vals
from scipy import stats

from search_space import EncodedHistory, HistoryItem, Space, history_to_trials, parse_space
from search_space.tpe import (
    DEFAULT_LF,
    Mixture,
    TPEModel,
    TPESettings,
    adaptive_parzen_normal,
    categorical_posterior,
    gmm1_lpdf,
    gmm1_sample,
    lgmm1_lpdf,
    lgmm1_sample,
    linear_forgetting_weights,
    n_below,
    normal_cdf,
    split_below,
)

TOL = 1e-9


def close(a: Any, b: Any, tol: float = TOL) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=tol, atol=tol))


def observations(rng: np.random.Generator, n: int, quantized: bool) -> np.ndarray:
    """Random observations; quantized ones repeat (ties in the Parzen sort)."""
    if quantized:
        return rng.integers(0, 8, size=n).astype(np.float64) * 0.5
    return rng.normal(1.0, 2.0, size=n)


# -- the split ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_split_matches_ap_split_trials(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 900))
    # ties on purpose: rounded losses, a worst-score group, pending trials at +inf
    losses = np.round(rng.normal(size=n), int(rng.integers(0, 3)))
    losses[rng.random(n) < 0.2] = losses.max() + 1
    losses[rng.random(n) < 0.1] = np.inf
    active = rng.random(n) < 0.6  # a conditional label: active in some trials only
    values = rng.normal(size=n)
    tids = np.arange(n)
    gamma = float(rng.uniform(0.1, 0.9))
    b_ref, a_ref = htpe.ap_split_trials(tids[active], values[active], tids, losses, gamma)
    below = split_below(losses, gamma)
    assert below.sum() == n_below(n, gamma) == min(math.ceil(gamma * math.sqrt(n)), 25)
    assert np.array_equal(values[active & below], b_ref)
    assert np.array_equal(values[active & ~below], a_ref)


# -- Parzen estimators -------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 25, 26, 40, 157])
@pytest.mark.parametrize("quantized", [False, True])
def test_linear_forgetting_and_parzen_match_hyperopt(n, quantized):
    rng = np.random.default_rng(n * 2 + quantized)
    assert close(linear_forgetting_weights(n, DEFAULT_LF), htpe.linear_forgetting_weights(n, 25))
    for _ in range(5):
        mus = observations(rng, n, quantized)
        prior_weight = float(rng.uniform(0.1, 3.0))
        prior_mu = float(rng.choice([rng.normal(), 1.5]))  # 1.5: tied with observations
        prior_sigma = float(rng.uniform(0.5, 5.0))
        ours = adaptive_parzen_normal(mus, prior_weight, prior_mu, prior_sigma)
        ref = htpe.adaptive_parzen_normal(mus, prior_weight, prior_mu, prior_sigma)
        for mine, theirs in zip(ours, ref, strict=True):
            assert close(mine, theirs)


@pytest.mark.parametrize("n", [0, 3, 25, 26, 80])
def test_categorical_posterior_matches_hyperopts_samplers(n):
    rng = np.random.default_rng(n)
    for k in (1, 2, 5):
        obs = rng.integers(0, k, size=n)
        prior_weight = float(rng.uniform(0.1, 3.0))
        ours = categorical_posterior(obs, k, prior_weight)
        # hp.choice compiles to randint: ap_randint_sampler's probabilities
        node = htpe.ap_randint_sampler(obs, prior_weight, k)
        assert close(ours, pyll.rec_eval(node.pos_args[0]))
        # and hp.randint(low, high): the same over high - low categories, offset
        node = htpe.ap_randint_sampler(obs + 3, prior_weight, 3, 3 + k)
        assert close(ours, pyll.rec_eval(node.pos_args[0]))
        # (ap_categorical_sampler, hp.pchoice's, is not compared: spaces have no pchoice,
        # and hyperopt 0.3.0 sizes its counts by the largest observation, not by len(p))


# -- log densities -----------------------------------------------------------------------
def mixture(rng: np.random.Generator, n: int, low: float, high: float) -> tuple[Any, ...]:
    return adaptive_parzen_normal(
        rng.uniform(low, high, size=n), 1.0, 0.5 * (low + high), high - low
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [None, 1.0, 0.25])
@pytest.mark.parametrize("bounded", [False, True])
def test_gmm1_lpdf_matches_hyperopt(seed, q, bounded):
    rng = np.random.default_rng(seed)
    low, high = -2.0, 3.0
    w, mus, sigmas = mixture(rng, int(rng.integers(0, 60)), low, high)
    x = rng.uniform(low, high, size=30)
    if q is not None:
        x = np.round(x / q) * q
    lo, hi = (low, high) if bounded else (None, None)
    ours = gmm1_lpdf(x, w, mus, sigmas, low=lo, high=hi, q=q)
    ref = htpe.GMM1_lpdf(x, w, mus, sigmas, low=lo, high=hi, q=q)
    assert close(ours, ref)
    # the prepared form the model evaluates
    assert close(Mixture((w, mus, sigmas), False, lo, hi, q).lpdf(x), ref)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [None, 1.0, 8.0])
@pytest.mark.parametrize("bounded", [False, True])
def test_lgmm1_lpdf_matches_hyperopt(seed, q, bounded):
    rng = np.random.default_rng(seed)
    low, high = math.log(2.0), math.log(64.0)  # bounds in log space, as hp.qloguniform
    w, mus, sigmas = mixture(rng, int(rng.integers(0, 60)), low, high)
    x = np.exp(rng.uniform(low, high, size=30))
    if q is not None:
        x = np.maximum(np.round(x / q) * q, q)
    lo, hi = (low, high) if bounded else (None, None)
    ours = lgmm1_lpdf(x, w, mus, sigmas, low=lo, high=hi, q=q)
    ref = htpe.LGMM1_lpdf(x, w, mus, sigmas, low=lo, high=hi, q=q)
    assert close(ours, ref)
    assert close(Mixture((w, mus, sigmas), True, lo, hi, q).lpdf(x), ref)


# -- samplers ----------------------------------------------------------------------------
def test_truncated_gmm1_samples_follow_the_truncated_mixture():
    """One-sample KS against the exact CDF of the mixture conditioned on [low, high)."""
    rng = np.random.default_rng(0)
    low, high = 0.0, 1.0
    w, mus, sigmas = mixture(rng, 7, low, high)
    draws = gmm1_sample(np.random.default_rng(1), w, mus, sigmas, 20_000, low=low, high=high)
    assert draws.min() >= low and draws.max() < high

    mass = np.sum(w * (normal_cdf(high, mus, sigmas) - normal_cdf(low, mus, sigmas)))

    def cdf(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)[..., None]
        return np.sum(w * (normal_cdf(x, mus, sigmas) - normal_cdf(low, mus, sigmas)), -1) / mass

    assert stats.kstest(draws, cdf).pvalue > 1e-3
    # and a wrong reference (the untruncated-then-clipped component choice) is rejected
    untruncated = np.random.default_rng(2).normal(mus[1], sigmas[1], 20_000)
    assert stats.kstest(np.clip(untruncated, low, high - 1e-9), cdf).pvalue < 1e-6


@pytest.mark.parametrize("log", [False, True])
def test_quantized_samples_follow_the_bin_masses_of_the_lpdf(log):
    """Bin frequencies of q-rounded draws against exp(lpdf) (hyperopt's bin masses)."""
    rng = np.random.default_rng(3)
    if log:
        low, high, q = math.log(8.0), math.log(64.0), 8.0
        w, mus, sigmas = mixture(rng, 9, low, high)
        draws = lgmm1_sample(np.random.default_rng(4), w, mus, sigmas, 20_000, low, high, q)
        lpdf = lgmm1_lpdf
    else:
        low, high, q = 2.5, 9.5, 1.0
        w, mus, sigmas = mixture(rng, 9, low, high)
        draws = gmm1_sample(np.random.default_rng(4), w, mus, sigmas, 20_000, low, high, q)
        lpdf = gmm1_lpdf
    values, counts = np.unique(draws, return_counts=True)
    grid = np.arange(8.0, 65.0, 8.0) if log else np.arange(3.0, 10.0)  # every reachable value
    expected = np.exp(lpdf(grid, w, mus, sigmas, low=low, high=high, q=q))
    assert abs(expected.sum() - 1.0) < 1e-9  # the bins cover the truncated mixture
    assert set(values.tolist()) <= set(grid.tolist())
    observed = np.array([counts[values == g].sum() for g in grid])
    keep = expected * len(draws) > 5
    chi2 = stats.chisquare(
        observed[keep], expected[keep] / expected[keep].sum() * observed[keep].sum()
    )
    assert chi2.pvalue > 1e-3


# -- the model of one call ---------------------------------------------------------------
TPE_CHECK_DOC: dict[str, Any] = {
    "name": "tpe-check",
    "input_size": 64,
    "depth": {
        "type": "choice",
        "options": [
            {
                "layers": [
                    {
                        "n_filters": {"type": "choice", "options": [8, 16, 32, 64]},
                        "filter_size": {"type": "quniform", "low": 2.5, "high": 7.5, "q": 1},
                        "pool_size": 2,
                        "norm_size": 3,
                        "norm_stretch": {"type": "lognormal", "mu": 0, "sigma": 1},
                    }
                ]
            },
            {
                "layers": [
                    {
                        "n_filters": 8,
                        "filter_size": 3,
                        "pool_size": {"type": "randint", "low": 2, "high": 5},
                        "pool_order": {"type": "uniform", "low": 1, "high": 4},
                        "norm_size": 3,
                    },
                    {
                        "n_filters": {"type": "qloguniform", "low": 8, "high": 64, "q": 8},
                        "filter_size": 3,
                        "pool_size": 2,
                        "norm_size": 3,
                        "norm_threshold": {"type": "loguniform", "low": 0.01, "high": 10},
                    },
                ]
            },
        ],
    },
}


def check_space() -> Space:
    return parse_space(TPE_CHECK_DOC)


def scored_history(
    space: Space, n: int, seed: int, pending: int = 3, noise: float = 0.1
) -> list[HistoryItem]:
    """Random points with a noisy score that prefers depth 2, small pools, many filters;
    the last ``pending`` are RUNNING."""
    rng = np.random.default_rng(seed)
    out: list[HistoryItem] = []
    for raw in space.sample_many(n + pending, seed):
        if len(out) >= n:
            out.append(HistoryItem(raw, "RUNNING"))
            continue
        score = 0.3 * raw["depth"] + noise * rng.normal()
        score -= 0.1 * raw.get("d2_l1_pool_size", 3)
        score += 0.002 * raw.get("d2_l2_n_filters", 0) + 0.05 * raw.get("d1_l1_n_filters", 0)
        out.append(HistoryItem(raw, "COMPLETE", score))
    return out


def reference_estimators(
    space: Space, history: list[HistoryItem], label: str
) -> tuple[np.ndarray, np.ndarray]:
    """hyperopt's below / above observations of ``label`` for ``history``."""
    trials = history_to_trials(space, history)
    docs = trials.trials
    tids = [d["tid"] for d in docs]
    losses = [np.inf if d["result"].get("loss") is None else d["result"]["loss"] for d in docs]
    idxs, vals = miscs_to_idxs_vals([d["misc"] for d in docs], keys=list(space.labels))
    return htpe.ap_split_trials(idxs[label], vals[label], tids, losses, 0.25)


def test_model_estimators_are_hyperopts():
    space = check_space()
    history = scored_history(space, 60, seed=1)
    model = TPEModel(EncodedHistory.from_history(space, history), TPESettings(), room=0)
    enc = EncodedHistory(space)
    for codec in enc.codecs:
        below, above = reference_estimators(space, history, codec.label)
        if codec.is_categorical:
            j = model._cat_index[codec.column]
            k = codec.n_categories
            p_below = np.exp(model.categoricals.log_p_below[j, :k])
            p_above = np.exp(model.categoricals.log_p_above[j, :k])
            obs_b = np.asarray(below, dtype=np.int64) - codec.offset
            obs_a = np.asarray(above, dtype=np.int64) - codec.offset
            assert close(p_below, categorical_posterior(obs_b, k, 1.0))
            assert close(p_above, categorical_posterior(obs_a, k, 1.0))
        else:
            numeric = model.numerics[codec.column]
            for mine, obs in ((numeric.below, below), (numeric.above, above)):
                obs = np.asarray(obs, dtype=np.float64)
                if numeric.is_log:
                    obs = np.log(np.maximum(obs, numeric._floor or 0.0))
                ref = htpe.adaptive_parzen_normal(obs, 1.0, numeric.prior_mu, numeric.prior_sigma)
                for a, b in zip(mine, ref, strict=True):
                    assert close(a, b)


def test_pending_suggestions_update_the_model_as_a_rebuild_would():
    """k points added by add_pending == a model of the history with them RUNNING."""
    space = check_space()
    history = scored_history(space, 150, seed=2, pending=30)  # > 25 above: forgetting
    encoded = EncodedHistory.from_history(space, history)
    model = TPEModel(encoded, TPESettings(), room=40)
    extra = []
    for i, raw in enumerate(space.sample_many(40, seed=9)):
        model.add_pending(raw)
        extra.append(HistoryItem(raw, "RUNNING"))
        if i % 13 == 12 or i == 39:
            ref = TPEModel(
                EncodedHistory.from_history(space, history + extra), TPESettings(), room=0
            )
            assert model.n_trials == ref.n_trials and model.n_below == ref.n_below
            c, rc = model.categoricals, ref.categoricals
            assert close(c.above_counts(), rc.above_counts())
            assert close(c.log_p_below, rc.log_p_below)
            valid = c.valid
            assert close(c.log_p_above[valid], rc.log_p_above[valid])
            for col, numeric in model.numerics.items():
                for mine, theirs in (
                    (numeric.below, ref.numerics[col].below),
                    (numeric.above, ref.numerics[col].above),
                ):
                    for a, b in zip(mine, theirs, strict=True):
                        assert close(a, b)


def test_a_pending_suggestion_that_grows_the_split_refits():
    """At 16 * k^2 trials the next one adds a below trial: the model must refit."""
    space = check_space()
    history = scored_history(space, 60, seed=4, pending=4)  # 64 trials: n_below 2
    model = TPEModel(EncodedHistory.from_history(space, history), TPESettings(), room=2)
    assert model.n_below == 2
    raw = space.sample_many(1, seed=5)[0]
    model.add_pending(raw)  # 65 trials: n_below 3
    ref = TPEModel(
        EncodedHistory.from_history(space, [*history, HistoryItem(raw, "RUNNING")]),
        TPESettings(),
        room=0,
    )
    assert model.n_below == ref.n_below == 3
    assert close(model.categoricals.log_p_below, ref.categoricals.log_p_below)


def hyperopt_proposals(
    space: Space, history: list[HistoryItem], seeds: range, n_ei: int
) -> list[dict[str, Any]]:
    trials = history_to_trials(space, history)
    out = []
    for seed in seeds:
        doc = htpe.suggest(
            [len(trials.trials)], space.domain, trials, seed, n_startup_jobs=0, n_EI_candidates=n_ei
        )
        out.append({k: v[0] for k, v in doc[0]["misc"]["vals"].items() if v})
    return out


def pvalues(space: Space, theirs: list[dict], ours: list[dict]) -> dict[str, float]:
    """Per label, the p-value of "both samples come from one distribution": a chi-square
    test of homogeneity on how often the label is active and on its discrete values, a
    two-sample KS test on continuous values."""
    out: dict[str, float] = {}
    n = len(theirs)
    for label, info in space.params.items():
        a = [float(p[label]) for p in theirs if label in p]
        b = [float(p[label]) for p in ours if label in p]
        if 0 < len(a) + len(b) < 2 * n:
            table = [[len(a), n - len(a)], [len(b), n - len(b)]]
            out[f"{label} active"] = stats.chi2_contingency(table).pvalue
        if min(len(a), len(b)) < 20:
            continue
        if info.type in ("lognormal", "uniform", "loguniform"):
            out[label] = stats.ks_2samp(a, b).pvalue
        else:
            ca, cb = collections.Counter(a), collections.Counter(b)
            values = sorted(set(ca) | set(cb))
            if len(values) > 1:
                table = [[ca[v] for v in values], [cb[v] for v in values]]
                out[label] = stats.chi2_contingency(table).pvalue
    return out


# (history seed, EI candidates): histories where TPE's choice varies over seeds, with
# 3 RUNNING trials each; 3 candidates spread the argmax over more values
DISTRIBUTION_CASES = [(3, 3), (1, 24)]


@pytest.mark.parametrize(("history_seed", "n_ei"), DISTRIBUTION_CASES)
def test_proposals_are_distributed_as_hyperopts(history_seed, n_ei):
    space = check_space()
    history = scored_history(space, 40, seed=history_seed, noise=0.5)
    seeds = range(200)
    theirs = hyperopt_proposals(space, history, seeds, n_ei)
    model = TPEModel(EncodedHistory.from_history(space, history), TPESettings(), room=0)
    ours = [model.propose(np.random.default_rng(s), n_ei) for s in seeds]
    assert all(space.normalize(p) == p for p in ours)
    p = pvalues(space, theirs, ours)
    assert len(p) >= 3  # enough labels vary to compare
    assert min(p.values()) > 1e-3, p


@pytest.mark.parametrize(
    "wrong", [TPESettings(gamma=0.6), TPESettings(prior_weight=4.0)], ids=["gamma", "prior"]
)
def test_the_distribution_check_can_fail(wrong):
    """The same comparison against a model with another setting fails clearly."""
    space = check_space()
    history = scored_history(space, 40, seed=3, noise=0.5)
    seeds = range(200)
    theirs = hyperopt_proposals(space, history, seeds, 3)
    model = TPEModel(EncodedHistory.from_history(space, history), wrong, room=0)
    ours = [model.propose(np.random.default_rng(s), 3) for s in seeds]
    assert min(pvalues(space, theirs, ours).values()) < 1e-4
