"""Turning rows into response models (shared by the routers)."""

from __future__ import annotations

from typing import Any

from protocol.wire import StudyOut, TrialOut
from search_space import Architecture

from .models import Study, Trial
from .studies import StudyStats


def arch_summary(arch: dict[str, Any] | None) -> str | None:
    """The one-line architecture summary shown everywhere (API, dashboard), or ``None``
    for a missing or unreadable architecture."""
    if arch is None:
        return None
    try:
        return Architecture.from_dict(arch).summary()
    except (ValueError, KeyError, TypeError):
        return None


def trial_out(trial: Trial) -> TrialOut:
    out = TrialOut.model_validate(trial)
    out.arch_summary = arch_summary(trial.arch)
    return out


def study_out(study: Study, stats: StudyStats) -> StudyOut:
    return StudyOut(
        id=study.id,
        name=study.name,
        state=study.state,
        space_name=study.space_name,
        space=study.space,
        dataset=study.dataset,
        dataset_fingerprint=study.dataset_fingerprint,
        evaluator=study.evaluator,
        evaluator_options=study.evaluator_options,
        algorithm=study.algorithm,
        algorithm_options=study.algorithm_options,
        max_trials=study.max_trials,
        max_parallel=study.max_parallel,
        top_k=study.top_k,
        seed=study.seed,
        created_at=study.created_at,
        counts=stats.counts,
        best_value=stats.best_value,
        infeasible_rate=stats.infeasible_rate,
        error=study.error,
        search_done=stats.search_done,
        finals=stats.finals,
        finals_done=stats.finals_done,
    )
