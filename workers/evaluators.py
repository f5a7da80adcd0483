"""The evaluation protocols of docs/design.md section 4: ``screen``, ``train``, ``pairs``, and
``plugin:NAME`` evaluators from installed packages (:mod:`workers.plugins`).

One entry point, :func:`evaluate`, used by the worker daemon::

    evaluate(protocol, arch, ds, *, final=False, ...) -> EvalResult(value, metrics)

Contract:

* ``search_space.arch.validate(arch, max_features=...)`` runs first: an infeasible
  architecture raises :class:`~search_space.arch.InfeasibleArchitecture` before any data
  are touched (the daemon reports INFEASIBLE).
* Everything numeric runs on ``device`` (features, readout, training); only index
  bookkeeping (splits, permutations) is NumPy. Features are float32.
* Out of memory (``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` saying "out of
  memory" / "can't allocate memory") during a batched stage is retried with half the batch
  size, down to 1; then, or in a stage that has no batch (the readout), it becomes
  ``InfeasibleArchitecture("out of memory at batch size B on DEVICE ...")``.
* ``tick()`` (progress heartbeat, no value) is called before every batch of feature
  extraction / every optimiser step, so it must be cheap (the daemon's returns its last
  heartbeat answer). ``report(step, value)`` hands an intermediate value to the daemon:
  screen and View 1 pairs call it once, with the score (step 0); train once per epoch
  (step = epoch, 1-based; validation accuracy, or with ``final=True`` the epoch's training
  accuracy, since the test split is scored once, at the end); View 2 pairs once per fold
  (step = fold number, value = the running mean). Either returning ``"prune"`` raises
  :class:`Pruned` (with the last value), ``"stop"`` raises :class:`Stopped`; ``"continue"``
  or ``None`` go on.
* ``deadline`` is a ``time.monotonic()`` value; past it the evaluation raises
  :class:`~workers.outcomes.TimedOut` at its next check (every batch / step).
* ``final=False`` scores the search split (validation, or View 1 for pairs); ``final=True``
  fits on all non-test images and scores the test split (``ds.is_test``), or View 2 folds.
* Metrics are JSON-safe (str, int, finite float or None, lists and dicts of those).

Layout: this module holds the contract (above), the request checks and :func:`evaluate`,
which dispatches to one protocol; the code lives in

* :mod:`workers.evaluation_control`: :class:`EvalResult`, the deadline / heartbeat /
  prune / stop control, out-of-memory handling (:func:`is_oom`), JSON-safe metrics;
* :mod:`workers.stages`: :func:`default_batch_size`, :func:`extract_features` (batched,
  halving on out of memory), the data splits and the readout fit the protocols share;
* :mod:`workers.screen`, :mod:`workers.train`, :mod:`workers.pairs`: one protocol each;
  :mod:`workers.plugins`: ``plugin:NAME``;
* :mod:`workers.memory`: the estimate behind ``memory_budget`` (``--max-memory``).

Every name those modules held here before the split is re-exported, so imports from
``workers.evaluators`` (the daemon, the tests, bench/) keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from protocol.options import (
    DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE,
    DEFAULT_MAX_GFLOPS_PER_IMAGE,
    PLUGIN_PREFIX,
)
from search_space.arch import (
    Architecture,
    InfeasibleArchitecture,
    ShapeReport,
    TrainSettings,
    validate,
)
from search_space.model import build_model as build_model  # re-export

from . import readout as ro
from .evaluation_control import (
    EvalResult,
    Report,
    Tick,
    _Control,
    is_oom,
)
from .evaluation_control import _first_line as _first_line
from .evaluation_control import _free as _free
from .evaluation_control import _json_safe as _json_safe
from .evaluation_control import _num as _num
from .evaluation_control import _oom_at_one as _oom_at_one
from .evaluation_control import _oom_is_infeasible as _oom_is_infeasible
from .evaluation_control import _sync as _sync
from .memory import MemoryEstimate, MiB, estimate_bytes, extraction_bytes
from .outcomes import Pruned, Stopped, TimedOut
from .pairs import PAIR_FEATURES_FINAL as PAIR_FEATURES_FINAL
from .pairs import PAIR_FEATURES_SEARCH as PAIR_FEATURES_SEARCH
from .pairs import _pairs, pair_sets, pairs_peak_bytes
from .pairs import pair_features as pair_features
from .screen import _screen
from .stages import _check_data as _check_data
from .stages import _extract_timed as _extract_timed
from .stages import _fit_readout as _fit_readout
from .stages import _labels as _labels
from .stages import _splits as _splits
from .stages import default_batch_size, extract_features
from .train import _classify as _classify
from .train import _train

if TYPE_CHECKING:
    from .datasets import Dataset
    from .feature_cache import FeatureCache

__all__ = [
    "EvalResult",
    "Pruned",
    "Report",
    "Stopped",
    "Tick",
    "TimedOut",
    "default_batch_size",
    "evaluate",
    "extract_features",
    "is_oom",
]

Protocol = Literal["screen", "train", "pairs"]
PROTOCOLS: tuple[str, ...] = ("screen", "train", "pairs")


def _readout_kind(arch: Architecture, override: str | None) -> str:
    kind = override or arch.readout.kind
    if kind not in ro.KINDS:
        raise ValueError(f"unknown readout {kind!r}; known: {ro.KINDS}")
    return kind


# -- entry point -----------------------------------------------------------------------
def evaluate(
    protocol: Protocol | str,  # or "plugin:NAME"
    arch: Architecture,
    ds: Dataset,
    *,
    final: bool = False,
    validation_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    readout: str | None = None,
    epochs: int | None = None,
    report: Report | None = None,
    tick: Tick | None = None,
    batch_size: int | None = None,
    max_features: int = 100_000,
    deadline: float | None = None,
    max_gflops_per_image: float = DEFAULT_MAX_GFLOPS_PER_IMAGE,
    max_activation_mb_per_image: float = DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE,
    memory_budget: int | None = None,
    train_per_class: int | None = None,
    plugin_options: dict[str, Any] | None = None,
    feature_cache: FeatureCache | None = None,
) -> EvalResult:
    """Score ``arch`` on ``ds`` with ``protocol`` (see the module docstring for the contract).

    * ``screen``: fixed random filters (``arch.seed``), features of the fit and scored
      images, then a linear readout (``readout`` overrides ``arch.readout.kind``; ``l2``
      from ``arch.readout.l2`` or chosen on an inner split of the fit rows). Value: accuracy
      on the validation split (``final=False``, split by ``search_split(ds,
      validation_fraction, seed)``) or on the test split (``final=True``, fitted on all
      non-test images).
    * ``train``: the same network with learned filters, dropout ``arch.train.dropout`` and a
      linear head, AdamW (``arch.train`` settings, defaults :class:`TrainSettings`), cross
      entropy, ``epochs`` epochs (``None``: ``arch.train.epochs``, else 2), seeded by
      ``seed``. ``batch_size`` here caps the micro-batch (gradients are accumulated up to
      ``arch.train.batch_size``, so memory halvings do not change the optimiser's batch).
    * ``pairs``: features of every image the pairs reference, comparison features, linear
      same/different readout. View 1 (``final=False``): ``sqrtabsdiff``, fit on
      ``dev_train``, accuracy on ``dev_test``. View 2 (``final=True``): the concat of
      ``mult, absdiff, sqdiff, sqrtabsdiff``; each fold scored by a readout fitted on the
      other folds; value = mean, metrics ``folds`` and ``stderr`` (std, ddof=1, / sqrt K).

    * ``plugin:NAME``: the callable an installed package registers under that name in the
      entry-point group ``archsearch.evaluators`` (:mod:`workers.plugins`), after the
      same architecture and data checks; ``PluginMissing`` when this worker lacks it.
      ``plugin_options`` (the study's ``evaluator_options.plugin_options``) reaches it as
      ``options["plugin"]`` (``{}`` when unset).

    ``max_gflops_per_image`` / ``max_activation_mb_per_image`` are the study's cost caps
    (``EvaluatorOptions``); a candidate above them is infeasible before any work.
    ``batch_size`` ``None`` picks :func:`default_batch_size`. ``memory_budget``: the bytes
    of host memory this evaluation may add (the worker's ``--max-memory`` less what it
    holds); the batch is made smaller to fit it, and a candidate whose estimate
    (:mod:`workers.memory`) exceeds it even at batch size 1 is ``InfeasibleArchitecture``
    with the estimate in the reason, before any work. The metric ``memory_estimate_mb`` is
    that estimate (host memory; 0 on a GPU). ``train_per_class`` (screen only: an ASHA
    rung's resource) fits the readout on at most that many images per class of the fit
    split (nested subsets, :func:`workers.stages.cap_per_class`); the scored split is the
    same at every rung. ``feature_cache`` (screen only; :mod:`workers.feature_cache`)
    serves the feature rows of images this architecture already saw on these data and
    keeps the new ones, so a promoted rung extracts only the images it adds (metric
    ``cached_images``); the value does not change. Raises
    ``InfeasibleArchitecture`` (infeasible or out of memory), :class:`Pruned`,
    :class:`Stopped`, :class:`TimedOut`, and ``ValueError`` for a bad request
    (unknown protocol / readout, channel mismatch, no test split, no pairs).
    """
    plugin = protocol.startswith(PLUGIN_PREFIX)
    if protocol not in PROTOCOLS and not plugin:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS} or plugin:NAME")
    rep = validate(
        arch,
        max_features=max_features,
        max_gflops_per_image=max_gflops_per_image,
        max_activation_mb_per_image=max_activation_mb_per_image,
    )
    device = torch.device(device)
    _check_data(arch, ds)
    control = _Control(report, tick, deadline)
    if plugin:
        # A plugin's code decides its own batches and memory (workers.plugins).
        from .plugins import run_plugin

        options = {
            "readout": readout,
            "epochs": epochs,
            "validation_fraction": validation_fraction,
            "max_features": max_features,
            "max_gflops_per_image": max_gflops_per_image,
            "max_activation_mb_per_image": max_activation_mb_per_image,
            "plugin": dict(plugin_options or {}),
        }
        return run_plugin(
            protocol, arch, ds, final=final, validation_fraction=validation_fraction,
            seed=seed, device=device, options=options, control=control,
            max_features=max_features,
        )  # fmt: skip
    if train_per_class is not None and protocol != "screen":
        raise ValueError(f"train_per_class is a screen resource; protocol {protocol!r} has none")
    kind = _readout_kind(arch, readout)
    bs = int(batch_size) if batch_size else default_batch_size(rep, device)
    memory = _memory_model(
        protocol, rep, ds, device, final, validation_fraction, seed, kind, train_per_class
    )
    if protocol == "train":
        # The training micro-batch is what memory limits; the optimiser's batch stays.
        step_batch = max(1, (arch.train or TrainSettings()).batch_size)
        micro = max(1, min(step_batch, int(batch_size) if batch_size else step_batch))
        batch_size, estimate = _fit_memory(memory, micro, memory_budget)
    else:
        bs, estimate = _fit_memory(memory, bs, memory_budget)
    if protocol == "screen":
        result = _screen(
            arch,
            ds,
            rep,
            final=final,
            validation_fraction=validation_fraction,
            seed=seed,
            device=device,
            kind=kind,
            batch_size=bs,
            max_features=max_features,
            control=control,
            train_per_class=train_per_class,
            feature_cache=feature_cache,
        )
    elif protocol == "pairs":
        result = _pairs(
            arch,
            ds,
            rep,
            final=final,
            seed=seed,
            device=device,
            kind=kind,
            batch_size=bs,
            max_features=max_features,
            control=control,
        )
    else:
        if epochs is None:
            epochs = arch.train.epochs if arch.train is not None else 2
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        result = _train(
            arch,
            ds,
            rep,
            final=final,
            validation_fraction=validation_fraction,
            seed=seed,
            device=device,
            epochs=int(epochs),
            batch_size=batch_size,
            eval_batch_size=bs,
            max_features=max_features,
            control=control,
        )
    metrics = {**result.metrics, "memory_estimate_mb": round(estimate.total / MiB, 1)}
    return EvalResult(result.value, metrics)


def _memory_model(
    protocol: str,
    rep: ShapeReport,
    ds: Dataset,
    device: torch.device,
    final: bool,
    validation_fraction: float,
    seed: int,
    kind: str,
    train_per_class: int | None = None,
) -> Callable[[int], MemoryEstimate]:
    """The estimate of :mod:`workers.memory` as a function of the batch size, with this
    request's split sizes (read once: only the extraction stage depends on the batch)."""
    if protocol == "pairs":
        if device.type != "cpu":
            return lambda _: MemoryEstimate()
        sets = pair_sets(ds, final)
        n_images = len(np.unique(np.concatenate([s.ravel() for s in sets])))
        feats = n_images * rep.n_features * 4
        sizes = [len(s) for s in sets]
        readout = pairs_peak_bytes(n_images, rep.n_features, sizes, kind, final) - feats
        return lambda bs: MemoryEstimate(
            held={"features": feats},
            stages={"extraction": extraction_bytes(rep, bs, device), "readout": readout},
        )
    if protocol == "train":
        n_classes = max(2, len(np.unique(np.asarray(ds.y))))
        return lambda bs: estimate_bytes(
            protocol, rep, n_images=0, n_fit=0, batch_size=bs, device=device,
            n_classes=n_classes,
        )  # fmt: skip
    fit_idx, score_idx, _ = _splits(ds, final, validation_fraction, seed, train_per_class)
    n_images, n_fit = len(fit_idx) + len(score_idx), len(fit_idx)
    return lambda bs: estimate_bytes(
        protocol, rep, n_images=n_images, n_fit=n_fit, batch_size=bs, device=device
    )


def _fit_memory(
    estimate: Callable[[int], MemoryEstimate], batch_size: int, budget: int | None
) -> tuple[int, MemoryEstimate]:
    """The largest batch size up to ``batch_size`` whose ``estimate`` fits ``budget``
    bytes (halving), with its estimate; ``budget`` None: ``batch_size`` as it is. Raises
    ``InfeasibleArchitecture`` naming the estimate when batch size 1 does not fit."""
    est = estimate(batch_size)
    if budget is None:
        return batch_size, est
    while est.total > budget and batch_size > 1:
        batch_size = max(1, batch_size // 2)
        est = estimate(batch_size)
    if est.total > budget:
        room = f"{max(0, budget) / MiB:.0f} MiB"
        raise InfeasibleArchitecture(
            f"needs about {est.describe()} of memory at batch size 1, more than the "
            f"{room} this worker's --max-memory leaves for a trial"
        )
    return batch_size, est
