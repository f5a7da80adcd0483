"""The ``pairs`` protocol (docs/design.md section 4): same / different on LFW-style pairs.

``_pairs`` extracts the features of every image the pairs reference (once), builds
comparison features with :func:`pair_features` and fits a linear same/different readout.
View 1 (``final=False``): :data:`PAIR_FEATURES_SEARCH`, fit on ``dev_train``, accuracy on
``dev_test``, one report (step 0). View 2 (``final=True``): :data:`PAIR_FEATURES_FINAL`,
each fold scored by a readout fitted on the other folds, one report per fold (the running
mean); value = the mean, metrics ``folds`` and ``stderr``. Called by
:func:`workers.evaluators.evaluate`; the contract is in that module's docstring.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from search_space.arch import Architecture, ShapeReport
from search_space.model import build_model

from .evaluation_control import EvalResult, _Control, _json_safe, _oom_is_infeasible, _sync
from .stages import _extract_timed, _fit_readout

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = ["PAIR_FEATURES_FINAL", "PAIR_FEATURES_SEARCH", "pair_features"]

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
    pairs = getattr(ds, "pairs", None)
    if pairs is None:
        raise ValueError(f"{ds.uri} has no pairs: the pairs protocol needs an lfw: dataset")
    if final:
        if not pairs.folds:
            raise ValueError(f"{ds.uri} has no View 2 folds (pairs.txt)")
        sets = [np.asarray(p, dtype=np.int64).reshape(-1, 2) for p, _ in pairs.folds]
    else:
        sets = [
            np.asarray(pairs.dev_train, dtype=np.int64).reshape(-1, 2),
            np.asarray(pairs.dev_test, dtype=np.int64).reshape(-1, 2),
        ]
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
        with _oom_is_infeasible(device, "building the pair features"):
            Xs = [comparison(s) for s in sets]
        ys = [labels(same) for _, same in pairs.folds]
        fold_acc: list[float] = []
        l2s: list[float] = []
        for k in range(len(sets)):
            control.tick()
            others = [i for i in range(len(sets)) if i != k]
            with _oom_is_infeasible(device, "stacking the training folds"):
                Xtr = torch.cat([Xs[i] for i in others])
                ytr = torch.cat([ys[i] for i in others])
            clf = _fit_readout(Xtr, ytr, kind, arch.readout.l2, seed, device, control.check)
            del Xtr
            with _oom_is_infeasible(device, "scoring the readout"):
                fold_acc.append(clf.accuracy(Xs[k], ys[k]))
            l2s.append(clf.l2)
            control.report(k + 1, float(np.mean(fold_acc)))
        value = float(np.mean(fold_acc))
        K = len(fold_acc)
        stderr = float(np.std(fold_acc, ddof=1) / math.sqrt(K)) if K > 1 else 0.0
        metrics.update(
            split="view2", folds=fold_acc, stderr=stderr, l2=l2s, n_scored=sum(len(s) for s in sets)
        )
    _sync(device)
    metrics.update(
        ext,
        readout_seconds=time.perf_counter() - t1,
        seconds=time.perf_counter() - t0,
        device=str(device),
    )
    return EvalResult(float(value), _json_safe(metrics))
