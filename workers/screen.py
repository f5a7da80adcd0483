"""The ``screen`` protocol (docs/design.md section 4): fixed random filters + a linear readout.

``_screen`` builds the model with random filters (``arch.seed``), extracts the features of
the fit and scored images in one batched pass, fits the readout on the fit rows and scores
the others: the validation split (``final=False``) or the test split (``final=True``).
It reports once, step 0, with the score. Called by :func:`workers.evaluators.evaluate`
after validation and the request checks; the contract is in that module's docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from search_space.arch import Architecture, ShapeReport
from search_space.model import build_model

from . import readout as ro
from .evaluation_control import EvalResult, _Control, _json_safe, _oom_is_infeasible, _sync
from .feature_cache import FeatureCache, FeatureKey
from .stages import _extract_timed, _fit_readout, _labels, _splits

if TYPE_CHECKING:
    from .datasets import Dataset


# -- screen ----------------------------------------------------------------------------
def fit_and_score(
    feats: torch.Tensor,
    y: torch.Tensor,
    n_fit: int,
    kind: str,
    l2: float | None,
    seed: int,
    device: torch.device,
    check: Callable[[], None] | None = None,
) -> tuple[ro.LinearClassifier, float, float, float]:
    """The readout step of a screen evaluation, shared by :func:`_screen`, the group
    screening (:mod:`workers.screen_group`) and the model export (:mod:`workers.export`):
    fit ``kind`` (``l2`` fixed or chosen on the seeded inner split) on the first ``n_fit``
    rows of checked, finite ``feats``; ``(readout, accuracy on the other rows, accuracy on
    the fit rows, seconds)``. Out of memory while scoring is ``InfeasibleArchitecture``."""
    t1 = time.perf_counter()
    clf = _fit_readout(feats[:n_fit], y[:n_fit], kind, l2, seed, device, check)
    with _oom_is_infeasible(device, "scoring the readout"):
        acc = clf.accuracy(feats[n_fit:], y[n_fit:])
        train_acc = clf.accuracy(feats[:n_fit], y[:n_fit])
    _sync(device)
    return clf, acc, train_acc, time.perf_counter() - t1


def _screen(
    arch: Architecture,
    ds: Dataset,
    rep: ShapeReport,
    *,
    final: bool,
    validation_fraction: float,
    seed: int,
    device: torch.device,
    kind: str,
    batch_size: int,
    max_features: int,
    control: _Control,
    train_per_class: int | None = None,
    feature_cache: FeatureCache | None = None,
) -> EvalResult:
    t0 = time.perf_counter()
    fit_idx, score_idx, split = _splits(ds, final, validation_fraction, seed, train_per_class)
    with _oom_is_infeasible(device, "building the model"):
        model = build_model(arch, device=device, max_features=max_features)
    index = np.concatenate([fit_idx, score_idx])
    cache = None
    if feature_cache is not None:
        cache = (feature_cache, FeatureKey.of(arch, ds.fingerprint, max_features, device))
    feats, ext = _extract_timed(model, ds, index, device, batch_size, control, cache)
    control.tick()
    nf = len(fit_idx)
    y = _labels(ds, index, device)
    clf, acc, train_acc, readout_s = fit_and_score(
        feats, y, nf, kind, arch.readout.l2, seed, device, control.check
    )
    control.report(0, acc)
    metrics = {
        "protocol": "screen",
        "split": split,
        "readout": kind,
        "l2": clf.l2,
        "l2_chosen": arch.readout.l2 is None,
        "l2_curve": [[a, b] for a, b in clf.l2_curve],
        "n_features": model.n_features,
        "n_fit": nf,
        "n_scored": len(score_idx),
        "train_per_class": train_per_class,
        "train_accuracy": train_acc,
        **ext,
        "readout_seconds": readout_s,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
    }
    return EvalResult(float(acc), _json_safe(metrics))
