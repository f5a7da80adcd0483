"""Turning rows into response models (shared by the routers)."""

from __future__ import annotations

from protocol.wire import StudyOut, TrialOut
from search_space import Architecture

from .models import Study, Trial
from .studies import StudyStats


def trial_out(trial: Trial) -> TrialOut:
    out = TrialOut.model_validate(trial)
    if trial.arch is not None:
        try:
            out.arch_summary = Architecture.from_dict(trial.arch).summary()
        except ValueError:
            out.arch_summary = None
    return out


def study_out(study: Study, stats: StudyStats) -> StudyOut:
    return StudyOut(
        id=study.id,
        name=study.name,
        state=study.state,
        space_name=study.space_name,
        space=study.space,
        dataset=study.dataset,
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
        search_done=stats.search_done,
        finals=stats.finals,
        finals_done=stats.finals_done,
    )
