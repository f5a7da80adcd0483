"""TPE in numpy: hyperopt 0.3.0's ``tpe.suggest``, vectorised, on an encoded history.

hyperopt rebuilds a symbolic posterior graph and re-reads every trial document on every
call, one suggestion at a time.  Here the history arrives already encoded
(:class:`~search_space.history.EncodedHistory`), every Parzen estimator is fitted once per
call with numpy, and a call that wants ``n`` suggestions adds each accepted one as a
pending trial and updates only what that changes before the next slot.

The algorithm (Bergstra et al., NIPS 2011; Bergstra, Yamins & Cox, ICML 2013), as
hyperopt 0.3.0 runs it:

1. Losses: finished trials have theirs; pending (running) trials count as ``+inf``.
2. Split: the ``min(ceil(gamma * sqrt(n)), 25)`` trials of lowest loss (``n`` counts
   EVERY trial, pending ones too) are "below" (good), the rest "above".
   (``ap_split_trials``, ``gamma_cap = DEFAULT_LF = 25``.)
3. Per label, using only the trials in which the label is active, in creation order:
   a Parzen estimator of the below observations, l(x), and of the above ones, g(x).

   * Numeric labels: ``adaptive_parzen_normal``: one Gaussian per observation plus the
     prior's (weight ``prior_weight``), sigmas from the distances to the sorted
     neighbours clipped to ``[prior_sigma / min(100, n + 1), prior_sigma]``, the prior's
     sigma kept; linear forgetting (``linear_forgetting_weights``: beyond the newest 25
     the weights ramp down linearly to ``1/N`` for the oldest).  uniform / quniform and
     normal are fitted on the values, loguniform / qloguniform / lognormal on their logs
     (qloguniform observations first raised to ``max(EPS, exp(low))``).  The prior of
     uniform-type labels is ``N((low + high) / 2, high - low)``, of normal-type ones
     ``N(mu, sigma)``.
   * Choices and randints: categoricals (hyperopt compiles ``hp.choice`` to a randint):
     linearly-forgotten counts plus ``prior_weight`` per category, normalised.
4. Per label, ``n_EI_candidates`` draws from l(x) (truncated to ``[low, high)`` and
   rounded to ``q`` like ``GMM1`` / ``LGMM1``); the one with the largest
   ``log l(x) - log g(x)`` wins (``broadcast_best``: the first of equal scores).  The
   log densities are ``GMM1_lpdf`` / ``LGMM1_lpdf`` / ``categorical_lpdf``, quirks kept:
   the q-variants integrate each bin clipped to the bounds; ``GMM1_lpdf`` renormalises by
   the mass inside ``[low, high]`` but the non-q ``LGMM1_lpdf`` does not.
5. Top-down: a choice's winner decides which nested labels are active; each active label
   gets all ``n_EI_candidates`` draws of its own (hyperopt broadcasts the winner to
   every candidate id, so the nested labels see them all).  EI is maximised label by
   label, independently.

Identical to hyperopt (tests/search_space/test_tpe.py checks each part against
hyperopt's own function to 1e-9, and whole proposals distribution-wise against
``tpe.suggest``): the split, the linear forgetting weights, the Parzen estimators
(weights, means, sigmas), the categorical posterior, the log densities, the sampled
distributions (truncation by rejection, q rounding), the candidate count and the argmax,
how pending trials enter (loss ``+inf``, so "above", and they count in ``n``).  Ties
too: equal losses in the split and equal observations in the Parzen sort are ordered by
numpy's default argsort on the same arrays hyperopt sorts, so as hyperopt orders them
(quantized labels have many equal observations, and which of them gets which forgetting
weight and sigma moves the EI argmax measurably).

Different:

* The random stream: numpy draws in another order (all categorical labels' candidates
  in one vectorised draw), so equal seeds give other, equally distributed, points.
* Sums are taken in another order (vectorised, and the categorical "above" counts
  updated incrementally per pending suggestion), so values agree to rounding (~1e-15),
  not bit for bit.
* A NaN score (``-inf - -inf`` from an underflowing density) ranks lowest instead of
  winning ``np.argmax``.
* Several suggestions per call (hyperopt's ``tpe.suggest`` makes one): each accepted
  suggestion is added as a pending trial before the next slot, exactly what hyperopt
  would see if it were asked again with that trial running; only the changed parts are
  updated (the categorical counts, the affected numeric "above" estimators), and
  everything is refitted when the new trial changes the below/above split (its size
  grows, or equal losses at the boundary are reordered).
* Only what search spaces compile to: hp.choice (a randint for TPE), randint, uniform,
  quniform, loguniform, qloguniform, normal, lognormal.  No pchoice, qnormal, qlognormal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .history import EncodedHistory, LabelCodec, history_losses

EPS = 1e-12  # hyperopt.tpe.EPS
DEFAULT_LF = 25  # hyperopt.tpe.DEFAULT_LF: linear forgetting, and the cap on n_below
_SQRT2 = math.sqrt(2.0)
_MAX_REJECTION_ROUNDS = 10_000

FloatArray = np.ndarray


def _erf(x: Any) -> Any:
    # scipy is what hyperopt uses; imported here so that importing the package stays cheap
    from scipy.special import erf

    return erf(x)


# -- building blocks (each mirrors one hyperopt.tpe function) -----------------------------
def linear_forgetting_weights(n: int, lf: int = DEFAULT_LF) -> FloatArray:
    """hyperopt's ``linear_forgetting_weights``: ones for the newest ``lf`` of ``n``
    observations (oldest first), a linear ramp from ``1/n`` up for the older ones."""
    if n < 0 or lf <= 0:
        raise ValueError(f"need n >= 0 and lf > 0, got n={n}, lf={lf}")
    if n == 0:
        return np.zeros(0)
    if n <= lf:
        return np.ones(n)
    return np.concatenate([np.linspace(1.0 / n, 1.0, num=n - lf), np.ones(lf)])


def n_below(n_trials: int, gamma: float, gamma_cap: int = DEFAULT_LF) -> int:
    """How many of ``n_trials`` trials (pending ones included) are "below" (good)."""
    return min(int(np.ceil(gamma * np.sqrt(n_trials))), gamma_cap)


def split_below(losses: FloatArray, gamma: float, gamma_cap: int = DEFAULT_LF) -> np.ndarray:
    """Boolean mask of the "below" trials: the :func:`n_below` of lowest loss.
    ``losses`` has one entry per trial (oldest first), ``+inf`` for pending ones.  Equal
    losses at the boundary are ordered by numpy's default argsort, as in hyperopt's
    ``ap_split_trials``."""
    losses = np.asarray(losses, dtype=np.float64)
    below = np.zeros(len(losses), dtype=bool)
    below[np.argsort(losses)[: n_below(len(losses), gamma, gamma_cap)]] = True
    return below


def adaptive_parzen_normal(
    mus: FloatArray,
    prior_weight: float,
    prior_mu: float,
    prior_sigma: float,
    lf: int = DEFAULT_LF,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """hyperopt's ``adaptive_parzen_normal``: the Parzen estimator of observations ``mus``
    (oldest first) with the prior ``N(prior_mu, prior_sigma)`` inserted.

    Returns:
        ``(weights, mus, sigmas)`` sorted by mu (the prior at its sorted position);
        weights sum to 1.
    """
    obs = np.asarray(mus, dtype=np.float64)
    if obs.ndim != 1:
        raise TypeError("mus must be a vector")
    n = len(obs)
    # numpy's default sort, as hyperopt: equal values (quantized labels have many) are
    # ordered as hyperopt orders them, so they get the same forgetting weights and sigmas
    order = np.argsort(obs)
    if n == 0:
        srtd = np.asarray([prior_mu], dtype=np.float64)
        sigma = np.asarray([prior_sigma], dtype=np.float64)
        prior_pos = 0
    elif n == 1:
        if prior_mu < obs[0]:
            prior_pos = 0
            srtd = np.asarray([prior_mu, obs[0]])
            sigma = np.asarray([prior_sigma, prior_sigma * 0.5])
        else:
            prior_pos = 1
            srtd = np.asarray([obs[0], prior_mu])
            sigma = np.asarray([prior_sigma * 0.5, prior_sigma])
    else:
        sorted_obs = obs[order]
        prior_pos = int(np.searchsorted(sorted_obs, prior_mu))
        srtd = np.insert(sorted_obs, prior_pos, prior_mu)
        sigma = np.empty_like(srtd)
        sigma[1:-1] = np.maximum(srtd[1:-1] - srtd[:-2], srtd[2:] - srtd[1:-1])
        sigma[0] = srtd[1] - srtd[0]
        sigma[-1] = srtd[-1] - srtd[-2]
    if lf and lf < n:
        weights = np.insert(linear_forgetting_weights(n, lf)[order], prior_pos, prior_weight)
    else:
        weights = np.ones(len(srtd))
        weights[prior_pos] = prior_weight
    # hyperopt's "magic formula"
    sigma = np.clip(sigma, prior_sigma / min(100.0, 1.0 + len(srtd)), prior_sigma)
    sigma[prior_pos] = prior_sigma
    return weights / weights.sum(), srtd, sigma


def categorical_posterior(
    obs: Sequence[int] | np.ndarray, n_categories: int, prior_weight: float, lf: int = DEFAULT_LF
) -> FloatArray:
    """hyperopt's categorical estimator (``ap_randint_sampler``, and
    ``ap_categorical_sampler`` for a uniform ``p``): linearly forgotten counts of ``obs``
    (category indices, oldest first) plus ``prior_weight`` each, normalised."""
    cats = np.asarray(obs, dtype=np.int64)
    counts = np.bincount(
        cats, weights=linear_forgetting_weights(len(cats), lf), minlength=n_categories
    )
    pseudo = counts + prior_weight
    return pseudo / pseudo.sum()


def normal_cdf(x: Any, mu: Any, sigma: Any) -> Any:
    """hyperopt's ``normal_cdf`` (sigma floored at EPS / sqrt 2)."""
    return 0.5 * (1 + _erf((x - mu) / np.maximum(_SQRT2 * sigma, EPS)))


