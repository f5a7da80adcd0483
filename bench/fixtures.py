"""Benchmark fixtures: a migrated database holding a study with many finished trials,
written straight through the ORM (fast; a fixture, not product code)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


def seed_study(
    url: str,
    points: Sequence[tuple[dict[str, Any], float]],
    *,
    algorithm: str = "random",
    max_parallel: int = 1,
    max_trials: int | None = None,
) -> tuple[str, int]:
    """Migrate ``url``, make a worker token and an ``fg11`` study whose COMPLETE trials
    are ``points`` (raw values, score). Returns ``(worker token, study id)``."""
    from search_space import get_space
    from service.auth import create_token
    from service.db import make_engine, session_factory, session_scope
    from service.migrate import upgrade
    from service.models import Role, Study, StudyState, Trial, TrialState

    space = get_space("fg11")
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(session_factory(engine)) as s:
        token = create_token(s, Role.WORKER, "bench")
        study = Study(
            name="bench",
            state=StudyState.RUNNING,
            space=space.to_dict(),
            space_name="fg11",
            dataset="builtin:digits",
            evaluator="screen",
            evaluator_options={"max_features": 10_000_000},
            algorithm=algorithm,
            algorithm_options={},
            max_trials=max_trials or len(points),
            max_parallel=max_parallel,
            top_k=0,
            seed=0,
        )
        s.add(study)
        s.flush()
        archs: dict[str, dict[str, Any]] = {}
        for i, (raw, value) in enumerate(points, start=1):
            key = repr(sorted(raw.items()))
            if key not in archs:
                archs[key] = space.to_arch(raw).to_dict()
            s.add(
                Trial(
                    study_id=study.id,
                    number=i,
                    state=TrialState.COMPLETE,
                    params=raw,
                    arch=archs[key],
                    config_hash=hashlib.sha256(f"seed{i}".encode()).hexdigest(),
                    value=value,
                    metrics={},
                    intermediate=[],
                )
            )
        study_id = study.id
    engine.dispose()
    return token, study_id
