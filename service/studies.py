"""Studies: creation (validated before anything is stored), reads, the dataset fingerprint.

Writes ``studies`` rows on creation and the first dataset fingerprint; every change of a
study's state belongs to :mod:`service.lifecycle`. Raises :class:`InvalidInput` naming the
field for a bad space, dataset URI or algorithm, :class:`NotFound` for an unknown study.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from protocol.options import (
    BLENDABLE_EVALUATORS,
    EVALUATOR_RESOURCES,
    PLUGIN_PREFIX,
    EvaluatorOptions,
)
from protocol.wire import StudyCreate
from search_space import (
    MAX_GRID_POINTS,
    Space,
    SpaceError,
    get_space,
    get_suggester,
    list_spaces,
    parse_space,
)
from search_space.dataset_uri import DatasetURIError, check_dataset_location, parse_dataset_uri

from .errors import InvalidInput, NotFound
from .models import Study, StudyState, Trial, TrialSource, TrialState

# How long study creation may spend looking at a dataset's files on the coordinator.
DATASET_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class StudyStats:
    counts: dict[str, int]  # all trials (search and finals) by state
    best_value: float | None
    search_done: int = 0
    finals: int = 0
    finals_done: int = 0

    @property
    def infeasible_rate(self) -> float | None:
        finished = sum(n for s, n in self.counts.items() if TrialState(s).is_finished())
        return self.counts.get(TrialState.INFEASIBLE, 0) / finished if finished else None


def resolve_space(spec: str | dict[str, Any]) -> tuple[str | None, Space]:
    """``(built-in name or None, Space)`` for a name or a document.

    Raises :class:`InvalidInput` with ``field="space"`` or ``"space.<path>"``.
    """
    if isinstance(spec, str):
        try:
            return spec, get_space(spec)
        except KeyError:
            known = [s.name for s in list_spaces()]
            raise InvalidInput(
                f"unknown space {spec!r}; built-in spaces: {known}", field="space"
            ) from None
    try:
        space = parse_space(spec)
    except SpaceError as exc:
        raise InvalidInput(
            f"space.{exc.path}: {exc.message}" if exc.path else exc.message,
            field=f"space.{exc.path}" if exc.path else "space",
        ) from None
    return None, space


def space_from_document(doc: dict[str, Any]) -> Space:
    """The compiled space of a stored document (cached: compiling is not free)."""
    return _space_from_json(json.dumps(doc, sort_keys=True))


@lru_cache(maxsize=256)
def _space_from_json(doc_json: str) -> Space:
    return parse_space(json.loads(doc_json))


def study_space(study: Study) -> Space:
    return space_from_document(study.space)


def evaluator_options(study: Study) -> EvaluatorOptions:
    """The study's evaluator options with defaults filled and ``color`` resolved: what
    the coordinator uses itself and sends to workers (the one place the color default is
    decided)."""
    return EvaluatorOptions.for_study(study.evaluator_options, study.dataset)


@dataclass(frozen=True)
class CheckedStudy:
    """A study request that passed every check: what :func:`create_study` stores."""

    body: StudyCreate
    space_name: str | None
    space: Space


def check_study(body: StudyCreate) -> CheckedStudy:
    """Every check of a new study, the file system's included. Call it OUTSIDE any write
    transaction: a dataset check walks a directory tree (within a time budget), and on
    SQLite a write transaction blocks every claim meanwhile. Raises :class:`InvalidInput`
    naming the field."""
    space_name, space = resolve_space(body.space)
    try:
        parse_dataset_uri(body.dataset)
        # Where the coordinator sees the path, a wrong layout is refused now; a path it
        # cannot see may still exist on the workers (they report a FAILED trial if not).
        check_dataset_location(body.dataset, budget_seconds=DATASET_CHECK_SECONDS)
    except DatasetURIError as exc:
        raise InvalidInput(str(exc), field="dataset") from None
    if body.algorithm == "grid" and not space.is_discrete:
        raise InvalidInput(
            "algorithm 'grid' needs a discrete space (choice, randint, quniform, "
            "qloguniform); this space has continuous parameters (use 'tpe' or 'random')",
            field="algorithm",
        )
    if body.algorithm == "grid" and (space.grid_size or 0) > MAX_GRID_POINTS:
        raise InvalidInput(
            f"algorithm 'grid' enumerates at most {MAX_GRID_POINTS} points; this space has "
            f"{space.grid_size} (use 'tpe' or 'random')",
            field="algorithm",
        )
    try:  # the suggester refuses settings the algorithm cannot honour
        get_suggester(body.algorithm, **body.algorithm_options.model_dump())
    except ValueError as exc:
        raise InvalidInput(str(exc), field="algorithm_options") from None
    _check_evaluator_fit(body)
    return CheckedStudy(body, space_name, space)


def _check_evaluator_fit(body: StudyCreate) -> None:
    """The options that depend on the evaluator: the schedule's resource must be one the
    evaluator spends, plugin options need a plugin. Raises :class:`InvalidInput`."""
    plugin = body.evaluator.startswith(PLUGIN_PREFIX)
    if body.evaluator_options.plugin_options is not None and not plugin:
        raise InvalidInput(
            f"plugin_options are read only by a plugin evaluator (plugin:NAME); this "
            f"study's evaluator is {body.evaluator!r}",
            field="evaluator_options.plugin_options",
        )
    if body.blend_k and body.evaluator not in BLENDABLE_EVALUATORS:
        raise InvalidInput(
            f"a blend combines fixed-filter features ({' or '.join(BLENDABLE_EVALUATORS)} "
            f"studies); evaluator {body.evaluator!r} keeps no model to blend",
            field="blend_k",
        )
    readout = body.evaluator_options.readout
    if body.blend_k and readout not in (None, "ridge"):
        raise InvalidInput(
            f"a blend fits a ridge readout on the members' combined kernel; readout "
            f"{readout!r} has no kernel form here (use ridge, or blend_k 0)",
            field="evaluator_options.readout",
        )
    if body.schedule is None:
        return
    known = () if plugin else EVALUATOR_RESOURCES[body.evaluator]
    if body.schedule.resource not in known:
        has = f"only {', '.join(known)}" if known else "no resource a schedule can set"
        raise InvalidInput(
            f"evaluator {body.evaluator!r} has {has}; got resource {body.schedule.resource!r}",
            field="schedule.resource",
        )
    try:
        body.schedule.resources()
    except ValueError as exc:
        raise InvalidInput(str(exc), field="schedule") from None


def create_study(session: Session, body: StudyCreate, checked: CheckedStudy | None = None) -> Study:
    """Insert the study (caller's transaction); fills nothing else. ``checked`` is what
    :func:`check_study` returned before the transaction began (without it the checks run
    here, inside the transaction). Raises :class:`InvalidInput` naming the field."""
    checked = checked or check_study(body)
    space_name, space = checked.space_name, checked.space
    study = Study(
        name=body.name,
        state=StudyState.RUNNING,
        space_name=space_name,
        space=space.to_dict(),
        dataset=body.dataset,
        evaluator=body.evaluator,
        evaluator_options=body.evaluator_options.model_dump(exclude_none=True),
        algorithm=body.algorithm,
        algorithm_options=body.algorithm_options.model_dump(),
        max_trials=body.max_trials,
        max_parallel=body.max_parallel,
        top_k=body.top_k,
        seed=body.seed,
        schedule=body.schedule.model_dump() if body.schedule else None,
        blend_k=body.blend_k,
        blend_weights=body.blend_weights,
    )
    session.add(study)
    session.flush()
    return study


def get_study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise NotFound(f"study {study_id} does not exist", field="study_id")
    return study


def list_studies(session: Session) -> list[Study]:
    return list(session.scalars(select(Study).order_by(Study.id)))


def stats(session: Session, study_ids: list[int]) -> dict[int, StudyStats]:
    """Counts by state, search/final progress and best COMPLETE value for each study, in
    two grouped queries."""
    counts: dict[int, dict[str, int]] = {sid: {} for sid in study_ids}
    progress: dict[int, list[int]] = {sid: [0, 0, 0] for sid in study_ids}
    # One expression object in SELECT and GROUP BY: two copies of ``rung == 0`` get two
    # bind parameters, which PostgreSQL does not see as the same expression.
    first_rung = (Trial.rung == 0).label("first_rung")
    rows = session.execute(
        select(Trial.study_id, Trial.state, Trial.source, first_rung, func.count())
        .where(Trial.study_id.in_(study_ids))
        .group_by(Trial.study_id, Trial.state, Trial.source, first_rung)
    )
    for sid, state, source, first_rung, n in rows:
        state, final = TrialState(state), TrialSource(source).is_final()
        counts[sid][state.value] = counts[sid].get(state.value, 0) + n
        done = state.is_finished()
        if final:
            progress[sid][1] += n
            progress[sid][2] += n if done else 0
        elif done and first_rung:  # configurations, as max_trials counts them
            progress[sid][0] += n
    best = dict(
        session.execute(
            select(Trial.study_id, func.max(Trial.value))
            .where(
                Trial.study_id.in_(study_ids),
                Trial.state == TrialState.COMPLETE,
                Trial.source.in_([s.value for s in TrialSource.search()]),
            )
            .group_by(Trial.study_id)
        ).all()
    )
    return {sid: StudyStats(counts[sid], best.get(sid), *progress[sid]) for sid in study_ids}


def record_fingerprint(session: Session, study_id: int, fingerprint: str) -> None:
    """Remember the first dataset fingerprint a worker reported; workers whose data
    differ from it refuse the study's trials (they check it at claim time)."""
    session.execute(
        update(Study)
        .where(Study.id == study_id, Study.dataset_fingerprint.is_(None))
        .values(dataset_fingerprint=fingerprint[:64])
    )
