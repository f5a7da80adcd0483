"""Dashboard server time on a large study: a SQLite study with 10,000 trials, filled
directly through the ORM with realistic parameters and architectures (pinto-cox prior
draws), then every dashboard page and results-query JSON route timed in-process
(FastAPI TestClient, so no network, but routing, auth, queries, rendering and JSON
serialisation are all counted).

Baseline in the same run: the plain trials listing, ``GET /api/v1/studies/{id}/trials
?limit=1000`` (one page of the REST API a client would page through). Reported: p50 and
max milliseconds over the repeats, answer size, and p50 relative to the baseline. The
parallel and importance routes are timed cold once (the COMPLETE trials loaded, the random
forest fit; scikit-learn's import timed apart) and then warm (both are cached per number of
COMPLETE trials, as a refreshing page sees them).
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import report

PAGE_BUDGET_MS = 1000.0  # the study page's server time must stay under this


@dataclass
class Timing:
    name: str
    path: str
    samples_ms: list[float]
    size: int

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def max(self) -> float:
        return max(self.samples_ms)


def fill(url: str, n_trials: int, seed: int = 0) -> int:
    """Create one pinto-cox study with ``n_trials`` trials (and 8 workers) in the migrated
    database at ``url``; return the study id. States: ~80% COMPLETE, 8% INFEASIBLE, 4%
    FAILED, 3% PRUNED, the last ones RUNNING (one per worker) and WAITING."""
    from sqlalchemy import insert

    from search_space import get_space
    from service.db import make_engine, session_factory, session_scope
    from service.models import Study, StudyState, Trial, TrialState, Worker

    space = get_space("pinto-cox")
    raws = space.sample_many(n_trials, seed)
    rng = random.Random(seed)
    t0 = datetime.now(UTC) - timedelta(days=2)
    engine = make_engine(url)
    try:
        with session_scope(session_factory(engine)) as s:
            study = Study(
                name="bench-dashboard",
                state=StudyState.RUNNING,
                space_name="pinto-cox",
                space=space.to_dict(),
                dataset="builtin:digits",
                evaluator="screen",
                evaluator_options={},
                algorithm="tpe",
                algorithm_options={},
                max_trials=n_trials + 100,
                max_parallel=8,
                top_k=5,
                seed=seed,
            )
            s.add(study)
            workers = [
                Worker(name=f"gpu{i:02d}", host=f"node{i // 4}", device=f"cuda:{i % 4}")
                for i in range(8)
            ]
            s.add_all(workers)
            s.flush()
            rows = []
            for i, raw in enumerate(raws):
                number = i + 1
                arch = space.to_arch(raw, input_channels=1, seed=42)
                created = t0 + timedelta(seconds=10 * i)
                started = created + timedelta(seconds=rng.uniform(0.1, 5))
                finished = started + timedelta(seconds=rng.uniform(5, 120))
                worker = workers[i % len(workers)].id
                tail = n_trials - number
                if tail < 8:
                    state = TrialState.RUNNING if tail < len(workers) // 2 else TrialState.WAITING
                else:
                    u = rng.random()
                    state = (
                        TrialState.INFEASIBLE
                        if u < 0.08
                        else TrialState.FAILED
                        if u < 0.12
                        else TrialState.PRUNED
                        if u < 0.15
                        else TrialState.COMPLETE
                    )
                # A score that depends on the architecture, plus noise.
                depth = len(arch.layers)
                width = sum(math.log2(layer.fbcorr.n_filters) for layer in arch.layers)
                value = 0.45 + 0.06 * depth + 0.01 * width + rng.gauss(0, 0.04)
                done = state.is_finished()
                reason = {
                    TrialState.INFEASIBLE: f"L{depth} lnorm: a 9x9 window does not fit a "
                    f"{rng.randint(1, 8)}x{rng.randint(1, 8)} map",
                    TrialState.FAILED: rng.choice(
                        [
                            "CUDA out of memory",
                            "worker lost its lease 3 times",
                            "dataset read error",
                        ]
                    ),
                    TrialState.PRUNED: "below the median of finished trials at step 2",
                }.get(state)
                rows.append(
                    dict(
                        study_id=study.id,
                        number=number,
                        state=state,
                        priority=1,
                        source="suggested",
                        params=raw,
                        arch=arch.to_dict(),
                        config_hash=f"{seed}-{number}",
                        seed=42,
                        value=value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                        test_value=None,
                        metrics={"n_train": 4000} if done else {},
                        intermediate=[[1, value - 0.05], [2, value - 0.01]] if done else [],
                        reason=reason,
                        worker_id=worker if state != TrialState.WAITING else None,
                        attempt=1,
                        created_at=created,
                        started_at=started if state != TrialState.WAITING else None,
                        finished_at=finished if done else None,
                        lease_expires_at=(
                            datetime.now(UTC) + timedelta(seconds=60)
                            if state == TrialState.RUNNING
                            else None
                        ),
                    )
                )
            s.execute(insert(Trial), rows)
            return study.id
    finally:
        engine.dispose()


def measure(client, name: str, path: str, repeats: int) -> Timing:
    """``repeats`` timed GETs of ``path`` (after one untimed warm-up)."""
    warm = client.get(path)
    assert warm.status_code == 200, (path, warm.status_code, warm.text[:300])
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = client.get(path)
        samples.append(1000 * (time.perf_counter() - t))
        assert r.status_code == 200, (path, r.status_code)
    return Timing(name, path, samples, len(r.content))


def run(quick: bool = False, record: bool = True) -> list[Timing]:
    """Fill the study, time every route, print and (optionally) record the table."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings
    from service.dashboard import columns, importance
    from service.db import make_engine
    from service.migrate import upgrade

    n_trials = 1000 if quick else 10_000
    repeats = 5 if quick else 15
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'bench.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        t = time.perf_counter()
        sid = fill(url, n_trials)
        fill_s = time.perf_counter() - t
        app = create_app(Settings(database_url=url, open_reads=True), maintenance=False)
        with TestClient(app) as client:
            # Cold paths, once each: the first importance request of a process imports
            # scikit-learn; a new COMPLETE trial makes the next parallel/importance
            # request reload the columns, then refit the forest.
            t = time.perf_counter()
            import sklearn.ensemble  # noqa: F401

            cold = {"import scikit-learn (once per process)": 1000 * (time.perf_counter() - t)}
            importance.IMPORTANCE_CACHE = columns.ResultCache(size=64)  # nothing cached
            columns.COLUMNS_CACHE = columns.ResultCache(size=8)
            for name, path in (
                ("json: parallel, cold (loads the COMPLETE trials)", "parallel"),
                ("json: importance, cold (forest fit)", "importance"),
            ):
                t = time.perf_counter()
                r = client.get(f"/api/v1/studies/{sid}/{path}")
                cold[name] = 1000 * (time.perf_counter() - t)
                assert r.status_code == 200, r.text
            top = [i["label"] for i in r.json()["importances"][:8]]
            chart_query = "&".join(f"labels={label}" for label in top)
            routes = [
                (
                    "baseline: REST trials page (limit=1000)",
                    f"/api/v1/studies/{sid}/trials?limit=1000",
                ),
                ("page: study", f"/studies/{sid}"),
                ("page: study, live refresh (?partial=1)", f"/studies/{sid}?partial=1"),
                ("page: studies", "/"),
                ("page: trial", f"/studies/{sid}/trials/{n_trials // 2}"),
                ("page: workers", "/workers"),
                ("json: history", f"/api/v1/studies/{sid}/history"),
                ("json: parallel (all labels)", f"/api/v1/studies/{sid}/parallel"),
                (
                    "json: parallel (the chart's 8 labels)",
                    f"/api/v1/studies/{sid}/parallel?{chart_query}",
                ),
                ("json: importance (cached)", f"/api/v1/studies/{sid}/importance"),
                ("json: summary", f"/api/v1/studies/{sid}/summary"),
                ("json: workers/status", "/api/v1/workers/status"),
            ]
            timings = [measure(client, name, path, repeats) for name, path in routes]
    base = timings[0].p50
    rows = [
        [
            x.name,
            round(x.p50, 1),
            round(x.max, 1),
            f"{x.size / 1024:.0f} KiB",
            f"{x.p50 / base:.2f}x",
        ]
        for x in timings
    ]
    rows += [
        [name, round(ms, 1), round(ms, 1), "", f"{ms / base:.2f}x"] for name, ms in cold.items()
    ]
    page = next(x for x in timings if x.name == "page: study")
    verdict = "under" if page.max < PAGE_BUDGET_MS else "OVER"
    body = report.table(["route", "p50 ms", "max ms", "size", "p50 vs baseline"], rows)
    body += (
        f"\n\nSQLite, one study of {n_trials:,} trials (pinto-cox prior draws, ~80% "
        f"COMPLETE; filled through the ORM in {fill_s:.1f} s), in-process TestClient, "
        f"{repeats} timed requests per route after one warm-up. The study page's max "
        f"server time is {page.max:.0f} ms: {verdict} the {PAGE_BUDGET_MS:.0f} ms budget "
        "(its charts are fetched by the browser from the json routes)."
    )
    report.record(
        "dashboard: server time on a 10,000-trial study"
        if not quick
        else f"dashboard: server time on a {n_trials}-trial study (quick)",
        body,
        enabled=record,
    )
    return timings