def lognormal_cdf(x: Any, mu: Any, sigma: Any) -> Any:
    """hyperopt's ``lognormal_cdf``: ``x`` must be >= 0 (0 maps to about 0)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size and x.min() < 0:
        raise ValueError("negative argument to lognormal_cdf")
    with np.errstate(divide="ignore"):
        top = np.log(np.maximum(x, EPS)) - mu
    return 0.5 + 0.5 * _erf(top / np.maximum(_SQRT2 * sigma, EPS))


def lognormal_lpdf(x: Any, mu: Any, sigma: Any) -> Any:
    """hyperopt's ``lognormal_lpdf``."""
    sigma = np.maximum(sigma, EPS)
    z = sigma * x * np.sqrt(2 * np.pi)
    e = 0.5 * ((np.log(x) - mu) / sigma) ** 2
    return -e - np.log(z)


def _logsum_rows(x: FloatArray) -> FloatArray:
    m = x.max(axis=1)
    return np.log(np.exp(x - m[:, None]).sum(axis=1)) + m


def _p_accept(
    weights: FloatArray, mus: FloatArray, sigmas: FloatArray, low: float | None, high: float | None
) -> float:
    if low is None and high is None:
        return 1.0
    if low is None or high is None:
        raise ValueError("give both low and high, or neither")
    return float(np.sum(weights * (normal_cdf(high, mus, sigmas) - normal_cdf(low, mus, sigmas))))


