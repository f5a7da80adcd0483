"""Export a finished trial as a model file (``archsearch study export-model``).

``screen`` and ``pairs`` studies are exported: their model is the architecture's random
filters (reproduced from ``arch.seed``) plus a linear readout, and a worker keeps neither,
so the export *re-fits the readout as the trial's evaluation did*.

**screen**: as the final (test split) evaluation (:func:`workers.screen._screen` with
``final=True``):

* the data are loaded with the study's options, as the daemon does
  (``WorkerDaemon._data_args``: ``color``, ``seed`` = the study seed, ``max_per_class``),
  and must have the study's dataset fingerprint;
* the features of the non-test images and of the test images are extracted in one pass
  (non-test first), the readout (``evaluator_options.readout`` or the architecture's,
  ``l2`` from the architecture or chosen on the same seeded inner split) is fitted on the
  non-test rows and scored on the test rows.

The re-fit's test accuracy is stored as ``meta["export_test_value"]`` next to the trial's
``test_value``: equal in the tests (mnist5k, the CIFAR subset), but not guaranteed to the
last bit: the worker's batch sizes followed its timing, and CPU float32 features differ
across batch sizes by float32 rounding (oneDNN's summation order, about 1e-7), as they do
between a GPU worker and a CPU; a borderline image may then flip, rarely.

**pairs**: a pairs trial's final score is the mean over View 2's folds, each scored by a
readout fitted on the other folds: ten readouts, none of which is *the* model. The export
is the View 1 model instead, the one the search scored (:func:`fit_pairs`, as
:func:`workers.pairs._pairs` with ``final=False``): ``sqrtabsdiff`` comparison features,
the readout fitted on ``pairsDevTrain``; its accuracy on ``pairsDevTest``
(``meta["export_view1_value"]``) is the trial's ``value``, to the pair, under the same
caveat. ``predict --pairs`` then calls pairs same or different.

``train`` studies are refused (their learned weights are not kept, and re-training is
not deterministic across devices), and so are plugin studies (their model is the plugin's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol.options import EvaluatorOptions, ScheduleOptions
from protocol.states import TrialState
from protocol.wire import StudyOut, TrialOut
from search_space.arch import Architecture, InfeasibleArchitecture
from search_space.model import build_model

from .model_file import PAIR_CLASSES, ExportedModel
from .pairs import PAIR_FEATURES_SEARCH, pair_features, pair_sets
from .screen import fit_and_score
from .stages import (
    _fit_readout,
    _labels,
    _splits,
    check_finite,
    default_batch_size,
    extract_features,
)

EXPORTABLE = ("screen", "pairs")
# Test images the ONNX graph is checked on against torch before it is written.
ONNX_CHECK_IMAGES = 256

__all__ = [
    "EXPORTABLE",
    "ExportError",
    "check_exportable",
    "choose_trial",
    "export_trial",
    "export_trial_onnx",
    "fit_pairs",
    "fit_screen",
]


class ExportError(ValueError):
    """The trial cannot be exported (protocol, state, data); the message says why."""


def check_exportable(study: StudyOut) -> None:
    """Raises :class:`ExportError` unless ``study``'s protocol can be exported."""
    if study.evaluator not in EXPORTABLE:
        raise ExportError(
            f"study {study.id} uses the {study.evaluator!r} protocol; export supports "
            f"{', '.join(EXPORTABLE)} (a train model's learned weights are not kept by the "
            "workers; a plugin's model is its own)"
        )


