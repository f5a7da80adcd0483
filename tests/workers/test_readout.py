"""workers.readout: torch readouts against scikit-learn, separable data, l2 selection.

Reference problems are small (scikit-learn's 8x8 digits, 64 features, a few hundred rows)
so the file runs in a few seconds on a shared 2-core CPU. scikit-learn is the reference
only: it is never on the evaluators' path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from workers import readout as ro


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    x, y = d.data[perm].astype(np.float64), d.target[perm].astype(np.int64)
    return x[:700], y[:700], x[700:1100], y[700:1100]


def _sk_scaled(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # StandardScaler uses the population std, as readout.standardizer; a constant column
    # (digits has some) is scaled by 1 in both.
    sc = StandardScaler().fit(xtr)
    return sc.transform(xtr), sc.transform(xte)


@pytest.mark.parametrize("l2", [1e-2, 10.0])
def test_ridge_matches_sklearn_ridge(digits, l2: float) -> None:
    xtr, ytr, xte, _ = digits
    clf = ro.fit_ridge(torch.from_numpy(xtr), torch.from_numpy(ytr), 10, l2)
    s_tr, s_te = _sk_scaled(xtr, xte)
    targets = np.where(np.eye(10)[ytr] > 0, 1.0, -1.0)
    sk = Ridge(alpha=l2).fit(s_tr, targets)
    np.testing.assert_allclose(clf.W.numpy(), sk.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(clf.b.numpy(), sk.intercept_, rtol=1e-7, atol=1e-9)
    pred = clf.predict(torch.from_numpy(xte)).numpy()
    np.testing.assert_array_equal(pred, sk.predict(s_te).argmax(axis=1))


def test_ridge_dual_equals_primal() -> None:
    g = torch.Generator().manual_seed(0)
    for n, d in [(40, 120), (120, 40)]:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (n,), generator=g)
        p = ro.fit_ridge(x, y, 3, 0.7, form="primal")
        q = ro.fit_ridge(x, y, 3, 0.7, form="dual")
        torch.testing.assert_close(p.W, q.W, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(p.b, q.b, rtol=1e-8, atol=1e-10)


def test_ridge_float32_close_to_float64(digits) -> None:
    xtr, ytr, xte, _ = digits
    a = ro.fit_ridge(torch.from_numpy(xtr), torch.from_numpy(ytr), 10, 1.0)
    b = ro.fit_ridge(torch.from_numpy(xtr).float(), torch.from_numpy(ytr), 10, 1.0)
    assert b.W.dtype == torch.float32
    torch.testing.assert_close(b.W.double(), a.W, rtol=1e-3, atol=1e-4)
    agree = a.predict(torch.from_numpy(xte)) == b.predict(torch.from_numpy(xte).float())
    assert agree.double().mean() >= 0.99


def test_logistic_agrees_with_sklearn(digits) -> None:
    xtr, ytr, xte, yte = digits
    clf = ro.fit_logistic(torch.from_numpy(xtr), torch.from_numpy(ytr), 10, 1.0)
    s_tr, s_te = _sk_scaled(xtr, xte)
    sk = LogisticRegression(C=1.0, max_iter=5000, tol=1e-8).fit(s_tr, ytr)
    pred = clf.predict(torch.from_numpy(xte)).numpy()
    assert (pred == sk.predict(s_te)).mean() >= 0.98
    assert abs((pred == yte).mean() - sk.score(s_te, yte)) <= 0.02


def test_svm_agrees_with_sklearn_linear_svc(digits) -> None:
    xtr, ytr, xte, yte = digits
    clf = ro.fit_svm(torch.from_numpy(xtr), torch.from_numpy(ytr), 10, 1.0, max_iter=500)
    s_tr, s_te = _sk_scaled(xtr, xte)
    # LinearSVC also penalises the intercept (ours does not): close, not identical.
    sk = LinearSVC(C=1.0, max_iter=20000).fit(s_tr, ytr)
    pred = clf.predict(torch.from_numpy(xte)).numpy()
    assert (pred == sk.predict(s_te)).mean() >= 0.95
    assert abs((pred == yte).mean() - sk.score(s_te, yte)) <= 0.03


@pytest.mark.parametrize("kind", ro.KINDS)
def test_separable_data_is_fitted_perfectly(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])
    y = torch.arange(90) % 3
    x = centres[y] + 0.5 * torch.randn(90, 3, generator=g)
    clf = ro.fit_ridge(x, y, 3, 1e-3) if kind == "ridge" else ro.FITTERS[kind](x, y, 3, 1e-3)
    assert clf.accuracy(x, y) == 1.0


def test_select_and_fit_maps_labels_and_picks_l2_from_the_grid(digits) -> None:
    xtr, ytr, xte, yte = digits
    labels = np.array([3, 7, 11, 20, 21, 22, 30, 31, 40, 99])  # arbitrary label values
    clf = ro.select_and_fit(torch.from_numpy(xtr).float(), labels[ytr], "ridge", seed=0)
    assert clf.l2 in ro.RIDGE_GRID
    assert [v for v, _ in clf.l2_curve] == list(ro.RIDGE_GRID)
    assert max(s for _, s in clf.l2_curve) == dict(clf.l2_curve)[clf.l2]
    pred = clf.predict(torch.from_numpy(xte).float()).numpy()
    assert set(np.unique(pred)) <= set(labels)
    assert (pred == labels[yte]).mean() >= 0.9
    again = ro.select_and_fit(torch.from_numpy(xtr).float(), labels[ytr], "ridge", seed=0)
    assert again.l2 == clf.l2
    torch.testing.assert_close(again.W, clf.W)


def test_select_and_fit_lbfgs_grid_and_fixed_l2(digits) -> None:
    xtr, ytr, xte, yte = digits
    x, y = torch.from_numpy(xtr[:300]).float(), torch.from_numpy(ytr[:300])
    grid = (1e-2, 1.0, 1e2)
    clf = ro.select_and_fit(x, y, "logistic", seed=0, grid=grid, max_iter=100)
    assert clf.l2 in grid and len(clf.l2_curve) == 3
    assert clf.accuracy(torch.from_numpy(xte).float(), yte) >= 0.85
    fixed = ro.select_and_fit(x, y, "svm", l2=3.0, max_iter=100)
    assert fixed.l2 == 3.0 and fixed.l2_curve == []


def test_inner_split_is_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(4), [10, 20, 1, 5])
    fit, held = ro.stratified_inner_split(y, 0.2, seed=3)
    assert np.intersect1d(fit, held).size == 0 and len(fit) + len(held) == len(y)
    assert [int((y[held] == c).sum()) for c in range(4)] == [2, 4, 0, 1]
    fit2, held2 = ro.stratified_inner_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(fit, fit2)
    np.testing.assert_array_equal(held, held2)


def test_bad_requests_raise_value_error() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="unknown readout"):
        ro.select_and_fit(x, torch.arange(10) % 2, "knn")
    with pytest.raises(ValueError, match="2 distinct labels"):
        ro.select_and_fit(x, torch.zeros(10, dtype=torch.long), "ridge")
    with pytest.raises(ValueError, match="l2"):
        ro.fit_ridge(x, torch.arange(10) % 2, 2, -1.0)