def gmm1_lpdf(
    samples: Any,
    weights: FloatArray,
    mus: FloatArray,
    sigmas: FloatArray,
    low: float | None = None,
    high: float | None = None,
    q: float | None = None,
) -> FloatArray:
    """hyperopt's ``GMM1_lpdf``: log density of a Gaussian mixture truncated to
    ``[low, high]`` (renormalised), or with ``q`` the log mass of the bin
    ``[x - q/2, x + q/2]`` clipped to the bounds."""
    x = np.asarray(samples, dtype=np.float64)
    flat = x.reshape(-1)
    if flat.size == 0:
        return np.zeros(x.shape)
    weights, mus, sigmas = (np.asarray(a, dtype=np.float64) for a in (weights, mus, sigmas))
    p_accept = _p_accept(weights, mus, sigmas, low, high)
    if q is None:
        mahal = ((flat[:, None] - mus) / np.maximum(sigmas, EPS)) ** 2
        coef = weights / np.sqrt(2 * np.pi * sigmas**2) / p_accept
        out = _logsum_rows(-0.5 * mahal + np.log(coef))
    else:
        upper = flat[:, None] + q / 2
        lower = flat[:, None] - q / 2
        if high is not None:
            upper = np.minimum(upper, high)
        if low is not None:
            lower = np.maximum(lower, low)
        prob = (weights * normal_cdf(upper, mus, sigmas)).sum(axis=1) - (
            weights * normal_cdf(lower, mus, sigmas)
        ).sum(axis=1)
        with np.errstate(divide="ignore"):
            out = np.log(prob) - np.log(p_accept)
    return out.reshape(x.shape)


