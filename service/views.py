"""Turning rows into response models (shared by the routers)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from protocol.wire import ClaimOut, Lease, StudyBrief, StudyOut, TrialOut
from search_space import Architecture

from .models import Study, Trial
from .studies import StudyStats
from .trial_store import StudyFacts, TrialRow


def arch_summary(arch: dict[str, Any] | None) -> str | None:
    """The one-line architecture summary shown everywhere (API, dashboard), or ``None``
    for a missing or unreadable architecture."""
    if arch is None:
        return None
    try:
        # Keyed by content: parsing an architecture costs several times its JSON text,
        # and a batch of claims or a study page shows the same few over and over.
        return _summary(json.dumps(arch, sort_keys=True))
    except (ValueError, TypeError):
        return None


@lru_cache(maxsize=4096)
def _summary(arch_json: str) -> str | None:
    try:
        return Architecture.from_dict(json.loads(arch_json)).summary()
    except (ValueError, KeyError, TypeError):
        return None


def trial_out(trial: Trial | TrialRow) -> TrialOut:
    """The API body of a trial: an ORM row (reads) or a store's :class:`TrialRow`."""
    out = TrialOut.model_validate(trial)
    out.arch_summary = arch_summary(trial.arch)
    return out


def study_brief(facts: StudyFacts) -> StudyBrief:
    """What a worker needs of the study of a claimed trial."""
    return StudyBrief(
        id=facts.id,
        name=facts.name,
        dataset=facts.dataset,
        dataset_fingerprint=facts.dataset_fingerprint,
        evaluator=facts.evaluator,
        evaluator_options=facts.evaluator_options,  # type: ignore[arg-type]  # validated here
        seed=facts.seed,
        schedule=facts.schedule,  # type: ignore[arg-type]  # validated at creation
    )


def claim_outs(
    trials: list[TrialRow], studies: dict[int, StudyFacts], lease_seconds: float
) -> list[ClaimOut]:
    """Claimed trials as :class:`ClaimOut` bodies; each study's brief is built once."""
    briefs = {sid: study_brief(facts) for sid, facts in studies.items()}
    return [
        ClaimOut(
            trial=trial_out(t),
            study=briefs[t.study_id],
            lease=Lease(expires_at=t.lease_expires_at, seconds=lease_seconds),  # type: ignore[arg-type]
        )
        for t in trials
    ]


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
        schedule=study.schedule,
        blend_k=study.blend_k,
        blend_weights=study.blend_weights,
        search_done=stats.search_done,
        finals=stats.finals,
        finals_done=stats.finals_done,
    )
