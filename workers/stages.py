"""The stages the protocols share: batch sizes, feature extraction, splits, the readout fit.

Holds (docs/design.md section 4; the contract is in :mod:`workers.evaluators`):

* :func:`default_batch_size`: a batch size whose working set fits the device;
* :func:`extract_features`: batched feature extraction on the device, halving the batch
  size on out of memory down to 1 (then ``InfeasibleArchitecture``), with ``tick()``
  before every batch and ``check()`` between the model's modules; batches are sized to
  take about :data:`BATCH_SECONDS` (the first from a FLOP budget), so a check comes at
  most about one module of one such batch late; ``_extract_timed`` wraps it for a
  protocol (heartbeat through ``_Control``, a finiteness check, throughput metrics);
* ``_splits``: the search train / validation split or the non-test / test split;
  ``_labels``: the labels of some rows as a device tensor;
* ``_fit_readout``: :func:`workers.readout.select_and_fit` with out of memory turned into
  ``InfeasibleArchitecture``.

Used by :mod:`workers.screen`, :mod:`workers.train` and :mod:`workers.pairs`, and by
``bench/evaluator.py`` (through the re-export in :mod:`workers.evaluators`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from search_space.arch import Architecture, InfeasibleArchitecture, ShapeReport
from search_space.model import FeatureExtractor, preprocess

from . import readout as ro
from .evaluation_control import (
    _checkpoints,
    _Control,
    _halved_on_oom,
    _oom_is_infeasible,
    _sync,
)
from .memory import extraction_bytes

if TYPE_CHECKING:
    from .datasets import Dataset
    from .feature_cache import FeatureCache, FeatureKey

__all__ = ["BATCH_SECONDS", "default_batch_size", "extract_features"]

# Feature extraction sizes its batches to take about this long (never above the memory-
# driven batch size), so the checks between batches stay frequent whatever the batch size
# asked for. The first batch, before any timing, gets at most FIRST_BATCH_FLOPS: ~0.2-0.4
# s on a 2-core CPU (~50-100 GFLOP/s measured), a few ms on a GPU. Per-image results do
# not depend on the batch size on the CPU (measured bitwise on the FG11 preset; each
# image's maps are computed independently); on CUDA the batch size already depended on
# free memory.
BATCH_SECONDS = 1.0
FIRST_BATCH_FLOPS = {"cpu": 2e10, "cuda": 2e12}


# -- batching --------------------------------------------------------------------------
# The features are checked for NaN / inf this many bytes of rows at a time.
FINITE_CHECK_BYTES = 16 << 20


def default_batch_size(report: ShapeReport, device: torch.device | str) -> int:
    """A batch size whose working set fits: on a GPU ~6 float32 copies of the largest map
    per image within 30% of the free memory (cap 512); on a CPU, where inference runs in
    chunks of a few maps (:func:`workers.memory.extraction_bytes`: the batch's input and
    features plus one chunk's maps), within 512 MiB (cap 64)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_image = max(1, 6 * report.activation_bytes)
        return int(max(1, min(512, int(0.3 * free) // per_image)))
    budget, cap = 512 << 20, 64
    fixed = extraction_bytes(report, 0, device)
    per_image = max(1, extraction_bytes(report, 1, device) - fixed)
    return int(max(1, min(cap, (budget - fixed) // per_image)))


def extract_features(
    model: FeatureExtractor,
    images: np.ndarray,
    index: np.ndarray,
    *,
    device: torch.device | str,
    batch_size: int,
    tick: Callable[[], None] | None = None,
    check: Callable[[], None] | None = None,
    batch_seconds: float | None = BATCH_SECONDS,
) -> tuple[torch.Tensor, int, int]:
    """Features of ``images[index]`` as ``(len(index), n_features)`` float32 on ``device``.

    ``images``: ``(N, C, H, W)`` uint8 (or any dtype :func:`preprocess` takes), kept where
    it is; each batch is copied to the device, preprocessed and run under
    ``torch.inference_mode``. ``tick()`` is called before every batch, ``check()`` before
    every leaf module of the model (inside a batch). ``batch_size`` is the largest batch;
    with ``batch_seconds`` set, the first batch is capped by :data:`FIRST_BATCH_FLOPS` and
    each next one sized from the measured time per image to take about ``batch_seconds``
    (``None``: always ``batch_size``). On out of memory the batch size is halved and the
    same batch retried; at batch size 1 it raises ``InfeasibleArchitecture``. Returns
    ``(features, batch size used at the end, number of halvings)``.
    """
    device = torch.device(device)
    arch = model.arch
    n = len(index)
    with _oom_is_infeasible(device, f"holding the {n} x {model.n_features} feature matrix"):
        out = torch.empty((n, model.n_features), dtype=torch.float32, device=device)
    cap, halvings, i = max(1, int(batch_size)), 0, 0
    bs = cap
    if batch_seconds is not None:
        budget = FIRST_BATCH_FLOPS.get(device.type, FIRST_BATCH_FLOPS["cuda"])
        bs = max(1, min(cap, int(budget // max(1, model.report.flops))))
    model.eval()
    with _checkpoints(model, check):
        while i < n:
            if tick is not None:
                tick()
            j = min(n, i + bs)
            t0 = time.perf_counter()
            try:
                xb = torch.from_numpy(np.ascontiguousarray(images[index[i:j]])).to(device)
                with torch.inference_mode():
                    fb = model(preprocess(xb, arch))
                out[i:j] = fb
                del xb, fb
                if batch_seconds is not None:
                    _sync(device)
            except Exception as exc:
                bs, halvings = _halved_on_oom(exc, device, bs, "feature extraction"), halvings + 1
                cap = bs
                continue
            if batch_seconds is not None:
                per_image = (time.perf_counter() - t0) / (j - i)
                want = int(batch_seconds / per_image) if per_image > 0 else cap
                bs = max(1, min(cap, 4 * bs, want))
            i = j
    return out, bs, halvings


def check_finite(feats: torch.Tensor, device: torch.device) -> None:
    """Raise ``InfeasibleArchitecture`` when a feature is NaN or inf. Checked in row
    chunks of :data:`FINITE_CHECK_BYTES`: ``isfinite`` over a whole matrix allocated ~1.75x
    the matrix (measured), which set the peak of an LFW-size pairs final."""
    with _oom_is_infeasible(device, "checking the features"):
        rows = max(1, FINITE_CHECK_BYTES // max(1, 4 * feats.shape[1]))
        finite = all(
            bool(torch.isfinite(feats[i : i + rows]).all()) for i in range(0, len(feats), rows)
        )
    if not finite:
        raise InfeasibleArchitecture(
            "the features are not finite (NaN or inf): the architecture is numerically "
            "unusable on these data"
        )


def _extract_timed(
    model: FeatureExtractor,
    ds: Dataset,
    index: np.ndarray,
    device: torch.device,
    batch_size: int,
    control: _Control,
    cache: tuple[FeatureCache, FeatureKey] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Features of ``ds.x[index]`` with throughput metrics. With ``cache`` only the rows
    it does not hold are extracted (then checked and stored); ``cached_images`` counts the
    others, and the per-image rates are over the extracted images."""
    t0 = time.perf_counter()
    held, merged = np.zeros(len(index), dtype=bool), None
    if cache is not None:
        held, rows = cache[0].lookup(cache[1], index)
        if held.any():
            # Filled before extracting, so that the peak is this matrix plus the new rows.
            with _oom_is_infeasible(device, f"holding the {len(index)} x {rows.shape[1]} features"):
                merged = torch.empty((len(index), rows.shape[1]), device=device)
                merged[torch.from_numpy(np.flatnonzero(held)).to(device)] = rows.to(device)
            del rows
    todo = index[~held]
    feats, bs, halvings = extract_features(
        model,
        ds.x,
        todo,
        device=device,
        batch_size=batch_size,
        tick=control.tick,
        check=control.check,
    )
    _sync(device)
    check_finite(feats, device)
    if cache is not None:
        cache[0].store(cache[1], todo, feats)
    if merged is not None:
        merged[torch.from_numpy(np.flatnonzero(~held)).to(device)] = feats
        feats = merged
    seconds = time.perf_counter() - t0
    n = len(todo)
    flops = model.report.flops
    return feats, {
        "n_images": len(index),
        "cached_images": int(held.sum()),
        "batch_size": bs,
        "oom_halvings": halvings,
        "extract_seconds": seconds,
        "images_per_s": n / seconds if n and seconds > 0 else None,
        # The model's measured cost (the feature pass), next to its GFLOPs.
        "seconds_per_image": seconds / n if n else None,
        "flops_per_image": flops,
        "gflops_per_s": flops * n / seconds / 1e9 if n and seconds > 0 else None,
    }


# -- request checks, splits, labels, readout --------------------------------------------
def _check_data(arch: Architecture, ds: Dataset) -> None:
    """``ValueError`` for images that are not ``(N, C, H, W)`` or whose channels are not
    the architecture's (``evaluate``, ``screen_group`` and ``blend`` check first)."""
    if ds.x.ndim != 4:
        raise ValueError(f"dataset images must be (N, C, H, W), got {ds.x.shape}")
    if ds.x.shape[1] != arch.input_channels:
        raise ValueError(
            f"the architecture expects {arch.input_channels} input channel(s) but "
            f"{ds.uri} was loaded with {ds.x.shape[1]}: load it with the study's color"
        )


def _splits(
    ds: Dataset,
    final: bool,
    validation_fraction: float,
    seed: int,
    train_per_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(fit_idx, score_idx, split name)``: search train/validation, or non-test/test.
    ``train_per_class`` (an ASHA rung's resource) caps the fit rows at that many per
    class (:func:`cap_per_class`); the scored rows never change."""
    if final:
        fit_idx = np.flatnonzero(~np.asarray(ds.is_test, dtype=bool))
        score_idx = np.flatnonzero(np.asarray(ds.is_test, dtype=bool))
        if score_idx.size == 0:
            raise ValueError(f"{ds.uri} has no test images: a final evaluation needs them")
        split = "test"
    else:
        from .datasets import search_split

        train_idx, val_idx = search_split(ds, validation_fraction, seed)
        if len(val_idx) == 0:
            raise ValueError(
                f"the validation split of {ds.uri} is empty "
                f"(validation_fraction={validation_fraction})"
            )
        fit_idx, score_idx, split = np.asarray(train_idx), np.asarray(val_idx), "validation"
    if train_per_class is not None:
        fit_idx = cap_per_class(fit_idx, np.asarray(ds.y), train_per_class, seed)
    return fit_idx, score_idx, split


def cap_per_class(idx: np.ndarray, y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``idx`` per class of ``y[idx]``, sorted: the first ``n`` of a
    seeded permutation of each class. The permutations do not depend on ``n``, so the
    subsets are nested (a rung's images include the rung below's). Raises ``ValueError``
    for ``n < 1``."""
    if n < 1:
        raise ValueError(f"train_per_class must be >= 1, got {n}")
    rng = np.random.default_rng([int(seed), 0xA5A])
    labels = y[idx]
    keep = []
    for c in np.unique(labels):
        members = idx[labels == c]
        keep.append(members[rng.permutation(len(members))[:n]])
    return np.sort(np.concatenate(keep)) if keep else idx[:0]


def _labels(ds: Dataset, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(ds.y)[idx].astype(np.int64)).to(device)


def _fit_readout(
    X: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    l2: float | None,
    seed: int,
    device: torch.device,
    check: Callable[[], None] | None = None,
) -> ro.LinearClassifier:
    """:func:`workers.readout.select_and_fit`, ``check()`` between its steps / iterations."""
    with _oom_is_infeasible(device, f"fitting the {kind} readout on {tuple(X.shape)} features"):
        return ro.select_and_fit(X, y, kind, l2, seed, check=check)