def lgmm1_lpdf(
    samples: Any,
    weights: FloatArray,
    mus: FloatArray,
    sigmas: FloatArray,
    low: float | None = None,
    high: float | None = None,
    q: float | None = None,
) -> FloatArray:
    """hyperopt's ``LGMM1_lpdf``: a mixture of log-normals (``mus``, ``sigmas`` and the
    bounds are in log space).  Without ``q`` the density is NOT renormalised to the
    bounds (hyperopt's quirk, kept); with ``q`` it is the log mass of the bin
    ``[x - q/2, x + q/2]`` clipped to ``[exp(low), exp(high)]`` and to >= 0, divided by
    the mass inside the bounds."""
    x = np.asarray(samples, dtype=np.float64)
    flat = x.reshape(-1)
    if flat.size == 0:
        return np.zeros(x.shape)
    weights, mus, sigmas = (np.asarray(a, dtype=np.float64) for a in (weights, mus, sigmas))
    p_accept = _p_accept(weights, mus, sigmas, low, high)
    if q is None:
        out = _logsum_rows(lognormal_lpdf(flat[:, None], mus, sigmas) + np.log(weights))
    else:
        upper = flat[:, None] + q / 2
        lower = flat[:, None] - q / 2
        if high is not None:
            upper = np.minimum(upper, np.exp(high))
        if low is not None:
            lower = np.maximum(lower, np.exp(low))
        lower = np.maximum(0, lower)
        prob = (weights * lognormal_cdf(upper, mus, sigmas)).sum(axis=1) - (
            weights * lognormal_cdf(lower, mus, sigmas)
        ).sum(axis=1)
        with np.errstate(divide="ignore"):
            out = np.log(prob) - np.log(p_accept)
    return out.reshape(x.shape)


def _components(rng: np.random.Generator, weights: FloatArray, size: int) -> np.ndarray:
    """``size`` component indices drawn with probabilities ``weights`` (sum 1)."""
    cdf = np.cumsum(weights)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), len(cdf) - 1)


def _mixture_draws(
    rng: np.random.Generator,
    weights: FloatArray,
    mus: FloatArray,
    sigmas: FloatArray,
    size: int,
    low: float | None,
    high: float | None,
) -> FloatArray:
    """``size`` draws of the Gaussian mixture, truncated to ``[low, high)`` by rejection as
    hyperopt's ``GMM1`` / ``LGMM1`` do (a component by weight, a normal draw, kept if
    inside), so the same distribution: the mixture conditioned on the interval."""
    if low is None and high is None:
        comp = _components(rng, weights, size)
        return rng.normal(mus[comp], sigmas[comp])
    lo = -math.inf if low is None else float(low)
    hi = math.inf if high is None else float(high)
    if lo >= hi:
        raise ValueError(f"low >= high: {lo} >= {hi}")
    out: list[FloatArray] = []
    need = size
    for _ in range(_MAX_REJECTION_ROUNDS):
        if need <= 0:
            break
        batch = max(64, 4 * need)
        comp = _components(rng, weights, batch)
        draws = rng.normal(mus[comp], sigmas[comp])
        kept = draws[(draws >= lo) & (draws < hi)][:need]
        out.append(kept)
        need -= len(kept)
    else:
        raise RuntimeError("the mixture has no mass inside its bounds")
    return np.concatenate(out) if out else np.zeros(0)


def gmm1_sample(
    rng: np.random.Generator,
    weights: FloatArray,
    mus: FloatArray,
    sigmas: FloatArray,
    size: int,
    low: float | None = None,
    high: float | None = None,
    q: float | None = None,
) -> FloatArray:
    """Draws as hyperopt's ``GMM1`` (truncated to ``[low, high)``, then rounded to q)."""
    draws = _mixture_draws(rng, weights, mus, sigmas, size, low, high)
    return draws if q is None else np.round(draws / q) * q


def lgmm1_sample(
    rng: np.random.Generator,
    weights: FloatArray,
    mus: FloatArray,
    sigmas: FloatArray,
    size: int,
    low: float | None = None,
    high: float | None = None,
    q: float | None = None,
) -> FloatArray:
    """Draws as hyperopt's ``LGMM1``: exp of the log-space mixture truncated to
    ``[low, high)``, then rounded to q."""
    draws = np.exp(_mixture_draws(rng, weights, mus, sigmas, size, low, high))
    return draws if q is None else np.round(draws / q) * q


# -- the model of one call ---------------------------------------------------------------
@dataclass(frozen=True)
class TPESettings:
    """hyperopt's ``tpe.suggest`` arguments (and its two fixed constants)."""

    gamma: float = 0.25
    n_ei_candidates: int = 24
    prior_weight: float = 1.0
    linear_forgetting: int = DEFAULT_LF
    gamma_cap: int = DEFAULT_LF


