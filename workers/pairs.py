"""The ``pairs`` protocol (docs/design.md section 4): same / different on LFW-style pairs.

``_pairs`` extracts the features of every image the pairs reference (once, one float32
row per image: ``feats``), builds comparison features with :func:`pair_features` and fits a
linear same/different readout.

* View 1 (``final=False``): :data:`PAIR_FEATURES_SEARCH`, fit on ``dev_train``, accuracy
  on ``dev_test``, one report (step 0). The comparison matrices are materialised (1,100 x
  25,600 float32 for FG11 at LFW's size: ~0.1 GB per copy).
* View 2 (``final=True``): :data:`PAIR_FEATURES_FINAL` (4 x ``n_features`` columns), each
  fold scored by a readout fitted on the other folds (in fold order), one report per fold
  (the running mean); value = the mean, metrics ``folds``, ``stderr``, ``l2`` (per fold)
  and ``kernel_chunk_columns``. No comparison matrix is held for ridge in the dual form
  (more columns than training pairs: FG11's 102,400 vs 5,400): per fold, one pass over
  column chunks of the comparison features, made on the fly from ``feats`` and the pair
  index, accumulates the float64 Gram matrices the dual ridge needs
  (:mod:`workers.pair_kernels`); the l2 grid (one ``eigh``, :data:`readout.RIDGE_GRID`,
  same inner split and tie rule) and the dual solve then run on the kernels
  (:func:`workers.readout.ridge_kernel_grid_scores`,
  :func:`~workers.readout.ridge_kernel_decision`). It is the same computation as
  ``select_and_fit`` on the materialised matrix (same standardisation with training-row
  statistics, same inner split, same l2 choice, same solution) up to rounding. Memory
  beyond the dataset: ``feats`` + the kernels (~0.45 GB at LFW's size) + one chunk
  (:data:`pair_kernels.CHUNK_BYTES`, a few copies) + the ``eigh`` workspace: measured
  1.7 GB above the RSS after loading for 25,600 features on LFW's 10 x 600 pairs (7,586
  images; bench/pairs.py, bench/RESULTS.md), where the old path passed 8 GB (~11 GB).
  :func:`pairs_peak_bytes` estimates it before a run. Logistic / svm (L-BFGS in the
  primal) and low-dimensional ridge keep the materialised rows, one fold at a time
  (:func:`_materialised_fold`: ~``4 d (3 n + m)`` bytes, 7-11 GB for FG11 at LFW's size).

Called by :func:`workers.evaluators.evaluate`; the contract is in that module's docstring
(``control.tick()`` before every fold and every kernel chunk, ``control.check()`` inside
the solves; out of memory becomes ``InfeasibleArchitecture``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from search_space.arch import Architecture, ShapeReport
from search_space.model import build_model

from . import pair_kernels as pk
from . import readout as ro
from .evaluation_control import EvalResult, _Control, _json_safe, _oom_is_infeasible, _sync
from .stages import _extract_timed, _fit_readout

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = ["PAIR_FEATURES_FINAL", "PAIR_FEATURES_SEARCH", "pair_features", "pairs_peak_bytes"]

PAIR_FEATURES_SEARCH = ("sqrtabsdiff",)
PAIR_FEATURES_FINAL = ("mult", "absdiff", "sqdiff", "sqrtabsdiff")


# -- pairs -----------------------------------------------------------------------------
def pair_features(f1: torch.Tensor, f2: torch.Tensor, kinds: tuple[str, ...]) -> torch.Tensor:
    """Comparison features of two feature rows, concatenated in ``kinds`` order:
    ``mult`` f1*f2, ``absdiff`` |f1-f2|, ``sqdiff`` (f1-f2)^2, ``sqrtabsdiff`` sqrt|f1-f2|."""
    parts = []
    diff = f1 - f2
    for k in kinds:
        if k == "mult":
            parts.append(f1 * f2)
        elif k == "absdiff":
            parts.append(diff.abs())
        elif k == "sqdiff":
            parts.append(diff * diff)
        elif k == "sqrtabsdiff":
            parts.append(diff.abs().sqrt())
        else:
            raise ValueError(f"unknown pair feature {k!r}")
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def pair_sets(ds: Dataset, final: bool) -> list[np.ndarray]:
    """The pair index arrays ``(n, 2)`` of a protocol run: every View 2 fold
    (``final=True``), or View 1's ``[dev_train, dev_test]``. Raises ``ValueError`` for a
    dataset without pairs or without View 2 folds."""
    pairs = getattr(ds, "pairs", None)
    if pairs is None:
        raise ValueError(f"{ds.uri} has no pairs: the pairs protocol needs an lfw: dataset")
    if final:
        if not pairs.folds:
            raise ValueError(f"{ds.uri} has no View 2 folds (pairs.txt)")
        return [np.asarray(p, dtype=np.int64).reshape(-1, 2) for p, _ in pairs.folds]
    return [
        np.asarray(pairs.dev_train, dtype=np.int64).reshape(-1, 2),
        np.asarray(pairs.dev_test, dtype=np.int64).reshape(-1, 2),
    ]


def _pairs(
    arch: Architecture,
    ds: Dataset,
    rep: ShapeReport,
    *,
    final: bool,
    seed: int,
    device: torch.device,
    kind: str,
    batch_size: int,
    max_features: int,
    control: _Control,
) -> EvalResult:
    t0 = time.perf_counter()
    sets = pair_sets(ds, final)
    pairs = ds.pairs
    assert pairs is not None  # pair_sets raised otherwise
    images = np.unique(np.concatenate([s.ravel() for s in sets]))
    with _oom_is_infeasible(device, "building the model"):
        model = build_model(arch, device=device, max_features=max_features)
    feats, ext = _extract_timed(model, ds, images, device, batch_size, control)
    kinds = PAIR_FEATURES_FINAL if final else PAIR_FEATURES_SEARCH

    def comparison(p: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(np.searchsorted(images, p)).to(device)
        return pair_features(feats[rows[:, 0]], feats[rows[:, 1]], kinds)

    def labels(same: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(same, dtype=bool).astype(np.int64)).to(device)

    t1 = time.perf_counter()
    metrics: dict[str, Any] = {
        "protocol": "pairs",
        "readout": kind,
        "pair_features": list(kinds),
        "n_features": model.n_features,
        "n_pair_features": model.n_features * len(kinds),
    }
    if not final:
        with _oom_is_infeasible(device, "building the pair features"):
            Xtr, Xte = comparison(sets[0]), comparison(sets[1])
        ytr, yte = labels(pairs.dev_train_same), labels(pairs.dev_test_same)
        control.tick()
        clf = _fit_readout(Xtr, ytr, kind, arch.readout.l2, seed, device, control.check)
        with _oom_is_infeasible(device, "scoring the readout"):
            value = clf.accuracy(Xte, yte)
        control.report(0, value)
        metrics.update(
            split="view1",
            l2=clf.l2,
            l2_curve=[list(c) for c in clf.l2_curve],
            n_fit=len(sets[0]),
            n_scored=len(sets[1]),
        )
    else:
        rows = [np.searchsorted(images, s) for s in sets]
        ys = [np.asarray(same, dtype=bool).astype(np.int64) for _, same in pairs.folds]
        fold_acc, l2s, chunk_cols = _view2(
            feats, rows, ys, kinds, kind, arch.readout.l2, seed, device, control
        )
        value = float(np.mean(fold_acc))
        K = len(fold_acc)
        stderr = float(np.std(fold_acc, ddof=1) / math.sqrt(K)) if K > 1 else 0.0
        metrics.update(
            split="view2",
            folds=fold_acc,
            stderr=stderr,
            l2=l2s,
            n_scored=sum(len(s) for s in sets),
            kernel_chunk_columns=chunk_cols,
        )
    _sync(device)
    metrics.update(
        ext,
        readout_seconds=time.perf_counter() - t1,
        seconds=time.perf_counter() - t0,
        device=str(device),
    )
    return EvalResult(float(value), _json_safe(metrics))


# -- View 2 ----------------------------------------------------------------------------
def _view2(
    feats: torch.Tensor,
    rows: list[np.ndarray],
    ys: list[np.ndarray],
    kinds: tuple[str, ...],
    kind: str,
    l2: float | None,
    seed: int,
    device: torch.device,
    control: _Control,
) -> tuple[list[float], list[float], int | None]:
    """Score every fold with a ``kind`` readout fitted on the other folds (in fold order, as
    ``select_and_fit`` on the concatenated folds); one report per fold (the running mean).

    ``rows[k]`` ``(n_k, 2)``: the pairs of fold k as row indices into ``feats``; ``ys[k]``
    their same (1) / different (0) labels. Ridge with more comparison columns than
    training pairs (the dual form, FG11's case) goes through :func:`_ridge_kernel_fold`;
    anything else through :func:`_materialised_fold`. Returns ``(fold accuracies, l2 per
    fold, columns per kernel chunk or None)``.
    """
    d = int(feats.shape[1]) * len(kinds)
    fold_acc: list[float] = []
    l2s: list[float] = []
    chunk_cols: int | None = None
    for k in range(len(rows)):
        control.tick()
        others = [i for i in range(len(rows)) if i != k]
        tr = np.concatenate([rows[i] for i in others])
        ytr = np.concatenate([ys[i] for i in others])
        if kind == "ridge" and d > len(tr):
            acc, used, chunk_cols = _ridge_kernel_fold(
                feats, tr, rows[k], ytr, ys[k], kinds, l2, seed, device, control
            )
        else:
            acc, used = _materialised_fold(
                feats, tr, rows[k], ytr, ys[k], kinds, kind, l2, seed, device, control
            )
        fold_acc.append(acc)
        l2s.append(used)
        control.report(k + 1, float(np.mean(fold_acc)))
    return fold_acc, l2s, chunk_cols


def _ridge_kernel_fold(
    feats: torch.Tensor,
    tr: np.ndarray,
    te: np.ndarray,
    ytr: np.ndarray,
    yte: np.ndarray,
    kinds: tuple[str, ...],
    l2: float | None,
    seed: int,
    device: torch.device,
    control: _Control,
) -> tuple[float, float, int]:
    """One fold of ``select_and_fit(X_train, y_train, "ridge", l2, seed)`` + ``accuracy``
    without the comparison matrices: the same labels -> classes mapping, the same inner
    split, the same l2 grid and tie rule, the same dual solution, from kernels built in
    column chunks (:func:`workers.pair_kernels.fold_kernels`). Returns ``(accuracy, l2,
    columns per chunk)``. Raises ``ValueError`` (fewer than 2 labels), out of memory as
    ``InfeasibleArchitecture``; ``control.tick()`` runs before every chunk and
    ``control.check()`` between the solve's steps."""
    y_all = torch.from_numpy(ytr).to(device)
    classes, y = torch.unique(y_all, sorted=True, return_inverse=True)
    n_classes = int(classes.numel())
    if n_classes < 2:
        raise ValueError(f"need at least 2 distinct labels to fit a readout, got {n_classes}")
    inner: tuple[torch.Tensor, torch.Tensor] | None = None
    if l2 is None:
        y_np = y.cpu().numpy()
        fit_idx, held_idx = ro.stratified_inner_split(y_np, ro.INNER_FRACTION, seed)
        if held_idx.size == 0 or len(np.unique(y_np[fit_idx])) < 2:
            l2 = 1.0  # select_and_fit's neutral default when no row can be held out
        else:
            inner = (torch.from_numpy(fit_idx).to(device), torch.from_numpy(held_idx).to(device))
    both = np.concatenate([tr, te])
    left = torch.from_numpy(both[:, 0]).to(device)
    right = torch.from_numpy(both[:, 1]).to(device)
    d = int(feats.shape[1]) * len(kinds)
    cols = pk.chunk_columns(len(both), d, pk.CHUNK_BYTES)
    what = f"building the ridge kernels of {len(both)} pairs x {d} comparison features"
    with _oom_is_infeasible(device, what):
        kern = pk.fold_kernels(
            feats, left, right, len(tr), kinds, inner=inner, chunk_cols=cols, tick=control.tick
        )
    with _oom_is_infeasible(device, f"solving the ridge readout on {len(tr)} pairs"):
        if inner is not None:
            assert kern.fit is not None and kern.held_fit is not None
            scores = ro.ridge_kernel_grid_scores(
                kern.fit, kern.held_fit, y[inner[0]], y[inner[1]], n_classes, ro.RIDGE_GRID,
                control.check,
            )  # fmt: skip
            kern.fit = kern.held_fit = None  # freed before the refit's factorisation
            l2 = ro.best_l2(list(zip(ro.RIDGE_GRID, scores, strict=True)))
        control.check()
        assert l2 is not None
        decision = ro.ridge_kernel_decision(
            kern.train, kern.test_train, y, n_classes, float(l2), control.check
        )
        del kern
        pred = classes[decision.argmax(dim=1)]
        acc = float((pred == torch.from_numpy(yte).to(device)).double().mean().item())
    return acc, float(l2), cols


def _comparison_matrix(
    feats: torch.Tensor, rows: np.ndarray, kinds: tuple[str, ...]
) -> torch.Tensor:
    """``pair_features`` of ``rows`` ``(n, 2)`` written into one preallocated ``(n, d)``
    tensor, a block of rows at a time (temporaries of ~:data:`pair_kernels.CHUNK_BYTES`)."""
    d = int(feats.shape[1]) * len(kinds)
    out = torch.empty((len(rows), d), dtype=feats.dtype, device=feats.device)
    step = max(1, pk.CHUNK_BYTES // (4 * d))
    for i in range(0, len(rows), step):
        r = torch.from_numpy(rows[i : i + step]).to(feats.device)
        out[i : i + len(r)] = pair_features(feats[r[:, 0]], feats[r[:, 1]], kinds)
    return out


def _materialised_fold(
    feats: torch.Tensor,
    tr: np.ndarray,
    te: np.ndarray,
    ytr: np.ndarray,
    yte: np.ndarray,
    kinds: tuple[str, ...],
    kind: str,
    l2: float | None,
    seed: int,
    device: torch.device,
    control: _Control,
) -> tuple[float, float]:
    """One fold with the comparison matrices: the training folds written once into one
    tensor (no per-fold list, no concatenation), ``select_and_fit`` on it, accuracy on the
    test fold, everything freed before the next fold. Used for logistic / svm (L-BFGS in
    the primal needs the rows) and for ridge with no more columns than training pairs.
    Peak (``n`` training pairs, ``m`` test pairs, ``d`` columns, float32): the training
    matrix, the test matrix, and inside ``select_and_fit`` the inner split's raw and
    standardised copies (~2 more training matrices) or the refit's standardised copy:
    about ``4 d (3 n + m)`` bytes (7 GB with FG11's 102,400 columns at LFW's size, more
    with the allocator's slack: :func:`pairs_peak_bytes` counts ``4 d (4 n + m)``)."""
    with _oom_is_infeasible(device, "building the pair features"):
        Xtr = _comparison_matrix(feats, tr, kinds)
        Xte = _comparison_matrix(feats, te, kinds)
    clf = _fit_readout(Xtr, torch.from_numpy(ytr).to(device), kind, l2, seed, device, control.check)
    del Xtr
    with _oom_is_infeasible(device, "scoring the readout"):
        acc = clf.accuracy(Xte, torch.from_numpy(yte).to(device))
    return acc, clf.l2


# -- memory estimate --------------------------------------------------------------------
def pairs_peak_bytes(
    n_images: int, n_features: int, fold_sizes: Sequence[int], kind: str, final: bool
) -> int:
    """Upper estimate of the readout stage's peak memory (bytes, on the evaluation device)
    of the ``pairs`` protocol, beyond the dataset itself.

    ``n_images``: distinct images the pairs reference (the rows of the feature matrix);
    ``n_features``: features per image; ``fold_sizes``: the pair count of every View 2 fold
    (``final=True``) or ``(len(dev_train), len(dev_test))`` (View 1); ``kind``: the readout.
    Counts the float32 feature matrix plus the largest fold's readout working set: for the
    ridge kernel path (:func:`workers.pair_kernels.kernel_bytes`) the float64 kernels, one
    chunk of comparison features and the ``eigh`` / Cholesky workspace; for the
    materialised path (logistic, svm, View 1, ridge with few columns) the comparison
    matrices and ``select_and_fit``'s copies and Gram matrices. Not counted: the images
    (``ds.x``), the interpreter and torch themselves, and feature extraction's batch
    working set (bounded separately by :func:`workers.stages.default_batch_size`). The
    estimate is meant for refusing a candidate before it starts (the worker's
    ``--max-memory``); tests/workers/test_pairs_memory.py checks it against a measured peak.
    """
    if kind not in ro.KINDS:
        raise ValueError(f"unknown readout kind {kind!r}; known: {ro.KINDS}")
    q = len(PAIR_FEATURES_FINAL if final else PAIR_FEATURES_SEARCH)
    d = int(n_features) * q
    feats = 4 * int(n_images) * int(n_features)
    sizes = [int(s) for s in fold_sizes]
    if not final:
        if len(sizes) != 2:
            raise ValueError("View 1 takes fold_sizes = (dev_train pairs, dev_test pairs)")
        return feats + _materialised_bytes(sizes[0], sizes[1], d)
    N = sum(sizes)
    peak = 0
    for m in set(sizes):
        n = N - m
        if kind == "ridge" and d > n:
            # The stratified inner split holds out round(0.2 count) per class: between
            # 0.2 n - 1 and 0.2 n + 1 rows for two classes.
            nh = min(n, int(ro.INNER_FRACTION * n) + 2)
            nf = n - max(0, int(ro.INNER_FRACTION * n) - 1)
            cols = pk.chunk_columns(N, d, pk.CHUNK_BYTES)
            peak = max(peak, pk.kernel_bytes(n, m, nf, nh, cols))
        else:
            peak = max(peak, _materialised_bytes(n, m, d))
    return feats + peak


def _materialised_bytes(n: int, m: int, d: int) -> int:
    """Upper estimate for one ``select_and_fit`` + accuracy on materialised matrices: the
    training and test matrices, up to 3 more training-sized copies (the inner split's raw
    and standardised copies, or ``pair_features``' temporaries), the Gram matrix of side
    ``min(n, d)`` in float32 and float64 with its ``eigh`` workspace, L-BFGS's state."""
    g = min(n, d)
    return 4 * d * (4 * n + m) + 8 * 5 * g * g + 4 * d * 2 * 2 * 20
