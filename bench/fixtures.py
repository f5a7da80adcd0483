"""Benchmark fixtures: databases holding a study with many finished trials, for archsearch
(written straight through the ORM: fast; a fixture, not product code) and for Optuna (its
own ``study.add_trials``), plus the mapping of an archsearch space onto Optuna's
distributions so that both systems search the same space from the same history.

A long history is expensive to write (Optuna's ``add_trials`` inserts one trial per
transaction), so the benchmarks seed one *template* database per system and give each
measured row a copy (:func:`clone_database`: ``CREATE DATABASE ... TEMPLATE`` on
PostgreSQL, the backup API on SQLite).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get(
    "ARCHSEARCH_BENCH_POSTGRES_URL",
    os.environ.get(
        "ARCHSEARCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
)
HISTORY_SEED = 7
SPACE = "fg11"


def objective(raw: dict[str, Any]) -> float:
    """A deterministic score in [0, 1) for a raw point (stands in for an accuracy). Both
    systems' benchmark workers report it, so TPE sees the same landscape on both."""
    digest = hashlib.sha256(repr(sorted(raw.items())).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def history_points(n: int, seed: int = HISTORY_SEED) -> list[tuple[dict[str, Any], float]]:
    """``n`` distinct prior draws of the fg11 space with their :func:`objective` scores."""
    from search_space import get_space

    space = get_space(SPACE)
    out: list[tuple[dict[str, Any], float]] = []
    seen: set[Any] = set()
    round_ = 0
    while len(out) < n:
        for raw in space.sample_many(n - len(out) + 16, seed=seed + 1000 * round_):
            key = space.point_key(raw)
            if key not in seen:
                seen.add(key)
                out.append((raw, objective(raw)))
                if len(out) == n:
                    break
        round_ += 1
    return out


# -- databases --------------------------------------------------------------------------
@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh empty database URL for ``backend`` ("sqlite": a file in a temporary folder;
    "postgres": a new database next to :data:`PG_ADMIN_URL`'s), dropped afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="archsearch-bench-") as d:
            yield f"sqlite:///{Path(d) / 'bench.db'}"
        return
    with _pg_database() as url:
        yield url


@contextlib.contextmanager
def clone_database(url: str) -> Iterator[str]:
    """A copy of the database at ``url`` (nobody may be connected to it), dropped after."""
    if url.startswith("sqlite"):
        source = url.split("///", 1)[1]
        with tempfile.TemporaryDirectory(prefix="archsearch-bench-") as d:
            target = Path(d) / "bench.db"
            src = sqlite3.connect(source)
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()
            yield f"sqlite:///{target}"
        return
    from sqlalchemy.engine import make_url

    with _pg_database(template=make_url(url).database) as clone:
        yield clone


@contextlib.contextmanager
def _pg_database(template: str | None = None) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    name = f"archsearch_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        tail = f' TEMPLATE "{template}"' if template else ""
        for attempt in range(10):
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"{tail}'))
                break
            except OperationalError:
                # "source database is being accessed by other users": an autovacuum
                # worker, or a connection of the last row still closing
                if attempt == 9:
                    raise
                time.sleep(1)
        try:
            yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# -- archsearch -------------------------------------------------------------------------
def _trial_rows(
    space: Any, study_id: int, first: int, raws: Sequence[dict[str, Any]], state: Any, values: Any
) -> list[dict[str, Any]]:
    rows = []
    for i, (raw, value) in enumerate(zip(raws, values, strict=True)):
        arch = space.to_arch(raw)
        rows.append(
            {
                "study_id": study_id,
                "number": first + i,
                "state": state,
                "priority": 1,
                "source": "suggested",
                "params": raw,
                "arch": arch.to_dict(),
                "config_hash": arch.content_hash(),
                "seed": arch.seed,
                "value": value,
                "metrics": {},
                "intermediate": [],
                "attempt": 1,
            }
        )
    return rows


def seed_study(
    url: str,
    points: Sequence[tuple[dict[str, Any], float]],
    *,
    algorithm: str = "random",
    max_parallel: int = 1,
    max_trials: int | None = None,
    state: str = "running",
) -> tuple[str, int]:
    """Migrate ``url``, make a worker token and an ``fg11`` study whose COMPLETE trials
    are ``points`` (raw values, score), with real architectures and config hashes (so the
    store's duplicate check sees them). Returns ``(worker token, study id)``."""
    from sqlalchemy import insert

    from search_space import get_space
    from service.auth import create_token
    from service.db import make_engine, session_factory, session_scope
    from service.migrate import upgrade
    from service.models import Role, Study, StudyState, Trial, TrialState

    space = get_space(SPACE)
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(session_factory(engine)) as s:
        token = create_token(s, Role.WORKER, "bench")
        study = Study(
            name="bench",
            state=StudyState(state),
            space=space.to_dict(),
            space_name=SPACE,
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
        study_id = study.id
        for start in range(0, len(points), 2000):
            chunk = points[start : start + 2000]
            s.execute(
                insert(Trial),
                _trial_rows(
                    space,
                    study_id,
                    start + 1,
                    [raw for raw, _ in chunk],
                    TrialState.COMPLETE,
                    [value for _, value in chunk],
                ),
            )
    engine.dispose()
    return token, study_id


def configure_study(url: str, study_id: int, **values: Any) -> None:
    """``UPDATE studies SET ...`` (algorithm, max_trials, max_parallel, state, ...)."""
    from sqlalchemy import update

    from service.db import make_engine, session_factory, session_scope
    from service.models import Study, StudyState

    if "state" in values:
        values["state"] = StudyState(values["state"])
    engine = make_engine(url)
    with session_scope(session_factory(engine)) as s:
        s.execute(update(Study).where(Study.id == study_id).values(**values))
    engine.dispose()


def add_waiting(url: str, study_id: int, raws: Sequence[dict[str, Any]]) -> None:
    """Append ``raws`` to the study as WAITING trials (pre-created work, as a user's
    enqueue would leave them), numbered after its last trial."""
    from sqlalchemy import func, insert, select

    from search_space import get_space
    from service.db import make_engine, session_factory, session_scope
    from service.models import Trial, TrialState

    space = get_space(SPACE)
    engine = make_engine(url)
    with session_scope(session_factory(engine)) as s:
        last = s.scalar(select(func.max(Trial.number)).where(Trial.study_id == study_id)) or 0
        s.execute(
            insert(Trial),
            _trial_rows(space, study_id, last + 1, raws, TrialState.WAITING, [None] * len(raws)),
        )
    engine.dispose()


def study_counts(url: str, study_id: int) -> dict[str, int]:
    """Trials of the study by state (search trials only)."""
    from sqlalchemy import func, select

    from service.db import make_engine
    from service.models import Trial

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Trial.state, func.count())
                .where(Trial.study_id == study_id)
                .group_by(Trial.state)
            ).all()
    finally:
        engine.dispose()
    return {getattr(state, "value", str(state)): int(n) for state, n in rows}


# -- Optuna -----------------------------------------------------------------------------
def optuna_plan(space: Any) -> list[tuple[str, Any, str | None, Any]]:
    """``(label, distribution, parent label, option)`` per label in document order: the
    define-by-run program that mirrors ``space`` in Optuna. A label with a parent is
    suggested only when the parent's suggested option is ``option`` (a conditional
    parameter). Choices become ``CategoricalDistribution`` over the option indices (the
    raw values archsearch stores), so history points carry over unchanged."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    plan_src = getattr(space, "_plan", None)
    if plan_src is None:  # every label unconditional
        plan_src = [(label, info, None, None) for label, info in space.params.items()]
    plan = []
    for label, info, parent, option in plan_src:
        kind = info.type
        spec = info.spec
        if info.options:
            dist: Any = CategoricalDistribution(list(range(len(info.options))))
        elif kind == "randint":
            dist = IntDistribution(int(spec.low), int(spec.high) - 1)
        elif kind in ("uniform", "loguniform"):
            dist = FloatDistribution(float(spec.low), float(spec.high), log=kind == "loguniform")
        else:
            raise NotImplementedError(f"{label}: no Optuna equivalent for {kind!r} in the bench")
        plan.append((label, dist, parent, option))
    return plan


def suggest_all(trial: Any, plan: Sequence[tuple[str, Any, str | None, Any]]) -> dict[str, Any]:
    """Suggest every active label of ``plan`` on an Optuna ``trial``; returns the point."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    point: dict[str, Any] = {}
    for label, dist, parent, option in plan:
        if parent is not None and point.get(parent) != option:
            continue
        if isinstance(dist, CategoricalDistribution):
            point[label] = trial.suggest_categorical(label, dist.choices)
        elif isinstance(dist, IntDistribution):
            point[label] = trial.suggest_int(label, dist.low, dist.high)
        else:
            point[label] = trial.suggest_float(label, dist.low, dist.high, log=dist.log)
    return point


def optuna_frozen_trials(points: Sequence[tuple[dict[str, Any], float]]) -> list[Any]:
    """``points`` as finished Optuna trials with the distributions of :func:`optuna_plan`."""
    import optuna

    from search_space import get_space

    dists = {label: dist for label, dist, _, _ in optuna_plan(get_space(SPACE))}
    return [
        optuna.trial.create_trial(
            params=dict(raw),
            distributions={label: dists[label] for label in raw},
            value=value,
        )
        for raw, value in points
    ]


def sqlite_like_archsearch() -> None:
    """Give every SQLite connection opened from now on in this process archsearch's
    settings: WAL journal and ``synchronous=NORMAL`` (the busy timeout is set through
    ``connect_args``). For Optuna's process: its RDBStorage has no option for these."""
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    if not event.contains(Pool, "connect", on_connect):
        event.listen(Pool, "connect", on_connect)


def optuna_storage(url: str, pool_size: int, max_overflow: int) -> Any:
    """Optuna's RDBStorage with the given pool (equal to the coordinator's per-process
    pool) and, on SQLite, archsearch's busy timeout, WAL and synchronous=NORMAL."""
    import optuna

    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": max_overflow}
    if url.startswith("sqlite"):
        sqlite_like_archsearch()
        kwargs["connect_args"] = {"timeout": 30}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def seed_optuna(url: str, points: Sequence[tuple[dict[str, Any], float]], name: str) -> None:
    """Create the Optuna study ``name`` (maximize) holding ``points`` as COMPLETE trials.

    The study is made with ``optuna.create_study``; its trials are written in one
    transaction through Optuna's own ORM models (the rows ``study.add_trials`` writes:
    trial, one param row per label with its distribution JSON, one value row), because
    ``add_trials`` commits each trial after ~70 queries (about 30 ms a trial on
    PostgreSQL: 5 minutes for 10,000). :func:`check_optuna_seed` compares the two ways."""
    import datetime as dt

    import optuna
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna_storage(url, 10, 30)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study_id = study._study_id
    frozen = optuna_frozen_trials(points)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with Session(storage.engine) as s, s.begin():
        trials = [
            models.TrialModel(
                number=i,
                study_id=study_id,
                state=optuna.trial.TrialState.COMPLETE,
                _datetime_start_utc=now,
                _datetime_complete_utc=now,
            )
            for i in range(len(frozen))
        ]
        s.add_all(trials)
        s.flush()
        params, values = [], []
        for row, ft in zip(trials, frozen, strict=True):
            for label, value in ft.params.items():
                dist = ft.distributions[label]
                params.append(
                    {
                        "trial_id": row.trial_id,
                        "param_name": label,
                        "param_value": dist.to_internal_repr(value),
                        "distribution_json": distribution_to_json(dist),
                    }
                )
            stored, kind = models.TrialValueModel.value_to_stored_repr(ft.value)
            values.append(
                {"trial_id": row.trial_id, "objective": 0, "value": stored, "value_type": kind}
            )
        for start in range(0, len(params), 20_000):
            s.execute(insert(models.TrialParamModel), params[start : start + 20_000])
        s.execute(insert(models.TrialValueModel), values)
    dispose_optuna(storage)


def check_optuna_seed(url: str, points: Sequence[tuple[dict[str, Any], float]]) -> None:
    """Assert that :func:`seed_optuna` gives the same trials as ``study.add_trials``
    (params, distributions, values, states, numbers) on a few points. For development."""
    import optuna

    seed_optuna(url, points, "fast")
    storage = optuna_storage(url, 10, 30)
    slow = optuna.create_study(storage=storage, study_name="slow", direction="maximize")
    slow.add_trials(optuna_frozen_trials(points))
    fast = optuna.load_study(study_name="fast", storage=storage)
    a, b = fast.get_trials(), slow.get_trials()
    assert len(a) == len(b) == len(points)
    for x, y in zip(a, b, strict=True):
        assert (x.number, x.state, x.value, x.params, x.distributions) == (
            y.number,
            y.state,
            y.value,
            y.params,
            y.distributions,
        ), (x, y)
    dispose_optuna(storage)


def dispose_optuna(storage: Any) -> None:
    storage.remove_session()
    storage.engine.dispose()