def choose_trial(trials: list[TrialOut], number: int | None) -> TrialOut:
    """The trial to export: number ``number``, or else the searched (non-final) trial with
    the best ``test_value`` (ties: the lower number), or without any test score yet the
    best ``value``. Raises :class:`ExportError` when there is no such COMPLETE trial."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.arch is not None]
    if number is not None:
        for t in trials:
            if t.number == number:
                if t not in done:
                    raise ExportError(
                        f"trial {number} is {t.state.value}, not complete with an architecture"
                    )
                return t
        raise ExportError(f"the study has no trial number {number}")
    searched = [t for t in done if not t.is_final]
    scored = [t for t in searched if t.test_value is not None]
    if scored:
        return max(scored, key=lambda t: (t.test_value, -t.number))
    valued = [t for t in searched if t.value is not None]
    if not valued:
        raise ExportError("the study has no complete trial to export yet")
    return max(valued, key=lambda t: (t.value, -t.number))


def _features(
    arch: Architecture,
    ds: Any,
    index: np.ndarray,
    device: torch.device,
    max_features: int,
    batch_size: int | None,
    check: Callable[[], None] | None,
) -> tuple[Any, torch.Tensor]:
    """``(model, features of the images index)`` as the evaluation extracts them;
    :class:`ExportError` when they are not finite."""
    model = build_model(arch, device=device, max_features=max_features)
    bs = int(batch_size) if batch_size else default_batch_size(model.report, device)
    feats, _, _ = extract_features(model, ds.x, index, device=device, batch_size=bs, check=check)
    try:
        check_finite(feats, device)
    except InfeasibleArchitecture:
        raise ExportError(
            "the features are not finite: this architecture cannot be exported"
        ) from None
    return model, feats


def fit_screen(
    arch: Architecture,
    ds: Any,
    *,
    kind: str,
    seed: int,
    device: torch.device,
    max_features: int,
    batch_size: int | None = None,
    check: Callable[[], None] | None = None,
    train_per_class: int | None = None,
) -> tuple[Any, Any, float]:
    """``(model, readout, test accuracy)``: the final screen evaluation's model and
    readout, fitted as :func:`workers.screen._screen` does with ``final=True``
    (``train_per_class``: a scheduled study's final caps the fit rows per class, see
    :func:`final_train_per_class`)."""
    # The fraction is unused (final).
    fit_idx, score_idx, _ = _splits(ds, True, 0.2, seed, train_per_class)
    index = np.concatenate([fit_idx, score_idx])
    model, feats = _features(arch, ds, index, device, max_features, batch_size, check)
    y = _labels(ds, index, device)
    nf = len(fit_idx)
    clf, acc, _, _ = fit_and_score(feats, y, nf, kind, arch.readout.l2, seed, device, check)
    return model, clf, acc


def fit_pairs(
    arch: Architecture,
    ds: Any,
    *,
    kind: str,
    seed: int,
    device: torch.device,
    max_features: int,
    batch_size: int | None = None,
    check: Callable[[], None] | None = None,
) -> tuple[Any, Any, float, int]:
    """``(model, readout, View 1 accuracy, pairs scored)``: the search evaluation of the
    pairs protocol (:func:`workers.pairs._pairs` with ``final=False``) with its readout
    kept. Raises ``ValueError`` for data without View 1 pairs."""
    sets = pair_sets(ds, final=False)
    images = np.unique(np.concatenate([p.ravel() for p in sets]))
    model, feats = _features(arch, ds, images, device, max_features, batch_size, check)

    def comparison(p: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(np.searchsorted(images, p)).to(device)
        return pair_features(feats[rows[:, 0]], feats[rows[:, 1]], PAIR_FEATURES_SEARCH)

    def labels(same: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(same, dtype=bool).astype(np.int64)).to(device)

    pairs = ds.pairs
    Xtr, Xte = comparison(sets[0]), comparison(sets[1])
    clf = _fit_readout(
        Xtr, labels(pairs.dev_train_same), kind, arch.readout.l2, seed, device, check
    )
    return model, clf, clf.accuracy(Xte, labels(pairs.dev_test_same)), len(sets[1])


def export_trial(
    study: StudyOut,
    trial: TrialOut,
    *,
    device: str | torch.device = "cpu",
    load_data: Callable[..., Any] | None = None,
) -> ExportedModel:
    """The :class:`~workers.model_file.ExportedModel` of ``trial`` of ``study``.

    ``load_data`` takes the arguments of :func:`workers.datasets.load_dataset` (default:
    that function). Raises :class:`ExportError` for a protocol other than ``screen``, a
    trial without an architecture, or local data whose fingerprint is not the study's;
    :class:`workers.datasets.DatasetError` when the data cannot be loaded here.
    """
    return _export(study, trial, device=device, load_data=load_data)[0]


def export_trial_onnx(
    study: StudyOut,
    trial: TrialOut,
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    load_data: Callable[..., Any] | None = None,
) -> tuple[ExportedModel, float]:
    """Export ``trial`` as :func:`export_trial` does, then write it as ONNX to ``path``
    (:func:`workers.onnx_export.save_onnx`), checked against torch on up to
    :data:`ONNX_CHECK_IMAGES` of the study's test images. Returns the model and the
    largest relative score difference. Raises what :func:`export_trial` raises,
    :class:`~workers.onnx_export.OnnxExportError` (nothing written) and ``ImportError``
    without the ``onnx`` extra."""
    from .onnx_export import OnnxExportError, save_onnx

    if study.evaluator != "screen":  # before the re-fit, not after it
        raise OnnxExportError(
            f"ONNX export supports screen models only; study {study.id} is {study.evaluator!r}"
        )
    exported, ds = _export(study, trial, device=device, load_data=load_data)
    sample = ds.x[np.flatnonzero(ds.is_test)[:ONNX_CHECK_IMAGES]]
    return exported, save_onnx(exported, path, check_images=sample)


def _export(
    study: StudyOut,
    trial: TrialOut,
    *,
    device: str | torch.device,
    load_data: Callable[..., Any] | None,
) -> tuple[ExportedModel, Any]:
    """The exported model and the dataset it was fitted on (see :func:`export_trial`)."""
    check_exportable(study)
    if trial.arch is None:
        raise ExportError(f"trial {trial.number} carries no architecture")
    if load_data is None:
        from .datasets import load_dataset as load_data
    options = EvaluatorOptions.for_study(study.evaluator_options, study.dataset)
    arch = Architecture.from_dict(trial.arch)
    color = options.color or "gray"
    ds = load_data(study.dataset, color=color, seed=study.seed, max_per_class=options.max_per_class)
    if study.dataset_fingerprint and study.dataset_fingerprint != ds.fingerprint:
        raise ExportError(
            f"the local copy of {study.dataset} has fingerprint {ds.fingerprint[:12]}, the "
            f"study's is {study.dataset_fingerprint[:12]}: export needs the study's data"
        )
    kind = options.readout or arch.readout.kind
    fit = fit_pairs if study.evaluator == "pairs" else fit_screen
    cap = final_train_per_class(study)
    model, clf, acc, *scored = fit(
        arch,
        ds,
        kind=kind,
        seed=study.seed,
        device=torch.device(device),
        max_features=options.max_features,
        **({} if cap is None else {"train_per_class": cap}),
    )
    meta: dict[str, Any] = {
        "study_id": study.id,
        "study_name": study.name,
        "trial_number": trial.number,
        "trial_id": trial.id,
        "value": trial.value,
        "test_value": trial.test_value,
        "dataset": study.dataset,
        "dataset_fingerprint": ds.fingerprint,
        "study_seed": study.seed,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exported_on": str(device),
    }
    size = (int(ds.x.shape[2]), int(ds.x.shape[3]))
    if study.evaluator == "pairs":
        meta.update(export_view1_value=_finite_or_none(acc), n_view1_test=scored[0])
        names, extra = PAIR_CLASSES, ("pairs", PAIR_FEATURES_SEARCH)
    else:
        n_test = int(np.count_nonzero(ds.is_test))
        meta.update(export_test_value=_finite_or_none(acc), n_test=n_test)
        names, extra = tuple(ds.classes), ("screen", ())
    return ExportedModel(arch, model.eval(), clf, names, size, color, meta, *extra), ds


def final_train_per_class(study: StudyOut) -> int | None:
    """The fit rows' per-class cap of the study's final evaluations: a schedule over
    ``train_per_class`` runs them at its ``max`` (``workers.daemon._rung_budget``), so
    the export re-fits on the same rows; ``None`` otherwise."""
    if not study.schedule or study.schedule.get("resource") != "train_per_class":
        return None
    return ScheduleOptions.model_validate(study.schedule).resource_of(0, final=True)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