class Mixture:
    """A fitted Parzen estimator, prepared for many log-density evaluations under one
    label's bounds and q: exactly :func:`gmm1_lpdf` / :func:`lgmm1_lpdf` (rearranged:
    the mass inside the bounds and the per-component constants computed once, and for
    q the mixture CDF evaluated once per distinct bin edge).

    Args:
        params: ``(weights, mus, sigmas)`` as :func:`adaptive_parzen_normal` returns.
        is_log: a mixture of log-normals (``LGMM1``) rather than normals (``GMM1``).
        low, high: the bounds (log space for log-normals), or None.
        q: the quantization step, or None.
    """

    def __init__(
        self,
        params: tuple[FloatArray, FloatArray, FloatArray],
        is_log: bool,
        low: float | None,
        high: float | None,
        q: float | None,
    ) -> None:
        self.weights, self.mus, self.sigmas = params
        self.is_log, self.low, self.high, self.q = is_log, low, high, q
        self.p_accept = _p_accept(self.weights, self.mus, self.sigmas, low, high)
        # normal_cdf's (x - mu) / max(sqrt 2 sigma, EPS), as a product
        self._cdf_scale = 1.0 / np.maximum(_SQRT2 * self.sigmas, EPS)
        self._inv_sigma = 1.0 / np.maximum(self.sigmas, EPS)
        with np.errstate(divide="ignore"):
            if is_log:
                # lognormal_lpdf + log w, without its per-sample -log x (added per row)
                self._log_coef = (
                    np.log(self.weights)
                    - np.log(np.maximum(self.sigmas, EPS))
                    - 0.5 * math.log(2 * math.pi)
                )
            else:
                coef = self.weights / np.sqrt(2 * np.pi * self.sigmas**2) / self.p_accept
                self._log_coef = np.log(coef)

    def _cdf_at(self, edges: FloatArray) -> FloatArray:
        """``sum_i w_i cdf_i(edge)`` per edge (``normal_cdf`` / ``lognormal_cdf``)."""
        if self.is_log:
            with np.errstate(divide="ignore"):
                edges = np.log(np.maximum(edges, EPS))
        z = (edges[:, None] - self.mus) * self._cdf_scale
        return (0.5 * (1 + _erf(z))) @ self.weights

    def lpdf(self, x: FloatArray) -> FloatArray:
        """Log density (q: log bin mass) at the 1-D array ``x``."""
        if self.q is None:
            if self.is_log:
                lx = np.log(x)
                t = (lx[:, None] - self.mus) * self._inv_sigma
            else:
                t = (x[:, None] - self.mus) * self._inv_sigma
            terms = self._log_coef - 0.5 * (t * t)
            top = terms.max(axis=1)
            out = np.log(np.exp(terms - top[:, None]).sum(axis=1)) + top
            return out - lx if self.is_log else out
        upper, lower = x + self.q / 2, x - self.q / 2
        if self.is_log:
            if self.high is not None:
                upper = np.minimum(upper, np.exp(self.high))
            if self.low is not None:
                lower = np.maximum(lower, np.exp(self.low))
            lower = np.maximum(0, lower)
        else:
            if self.high is not None:
                upper = np.minimum(upper, self.high)
            if self.low is not None:
                lower = np.maximum(lower, self.low)
        # neighbouring bins share an edge: evaluate the mixture's CDF once per edge
        edges, index = np.unique(np.concatenate([upper, lower]), return_inverse=True)
        cdf = self._cdf_at(edges)[index]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(cdf[: len(x)] - cdf[len(x) :]) - np.log(self.p_accept)


