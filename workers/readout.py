"""Linear readouts fitted on the device, in torch (docs/design.md section 4).

Three classifiers on a feature matrix ``X`` ``(n, d)`` (any floating dtype, any device):

* ``ridge``     one-hot targets in {-1, +1} (scikit-learn's ``RidgeClassifier`` convention),
                closed form. Primal ``(X'X + l2 I) W = X'Y`` when ``d <= n``, dual
                ``W = X' (XX' + l2 I)^-1 Y`` when ``d > n``; the factorisation runs in float64.
* ``logistic``  multinomial logistic regression, full-batch L-BFGS (strong Wolfe).
* ``svm``       linear SVM, one-vs-rest squared hinge (scikit-learn ``LinearSVC``'s default
                loss), full-batch L-BFGS.

Regularisation convention (``l2`` is always a penalty on the *sum* of the per-sample
losses, and the intercept is never penalised)::

    ridge     sum_i ||y_i - W'x_i - b||^2  +  l2 * ||W||^2       (sklearn Ridge(alpha=l2))
    logistic  sum_i CE(W'x_i + b, y_i)     +  l2 / 2 * ||W||^2   (sklearn C = 1 / l2)
    svm       sum_i sum_c max(0, 1 - t_ic (W'x_i + b)_c)^2 + l2 / 2 * ||W||^2   (C = 1 / l2)

Features are standardised with the mean and standard deviation of the *training* rows
(a constant column gets std 1); the fitted classifier applies the same transform to any
``X`` it scores, so callers pass raw features everywhere.

``select_and_fit`` is the entry point of the evaluators: with ``l2=None`` it picks ``l2``
from a log grid by accuracy on a seeded, stratified inner split of the training rows, then
refits on all training rows. Ridge evaluates the whole grid from one eigendecomposition.
``ridge_kernel_grid_scores`` / ``ridge_kernel_decision`` / ``best_l2`` are the same ridge
grid, tie rule and dual solution from precomputed Gram matrices, for callers that build the
kernels without holding the feature matrix (:mod:`workers.pair_kernels`, LFW View 2).

Every fit takes an optional ``check`` callable, called between its steps (Gram matrix,
factorisation, each grid value, each L-BFGS function evaluation): the evaluators pass their
deadline / stop check, which may raise to abandon the fit. It computes nothing, so the
results are the same with or without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

ReadoutKind = Literal["ridge", "logistic", "svm"]
KINDS: tuple[str, ...] = ("ridge", "logistic", "svm")

# Ridge's grid is evaluated for free from one eigendecomposition, so it is wide: the scale
# of a useful l2 grows with the feature count (the Gram matrix of d standardised features
# has mean eigenvalue ~ d). L-BFGS readouts fit once per grid value: a shorter grid.
RIDGE_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-3, 9, 25))
LBFGS_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 3, 8))
DEFAULT_MAX_ITER = 200
# Inner split used to choose l2 (fraction of the training rows held out).
INNER_FRACTION = 0.2

Check = Callable[[], None] | None


def _noop() -> None:
    return None


# -- the fitted classifier ----------------------------------------------------------------
@dataclass
class LinearClassifier:
    """``decision(X) = ((X - mean) / std) @ W + b``; ``predict`` = ``classes[argmax]``.

    ``W`` ``(d, C)``, ``b`` ``(C,)``, ``mean``/``std`` ``(d,)`` live on the device the
    classifier was fitted on. ``classes`` ``(C,)`` int64 maps column -> label. ``l2`` is the
    regularisation used; ``l2_curve`` holds ``(l2, inner accuracy)`` pairs when it was
    chosen by :func:`select_and_fit` (empty otherwise).
    """

    kind: str
    W: torch.Tensor
    b: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: torch.Tensor
    l2: float
    l2_curve: list[tuple[float, float]] = field(default_factory=list)
    n_iter: int | None = None

    @property
    def n_features(self) -> int:
        return int(self.W.shape[0])

    def decision(self, X: torch.Tensor) -> torch.Tensor:
        """Scores ``(n, C)`` in ``W``'s dtype. Chunks the rows to bound the temporary."""
        X = _as_tensor(X, self.W.device)
        out = []
        step = max(1, (1 << 26) // max(1, X.shape[1]))  # ~256 MiB of float32 per chunk
        for i in range(0, X.shape[0], step):
            xs = (X[i : i + step].to(self.W.dtype) - self.mean) / self.std
            out.append(xs @ self.W + self.b)
        if not out:
            return torch.empty(0, self.W.shape[1], dtype=self.W.dtype, device=self.W.device)
        return torch.cat(out)

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """Labels ``(n,)`` int64 on the classifier's device."""
        return self.classes[self.decision(X).argmax(dim=1)]

    def accuracy(self, X: torch.Tensor, y: torch.Tensor | np.ndarray) -> float:
        """Fraction of rows whose predicted label equals ``y``."""
        y = _as_tensor(y, self.W.device).long()
        if y.numel() == 0:
            return float("nan")
        return float((self.predict(X) == y).double().mean().item())


# -- helpers ------------------------------------------------------------------------------
def _as_tensor(a: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = a if torch.is_tensor(a) else torch.from_numpy(np.asarray(a))
    return t.to(device)


def _float_dtype(X: torch.Tensor) -> torch.dtype:
    """Work dtype: float64 stays float64, everything else (bf16, fp16, fp32) -> float32."""
    return torch.float64 if X.dtype == torch.float64 else torch.float32


def standardizer(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean and std (population) of ``X`` in its work dtype; std 0 -> 1."""
    Xf = X.to(_float_dtype(X))
    mean = Xf.mean(dim=0)
    std = Xf.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean, std


def _prepare(
    X: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    n_classes: int,
    l2: float,
    standardize: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype, torch.Tensor, torch.Tensor]:
    """Checked tensors, the work dtype and the standardisation (identity when off) shared
    by every fit. Raises ``ValueError`` for a negative ``l2`` or mismatched shapes."""
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    X = X if torch.is_tensor(X) else torch.from_numpy(np.asarray(X))
    y = _as_tensor(y, X.device)
    _check_xy(X, y, n_classes)
    dt = _float_dtype(X)
    if standardize:
        mean, std = standardizer(X)
    else:
        mean = torch.zeros(X.shape[1], dtype=dt, device=X.device)
        std = torch.ones(X.shape[1], dtype=dt, device=X.device)
    return X, y, dt, mean, std


def _check_xy(X: torch.Tensor, y: torch.Tensor, n_classes: int) -> None:
    if X.ndim != 2:
        raise ValueError(f"X must be (n, d), got {tuple(X.shape)}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must be (n,) with n = {X.shape[0]}, got {tuple(y.shape)}")
    if X.shape[0] == 0:
        raise ValueError("cannot fit a readout on 0 rows")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {n_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got [{int(y.min())}, {int(y.max())}]"
        )


def _cholesky_solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Solve ``A X = B`` for symmetric positive (semi)definite ``A`` (float64).

    Adds a growing diagonal jitter if the factorisation fails (``l2 == 0`` on a singular
    Gram matrix); after 8 tries falls back to least squares.
    """
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    scale = float(A.diagonal().abs().mean().clamp_min(1e-30))
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    for k in range(8):
        L, info = torch.linalg.cholesky_ex(A + eye * scale * 10.0 ** (k - 12))
        if int(info) == 0:
            return torch.cholesky_solve(B, L)
    return torch.linalg.lstsq(A, B).solution  # pragma: no cover - pathological input


def _targets(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-vs-rest targets in {-1, +1}, ``(n, C)``."""
    return F.one_hot(y.long(), n_classes).to(dtype) * 2.0 - 1.0


def _classifier(
    kind: str,
    W: torch.Tensor,
    b: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    n_classes: int,
    l2: float,
    classes: torch.Tensor | None = None,
    n_iter: int | None = None,
) -> LinearClassifier:
    if classes is None:
        classes = torch.arange(n_classes, device=W.device)
    return LinearClassifier(
        kind=kind,
        W=W,
        b=b,
        mean=mean,
        std=std,
        classes=classes.to(W.device),
        l2=float(l2),
        n_iter=n_iter,
    )


# -- ridge --------------------------------------------------------------------------------
def fit_ridge(
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    *,
    standardize: bool = True,
    form: Literal["auto", "primal", "dual"] = "auto",
    check: Check = None,
) -> LinearClassifier:
    """Closed-form ridge regression on one-hot {-1, +1} targets; labels ``y`` in
    ``[0, n_classes)``.

    Minimises ``||Y - X W - 1 b'||^2 + l2 ||W||^2`` on the (standardised, then centred) rows:
    exactly scikit-learn's ``Ridge(alpha=l2)`` on the same standardised features. Uses the
    primal ``d x d`` system when ``d <= n`` and the dual ``n x n`` system otherwise (``form``
    forces one; both give the same solution for ``l2 > 0``). The
    Gram matrix is computed in the work dtype of ``X`` (float32 for float32 features, on
    the device's matmul units) and factorised in float64. ``check()`` runs between steps.
    """
    check = check or _noop
    X, y, dt, mean, std = _prepare(X, y, n_classes, l2, standardize)
    # One working copy: standardised, then centred in place (a no-op up to rounding when
    # the statistics came from these rows, but needed for standardize=False). The in-place
    # division gives the same bits as ``(X - mean) / std`` without a second temporary.
    Xc = X.to(dt) - mean
    Xc /= std
    xm = Xc.mean(dim=0)
    Xc -= xm
    Y = _targets(y, n_classes, torch.float64)
    ym = Y.mean(dim=0)
    Yc = Y - ym
    n, d = Xc.shape
    if form not in ("auto", "primal", "dual"):
        raise ValueError(f"form must be auto, primal or dual, got {form!r}")
    if form == "primal" or (form == "auto" and d <= n):
        check()
        G = (Xc.T @ Xc).double()
        G.diagonal().add_(l2)
        check()
        W = _cholesky_solve(G, (Xc.T @ Yc.to(dt)).double())
    else:
        check()
        K = (Xc @ Xc.T).double()
        K.diagonal().add_(l2)
        check()
        A = _cholesky_solve(K, Yc)
        W = (Xc.T @ A.to(dt)).double()
    b = ym - xm.double() @ W
    return _classifier("ridge", W.to(dt), b.to(dt), mean, std, n_classes, l2)


def _ridge_grid_scores(
    Xtr: torch.Tensor,
    ytr: torch.Tensor,
    Xva: torch.Tensor,
    yva: torch.Tensor,
    n_classes: int,
    grid: Sequence[float],
    check: Check = None,
) -> list[float]:
    """Validation accuracy of ridge for every ``l2`` in ``grid`` from one ``eigh``.

    With the (centred) Gram matrix ``G = V diag(s) V'`` the prediction for ``l2`` is
    ``A diag(1 / (s + l2)) B``, ``A``/``B`` fixed: primal ``A = Xva V``, ``B = V' Xtr' Y``;
    dual ``A = Xva Xtr' V``, ``B = V' Y``. ``check()`` runs between steps and grid values.
    """
    check = check or _noop
    dt = _float_dtype(Xtr)
    mean, std = standardizer(Xtr)
    Xc = Xtr.to(dt) - mean  # new tensors, divided in place: same bits, one copy each
    Xc /= std
    Vc = Xva.to(dt) - mean
    Vc /= std
    xm = Xc.mean(dim=0)
    Xc -= xm
    Vc -= xm
    Y = _targets(ytr, n_classes, torch.float64)
    Yc = Y - Y.mean(dim=0)
    n, d = Xc.shape
    check()
    if d <= n:
        G = (Xc.T @ Xc).double()
        check()
        s, V = torch.linalg.eigh(G)
        del G
        check()
        A = Vc.double() @ V
        B = V.T @ (Xc.T @ Yc.to(dt)).double()
    else:
        K = (Xc @ Xc.T).double()
        check()
        s, V = torch.linalg.eigh(K)
        del K
        check()
        A = (Vc @ Xc.T).double() @ V
        B = V.T @ Yc
    s = s.clamp_min(0.0)
    scores = []
    for l2 in grid:
        check()
        pred = (A @ (B / (s + l2)[:, None])).argmax(dim=1)
        scores.append(float((pred == yva).double().mean().item()))
    return scores


# -- ridge from precomputed kernels --------------------------------------------------------
# The same dual ridge as fit_ridge / _ridge_grid_scores, given the Gram matrices of the
# standardised, centred rows instead of the rows: a caller that can build the kernels
# without holding the feature matrix (workers.pair_kernels, for LFW View 2) gets the same
# l2 choice and the same predictions up to rounding.
def ridge_kernel_grid_scores(
    K_fit: torch.Tensor,
    K_held_fit: torch.Tensor,
    y_fit: torch.Tensor,
    y_held: torch.Tensor,
    n_classes: int,
    grid: Sequence[float],
    check: Check = None,
) -> list[float]:
    """:func:`_ridge_grid_scores` (dual branch) from its kernels.

    ``K_fit`` ``(nf, nf)`` float64 is ``Xc Xc'`` and ``K_held_fit`` ``(nh, nf)`` float64 is
    ``Vc Xc'``, where ``Xc`` are the inner-fit rows standardised with their own column
    mean / std (population, 0 -> 1) and centred by the mean of the standardised rows, and
    ``Vc`` the held-out rows under the same transform. ``y_fit`` / ``y_held``: labels in
    ``[0, n_classes)`` on the kernels' device. Returns the held-out accuracy for every
    ``l2`` of ``grid``; like ``_ridge_grid_scores`` the prediction has no intercept. One
    ``eigh`` of ``K_fit`` (its input is left intact: peak ~4 x ``K_fit``'s size with the
    LAPACK workspace). ``check()`` runs between steps and grid values.
    """
    check = check or _noop
    Y = _targets(y_fit, n_classes, torch.float64)
    Yc = Y - Y.mean(dim=0)
    check()
    s, V = torch.linalg.eigh(K_fit)
    check()
    A = K_held_fit @ V
    B = V.T @ Yc
    del V
    s = s.clamp_min(0.0)
    scores = []
    for l2 in grid:
        check()
        pred = (A @ (B / (s + l2)[:, None])).argmax(dim=1)
        scores.append(float((pred == y_held).double().mean().item()))
    return scores


def ridge_kernel_decision(
    K: torch.Tensor,
    K_test_train: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    check: Check = None,
) -> torch.Tensor:
    """Scores ``(m, C)`` float64 of the dual :func:`fit_ridge` on test rows, from kernels.

    ``K`` ``(n, n)`` float64 is ``Xc Xc'`` of the training rows (standardised with their
    column mean / std, then centred by ``xm``, the mean of the standardised rows);
    ``K_test_train`` ``(m, n)`` is ``Tc Xc'`` with ``Tc`` the test rows standardised with
    the *training* statistics and centred by the same ``xm``. ``y``: training labels in
    ``[0, n_classes)``. With ``A = (K + l2 I)^-1 Yc`` fit_ridge has ``W = Xc' A`` and
    ``b = ym - xm W``, so its decision on a test row ``t`` (standardised) is
    ``t W + b = (t - xm) Xc' A + ym``: ``K_test_train @ A + ym``, computed here in float64
    (fit_ridge rounds ``A`` and ``W`` to float32 first: only rounding differs).
    ``K``'s diagonal is increased by ``l2`` *in place* (no n x n copy); pass a copy to keep
    it. Raises ``ValueError`` for a negative ``l2``. ``check()`` runs between steps.
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    check = check or _noop
    Y = _targets(y, n_classes, torch.float64)
    ym = Y.mean(dim=0)
    Yc = Y - ym
    K.diagonal().add_(l2)
    check()
    A = _cholesky_solve(K, Yc)
    check()
    return K_test_train @ A + ym


# -- L-BFGS readouts ----------------------------------------------------------------------
def _lbfgs(
    kind: str,
    Xs: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None,
    check: Check = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit ``W, b`` on standardised ``Xs`` by full-batch L-BFGS; returns ``(W, b, iters)``.

    The objective is divided by ``n`` (same minimiser) so that the line search sees O(1)
    values whatever the row count. ``check()`` runs before every function evaluation.
    """
    check = check or _noop
    n, d = Xs.shape
    dt = Xs.dtype
    W = torch.zeros(d, n_classes, dtype=dt, device=Xs.device)
    b = torch.zeros(n_classes, dtype=dt, device=Xs.device)
    if init is not None:
        W.copy_(init[0])
        b.copy_(init[1])
    W.requires_grad_(True)
    b.requires_grad_(True)
    targets = _targets(y, n_classes, dt) if kind == "svm" else None
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    lam = l2 / (2.0 * n)

    def closure() -> torch.Tensor:
        check()
        opt.zero_grad()
        z = Xs @ W + b
        if kind == "logistic":
            loss = F.cross_entropy(z, y, reduction="mean")
        else:
            loss = (1.0 - targets * z).clamp_min(0.0).square().sum(dim=1).mean()
        loss = loss + lam * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return W.detach(), b.detach(), n_iter


def fit_logistic(
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    max_iter: int = DEFAULT_MAX_ITER,
    *,
    standardize: bool = True,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    check: Check = None,
) -> LinearClassifier:
    """Multinomial logistic regression, ``sum CE + l2/2 ||W||^2`` (sklearn ``C = 1/l2``),
    by full-batch L-BFGS for at most ``max_iter`` iterations. ``init`` = ``(W, b)`` in the
    standardised space (a warm start)."""
    return _fit_lbfgs("logistic", X, y, n_classes, l2, max_iter, standardize, init, check)


def fit_svm(
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    max_iter: int = DEFAULT_MAX_ITER,
    *,
    standardize: bool = True,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    check: Check = None,
) -> LinearClassifier:
    """Linear SVM, one-vs-rest squared hinge, ``sum loss + l2/2 ||W||^2`` (sklearn
    ``LinearSVC(C=1/l2)`` except that the intercept is not penalised), by L-BFGS."""
    return _fit_lbfgs("svm", X, y, n_classes, l2, max_iter, standardize, init, check)


def _fit_lbfgs(
    kind: str,
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    max_iter: int,
    standardize: bool,
    init: tuple[torch.Tensor, torch.Tensor] | None,
    check: Check = None,
) -> LinearClassifier:
    X, y, dt, mean, std = _prepare(X, y, n_classes, l2, standardize)
    Xs = X.to(dt) - mean  # a new tensor, divided in place: same bits as (X - mean) / std
    Xs /= std
    W, b, it = _lbfgs(kind, Xs, y.long(), n_classes, l2, max_iter, init, check)
    return _classifier(kind, W, b, mean, std, n_classes, l2, n_iter=it)


FITTERS = {"ridge": fit_ridge, "logistic": fit_logistic, "svm": fit_svm}


# -- model selection ----------------------------------------------------------------------
def stratified_inner_split(
    y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of row indices: ``(fit_idx, held_out_idx)``, both sorted.

    Each class with at least 2 rows puts ``max(1, round(fraction * count))`` rows (but never
    all of them) in the held-out part; a class with one row stays in the fit part.
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if rows.size < 2:
            continue
        k = min(rows.size - 1, max(1, round(fraction * rows.size)))
        held.append(rng.permutation(rows)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def best_l2(curve: Sequence[tuple[float, float]]) -> float:
    """The ``l2`` of ``(l2, score)`` pairs with the best score; ties: the largest l2 (the
    simplest model). The rule of :func:`select_and_fit`."""
    best = max(s for _, s in curve)
    return max(v for v, s in curve if s == best)


def select_and_fit(
    X_train: torch.Tensor,
    y_train: torch.Tensor | np.ndarray,
    kind: str,
    l2: float | None = None,
    seed: int = 0,
    *,
    grid: Sequence[float] | None = None,
    inner_fraction: float = INNER_FRACTION,
    max_iter: int = DEFAULT_MAX_ITER,
    check: Check = None,
) -> LinearClassifier:
    """Fit a ``kind`` readout on ``(X_train, y_train)``; labels may be any integers.

    ``l2`` given: one fit with it. ``l2=None``: every value of ``grid`` (default
    :data:`RIDGE_GRID` for ridge, :data:`LBFGS_GRID` otherwise) is scored by accuracy on a
    seeded stratified inner split (``inner_fraction`` of the rows, :func:`stratified_inner_
    split`) of the *training* rows; the best (ties: the largest l2, the simplest model) is
    refitted on all training rows. Returns the fitted :class:`LinearClassifier`; its
    ``.l2`` is the value used and ``.l2_curve`` the inner scores. Everything runs on
    ``X_train``'s device. ``check()`` is called between grid values and inside every fit
    (it may raise to abandon the fit; it does not change the result). Raises
    ``ValueError`` for an unknown kind or fewer than 2 labels.
    """
    if kind not in FITTERS:
        raise ValueError(f"unknown readout kind {kind!r}; known: {KINDS}")
    X = X_train if torch.is_tensor(X_train) else torch.from_numpy(np.asarray(X_train))
    y_all = _as_tensor(y_train, X.device).long()
    classes, y = torch.unique(y_all, sorted=True, return_inverse=True)
    n_classes = int(classes.numel())
    if n_classes < 2:
        raise ValueError(f"need at least 2 distinct labels to fit a readout, got {n_classes}")
    curve: list[tuple[float, float]] = []
    if l2 is None:
        values = (
            list(grid) if grid is not None else list(RIDGE_GRID if kind == "ridge" else LBFGS_GRID)
        )
        fit_idx, held_idx = stratified_inner_split(y.cpu().numpy(), inner_fraction, seed)
        if held_idx.size == 0 or len(np.unique(y.cpu().numpy()[fit_idx])) < 2:
            l2 = 1.0  # too few rows to hold any out: a neutral default
        else:
            fi = torch.from_numpy(fit_idx).to(X.device)
            hi = torch.from_numpy(held_idx).to(X.device)
            Xf, yf, Xh, yh = X[fi], y[fi], X[hi], y[hi]
            if kind == "ridge":
                scores = _ridge_grid_scores(Xf, yf, Xh, yh, n_classes, values, check)
            else:
                scores = []
                warm: tuple[torch.Tensor, torch.Tensor] | None = None
                # Strongest penalty first: each fit warm-starts the next, weaker one.
                order = sorted(range(len(values)), key=lambda i: -values[i])
                by_index: dict[int, float] = {}
                mean, std = standardizer(Xf)
                # Standardised copies made in place (same bits as (Xf - mean) / std); the
                # raw subsets are dropped as soon as they are copied: one copy alive each.
                Xfs = Xf.to(mean.dtype) - mean
                del Xf
                Xfs /= std
                Xhs = Xh.to(mean.dtype) - mean
                del Xh
                Xhs /= std
                for i in order:
                    W, b, _ = _lbfgs(kind, Xfs, yf, n_classes, values[i], max_iter, warm, check)
                    warm = (W, b)
                    pred = (Xhs @ W + b).argmax(dim=1)
                    by_index[i] = float((pred == yh).double().mean().item())
                scores = [by_index[i] for i in range(len(values))]
                del Xfs, Xhs, warm
            # The inner split's copies are no longer needed: free them before the refit
            # makes its own (the refit's peak is then X plus one standardised copy).
            if kind == "ridge":
                del Xf, Xh
            curve = list(zip(values, scores, strict=True))
            l2 = best_l2(curve)
    if check is not None:
        check()
    if kind == "ridge":
        clf = fit_ridge(X, y, n_classes, float(l2), check=check)
    else:
        clf = FITTERS[kind](X, y, n_classes, float(l2), max_iter, check=check)
    clf.classes = classes
    clf.l2_curve = curve
    return clf
