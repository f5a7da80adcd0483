"""Export a finished trial as a model file (``archsearch study export-model``).

Only the ``screen`` protocol is exported: its model is the architecture's random filters
(reproduced from ``arch.seed``) plus a linear readout, and a worker keeps neither, so the
export *re-fits the readout exactly as the trial's final (test split) evaluation did*
(:func:`workers.screen._screen` with ``final=True``):

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
between a GPU worker and a CPU; a borderline image may then flip, rarely. ``train`` studies are
refused (their learned weights are not kept, and re-training is not deterministic across
devices), and so are ``pairs`` studies for now.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from protocol.options import EvaluatorOptions
from protocol.states import TrialState
from protocol.wire import StudyOut, TrialOut
from search_space.arch import Architecture, InfeasibleArchitecture
from search_space.model import build_model

from .model_file import ExportedModel
from .screen import fit_and_score
from .stages import _labels, _splits, check_finite, default_batch_size, extract_features

EXPORTABLE = ("screen",)

__all__ = [
    "EXPORTABLE",
    "ExportError",
    "check_exportable",
    "choose_trial",
    "export_trial",
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
            "workers, pairs models are not exported yet)"
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
) -> tuple[Any, Any, float]:
    """``(model, readout, test accuracy)``: the final screen evaluation's model and
    readout, fitted as :func:`workers.screen._screen` does with ``final=True``."""
    fit_idx, score_idx, _ = _splits(ds, True, 0.2, seed)  # the fraction is unused (final)
    model = build_model(arch, device=device, max_features=max_features)
    index = np.concatenate([fit_idx, score_idx])
    bs = int(batch_size) if batch_size else default_batch_size(model.report, device)
    feats, _, _ = extract_features(model, ds.x, index, device=device, batch_size=bs, check=check)
    try:
        check_finite(feats, device)
    except InfeasibleArchitecture:
        raise ExportError(
            "the features are not finite: this architecture cannot be exported"
        ) from None
    y = _labels(ds, index, device)
    nf = len(fit_idx)
    clf, acc, _, _ = fit_and_score(feats, y, nf, kind, arch.readout.l2, seed, device, check)
    return model, clf, acc


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
    model, clf, acc = fit_screen(
        arch,
        ds,
        kind=kind,
        seed=study.seed,
        device=torch.device(device),
        max_features=options.max_features,
    )
    meta: dict[str, Any] = {
        "study_id": study.id,
        "study_name": study.name,
        "trial_number": trial.number,
        "trial_id": trial.id,
        "value": trial.value,
        "test_value": trial.test_value,
        "export_test_value": acc if math.isfinite(acc) else None,
        "dataset": study.dataset,
        "dataset_fingerprint": ds.fingerprint,
        "study_seed": study.seed,
        "n_test": int(np.count_nonzero(ds.is_test)),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exported_on": str(device),
    }
    size = (int(ds.x.shape[2]), int(ds.x.shape[3]))
    return ExportedModel(arch, model.eval(), clf, tuple(ds.classes), size, color, meta)