class NumericLabel:
    """One numeric label's l(x) and g(x), in hyperopt's sampling space (logs for the
    log-type distributions): the ``ap_*_sampler`` of its type."""

    def __init__(self, codec: LabelCodec, settings: TPESettings) -> None:
        spec: Any = codec.info.spec
        kind = codec.type
        self.codec = codec
        self.settings = settings
        self.is_log = kind in ("loguniform", "qloguniform", "lognormal")
        self.q: float | None = float(spec.q) if kind in ("quniform", "qloguniform") else None
        self.low: float | None = None
        self.high: float | None = None
        if kind in ("uniform", "quniform"):
            self.low, self.high = float(spec.low), float(spec.high)
        elif kind in ("loguniform", "qloguniform"):
            # as space_compile hands them to hp.loguniform: the logs of the value bounds
            self.low, self.high = math.log(spec.low), math.log(spec.high)
        elif kind in ("normal", "lognormal"):
            pass
        else:
            raise ValueError(f"not a numeric TPE label: {codec.label} ({kind})")
        if self.low is not None and self.high is not None:
            self.prior_mu = 0.5 * (self.high + self.low)
            self.prior_sigma = 1.0 * (self.high - self.low)
        else:
            self.prior_mu, self.prior_sigma = float(spec.mu), float(spec.sigma)
        # qloguniform: observations rounded below exp(low) (0 in particular) are moved
        # up to exp(low) before the log, as ap_qloguniform_sampler does (np.exp: the
        # same bits as hyperopt's, so that ties and sorting agree)
        self._floor = float(np.maximum(EPS, np.exp(self.low))) if kind == "qloguniform" else None
        self._sample = lgmm1_sample if self.is_log else gmm1_sample
        self.above_obs = np.zeros(0)
        self.below_mixture = self._mixture(np.zeros(0))
        self.above_mixture = self.below_mixture

    @property
    def below(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """l(x): ``(weights, mus, sigmas)`` of the below observations' estimator."""
        m = self.below_mixture
        return m.weights, m.mus, m.sigmas

    @property
    def above(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """g(x): ``(weights, mus, sigmas)`` of the above observations' estimator."""
        m = self.above_mixture
        return m.weights, m.mus, m.sigmas

    def transform(self, values: FloatArray) -> FloatArray:
        """Raw values -> the space the Parzen estimator is fitted in."""
        if self._floor is not None:
            return np.log(np.maximum(values, self._floor))
        return np.log(values) if self.is_log else np.asarray(values, dtype=np.float64)

    def _mixture(self, obs: FloatArray) -> Mixture:
        s = self.settings
        params = adaptive_parzen_normal(
            obs, s.prior_weight, self.prior_mu, self.prior_sigma, s.linear_forgetting
        )
        return Mixture(params, self.is_log, self.low, self.high, self.q)

    def fit(self, below: FloatArray, above: FloatArray) -> None:
        """Fit l(x) and g(x) from the raw values of the below / above trials (oldest
        first, the label active)."""
        self.below_mixture = self._mixture(self.transform(below))
        self.above_obs = self.transform(above)
        self.above_mixture = self._mixture(self.above_obs)

    def add_above(self, value: float) -> None:
        """A new pending trial with this label active: the newest "above" observation."""
        self.above_obs = np.append(self.above_obs, self.transform(np.asarray([value])))
        self.above_mixture = self._mixture(self.above_obs)

    def propose(self, rng: np.random.Generator, n_candidates: int) -> float:
        """The best of ``n_candidates`` draws from l(x) by ``log l - log g``."""
        draws = self._sample(
            rng, *self.below, size=n_candidates, low=self.low, high=self.high, q=self.q
        )
        if n_candidates == 1:
            return float(draws[0])
        # quantized draws repeat: score each distinct value once (g(x) costs O(history))
        values, inverse = np.unique(draws, return_inverse=True)
        score = self.below_mixture.lpdf(values) - self.above_mixture.lpdf(values)
        return float(draws[int(np.argmax(np.nan_to_num(score[inverse], nan=-np.inf)))])


class Categoricals:
    """Every categorical label (choices, randints) of a space, fitted and scored at once.

    Per label ``j``: ``p_below[j]`` and ``p_above[j]`` over its ``n_categories`` (padded
    to the widest label).  The "above" counts are kept in a form that a new pending
    observation updates in O(1) per label although it shifts every forgetting weight:
    with ``N`` observations and ramp length ``R = N - lf``, observation ``i < R`` weighs
    ``a + i * s`` (``a = 1/N``), so a category's count is
    ``a * C0 + s * C1 + (T - C0)``: ``C0`` / ``C1`` the count / position sum of its
    observations inside the ramp, ``T`` its total count.
    """

    def __init__(self, codecs: Sequence[LabelCodec], settings: TPESettings) -> None:
        self.codecs = tuple(codecs)
        self.settings = settings
        self.columns = np.asarray([c.column for c in codecs], dtype=np.int64)
        self.offsets = np.asarray([c.offset for c in codecs], dtype=np.int64)
        self.sizes = np.asarray([c.n_categories for c in codecs], dtype=np.int64)
        self.width = int(self.sizes.max()) if len(codecs) else 0
        self.valid = np.arange(self.width)[None, :] < self.sizes[:, None]
        n = len(codecs)
        self.log_p_below = np.zeros((n, self.width))
        self.log_p_above = np.zeros((n, self.width))
        self._cdf = np.zeros((n, self.width))
        self._score = np.zeros((n, self.width))

    def __len__(self) -> int:
        return len(self.codecs)

    def _posterior(self, counts: FloatArray) -> FloatArray:
        pseudo = (counts + self.settings.prior_weight) * self.valid
        return pseudo / pseudo.sum(axis=1, keepdims=True)

    def fit(self, below: FloatArray, above: FloatArray, room: int) -> None:
        """Fit from the X rows of the below / above trials (oldest first); ``room``:
        how many pending observations :meth:`add_above` may still add."""
        lf = self.settings.linear_forgetting
        n, width = len(self.codecs), self.width
        below_counts = np.zeros((n, width))
        self._T = np.zeros((n, width))
        self._C0 = np.zeros((n, width))
        self._C1 = np.zeros((n, width))
        self._N = np.zeros(n, dtype=np.int64)
        seqs = []
        for j, (col, offset) in enumerate(zip(self.columns, self.offsets, strict=True)):
            b = below[:, col]
            b = b[~np.isnan(b)].astype(np.int64) - offset
            below_counts[j] = np.bincount(
                b, weights=linear_forgetting_weights(len(b), lf), minlength=width
            )
            a = above[:, col]
            a = a[~np.isnan(a)].astype(np.int64) - offset
            seqs.append(a)
            self._N[j] = len(a)
            self._T[j] = np.bincount(a, minlength=width)
            ramp = len(a) - lf
            if ramp > 0:
                self._C0[j] = np.bincount(a[:ramp], minlength=width)
                self._C1[j] = np.bincount(
                    a[:ramp], weights=np.arange(ramp, dtype=np.float64), minlength=width
                )
        self._seq = np.zeros((n, int(self._N.max(initial=0)) + room + 1), dtype=np.int64)
        for j, a in enumerate(seqs):
            self._seq[j, : len(a)] = a
        p_below = self._posterior(below_counts)
        with np.errstate(divide="ignore"):
            self.log_p_below = np.log(p_below)
        cdf = np.cumsum(p_below, axis=1)
        cdf[np.arange(n), self.sizes - 1] = 1.0  # rounding must not leave a gap at the top
        cdf[~self.valid] = np.inf  # padding is never drawn
        self._cdf = cdf
        self._refresh_above()

    def above_counts(self) -> FloatArray:
        """The linearly forgotten "above" counts per label (tests compare them)."""
        lf = self.settings.linear_forgetting
        n_obs = self._N.astype(np.float64)
        ramp = self._N - lf
        a = 1.0 / np.maximum(n_obs, 1.0)
        s = np.where(ramp > 1, (1.0 - a) / np.maximum(ramp - 1, 1), 0.0)
        forgotten = a[:, None] * self._C0 + s[:, None] * self._C1 + (self._T - self._C0)
        return np.where((ramp > 0)[:, None], forgotten, self._T)

    def _refresh_above(self) -> None:
        p_above = self._posterior(self.above_counts())
        with np.errstate(divide="ignore", invalid="ignore"):  # padding: log 0, -inf - -inf
            self.log_p_above = np.log(p_above)
            self._score = np.where(self.valid, self.log_p_below - self.log_p_above, -np.inf)

    def add_above(self, row: FloatArray) -> None:
        """A new pending trial (its X row): the newest "above" observation of every
        categorical label active in it."""
        values = row[self.columns]
        j = np.flatnonzero(~np.isnan(values))
        if not len(j):
            return
        cat = values[j].astype(np.int64) - self.offsets[j]
        self._seq[j, self._N[j]] = cat
        self._T[j, cat] += 1
        self._N[j] += 1
        ramp = self._N[j] - self.settings.linear_forgetting
        entering = ramp > 0  # the observation at position ramp - 1 joined the ramp
        jr, pos = j[entering], ramp[entering] - 1
        x = self._seq[jr, pos]
        self._C0[jr, x] += 1
        self._C1[jr, x] += pos
        self._refresh_above()

    def best(self, rng: np.random.Generator, n_candidates: int) -> np.ndarray:
        """Per label, the best category of ``n_candidates`` draws from l(x) (the first of
        equal scores, as ``np.argmax``); with one candidate, the draw."""
        n = len(self.codecs)
        u = rng.random((n, n_candidates))
        if self.width <= 64:
            draws = (u[:, :, None] >= self._cdf[:, None, :]).sum(axis=2)
        else:  # wide choices: a search per label instead of an (n, C, width) array
            draws = np.stack([np.searchsorted(self._cdf[j], u[j], side="right") for j in range(n)])
        if n_candidates == 1:
            return draws[:, 0]
        score = np.take_along_axis(self._score, draws, axis=1)
        return draws[np.arange(n), score.argmax(axis=1)]


class TPEModel:
    """hyperopt's TPE posterior over one encoded history, for one call.

    Built from the rows that are not FAILED; pending rows are trials with loss ``+inf``.
    :meth:`propose` draws one point; :meth:`add_pending` adds a point as a new pending
    trial (hyperopt's view of a suggestion that is now running).  The history itself is
    not modified.

    Args:
        encoded: the history.
        settings: TPE's settings.
        room: how many points :meth:`add_pending` may add (sizes buffers).
    """

    def __init__(self, encoded: EncodedHistory, settings: TPESettings, room: int) -> None:
        self.settings = settings
        self.labels = encoded.labels
        self.codecs = encoded.codecs
        self._column = {c.label: c.column for c in self.codecs}
        rows = encoded.search_rows()
        self._X = encoded.X[rows]
        self._losses = history_losses(encoded.states[rows], encoded.values[rows])
        self._pending: list[FloatArray] = []
        self._room = room
        cat_codecs = [c for c in self.codecs if c.is_categorical]
        self._cat_index = {c.column: j for j, c in enumerate(cat_codecs)}
        self.categoricals = Categoricals(cat_codecs, settings)
        self.numerics = {
            c.column: NumericLabel(c, settings) for c in self.codecs if not c.is_categorical
        }
        self._fit()

    @property
    def n_trials(self) -> int:
        """Trials in the model: the history's (not FAILED) plus the pending points added."""
        return len(self._losses) + len(self._pending)

    def _all_losses(self) -> FloatArray:
        return np.concatenate([self._losses, np.full(len(self._pending), np.inf)])

    def _fit(self) -> None:
        X = np.vstack([self._X, *self._pending]) if self._pending else self._X
        losses = self._all_losses()
        below = split_below(losses, self.settings.gamma, self.settings.gamma_cap)
        self._below = below
        self.n_below = int(below.sum())
        # with no tie across the boundary the below set is {loss <= threshold}: a new
        # pending trial (+inf) cannot change it unless n_below grows
        above_min = float(losses[~below].min(initial=np.inf))
        self._split_is_unique = bool(not below.any() or losses[below].max() < above_min)
        xb, xa = X[below], X[~below]
        self.categoricals.fit(xb, xa, self._room - len(self._pending))
        for col, numeric in self.numerics.items():
            b, a = xb[:, col], xa[:, col]
            numeric.fit(b[~np.isnan(b)], a[~np.isnan(a)])

    def encode(self, point: Mapping[str, Any]) -> FloatArray:
        """A normalized point as an X row (NaN for inactive labels)."""
        row = np.full(len(self.labels), np.nan)
        for label, value in point.items():
            row[self._column[label]] = value
        return row

    def add_pending(self, point: Mapping[str, Any]) -> None:
        """Add ``point`` (normalized) as a new pending trial, the newest."""
        if len(self._pending) >= self._room:
            raise ValueError(f"no room for more than {self._room} pending points")
        row = self.encode(point)
        self._pending.append(row)
        n = self.n_trials
        if n_below(n, self.settings.gamma, self.settings.gamma_cap) != self.n_below:
            # the split grows by one trial, moved from "above" to "below": refit
            self._fit()
            return
        if not self._split_is_unique:
            # equal losses straddle the boundary (tiny histories, or ties of INFEASIBLE /
            # pending trials): the split is what numpy's sort makes of the new list
            below = split_below(self._all_losses(), self.settings.gamma, self.settings.gamma_cap)
            if not np.array_equal(below, np.append(self._below, False)):
                self._fit()
                return
            self._below = below
        else:
            self._below = np.append(self._below, False)
        # the new pending trial is "above": only its observations are added
        self.categoricals.add_above(row)
        for col, numeric in self.numerics.items():
            if not np.isnan(row[col]):
                numeric.add_above(float(row[col]))

    def propose(self, rng: np.random.Generator, n_candidates: int) -> dict[str, Any]:
        """One point, top-down: per active label the best of ``n_candidates`` draws from
        l(x) by ``log l(x) - log g(x)``; a choice's winner activates its nested labels.

        Returns:
            The raw point (choices as indices, randints as ints, the rest floats).
        """
        best = self.categoricals.best(rng, n_candidates) if len(self.categoricals) else None
        chosen: dict[int, int] = {}
        point: dict[str, Any] = {}
        for codec in self.codecs:
            if codec.parent >= 0 and chosen.get(codec.parent) != codec.option:
                continue  # inactive: its choice is inactive or picked another option
            if codec.is_categorical:
                assert best is not None
                category = int(best[self._cat_index[codec.column]])
                chosen[codec.column] = category
                point[codec.label] = category + codec.offset
            else:
                point[codec.label] = self.numerics[codec.column].propose(rng, n_candidates)
        return point
