"""Suggestion cost as the history grows: our TPE path vs plain hyperopt (fmin-driven) vs
Optuna's TPE sampler, on the same space and the same history; and the coordinator's claim
latency as the history grows (it must stay flat: suggestions are pre-queued).

The space is ``fg11`` (every parameter a choice, so Optuna's define-by-run can mirror it
with categorical parameters over the same option indices). Histories are random points
scored by a fixed synthetic function, all COMPLETE.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.fixtures import seed_study

SIZES = (100, 1000, 5000)
QUICK_SIZES = (100, 500)


def objective(raw: dict[str, Any]) -> float:
    """A deterministic score in [0, 1) for a raw point (stands in for an accuracy)."""
    digest = hashlib.sha256(repr(sorted(raw.items())).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def history(space: Any, n: int) -> list[Any]:
    from search_space import HistoryItem

    return [
        HistoryItem(raw=r, state="COMPLETE", value=objective(r))
        for r in space.sample_many(n, seed=7)
    ]


def _median_time(fn: Any, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours(space: Any, hist: list[Any], repeats: int) -> float:
    """The coordinator's path: rebuild hyperopt Trials from the stored history, then TPE."""
    from search_space import TPESuggester

    tpe = TPESuggester()
    return _median_time(lambda i: tpe.suggest(space, hist, 1, seed=100 + i), repeats)


def plain_hyperopt(space: Any, hist: list[Any], repeats: int) -> float:
    """What a hyperopt script does per iteration: fmin over an in-memory Trials that it
    keeps between iterations (so no rebuild), one more evaluation each call."""
    import numpy as np
    from hyperopt import STATUS_OK, fmin, tpe

    from search_space import history_to_trials

    trials = history_to_trials(space, hist)
    done = len(trials.trials)
    rstate = np.random.default_rng(0)

    def one(i: int) -> None:
        fmin(
            lambda p: {"loss": 0.5, "status": STATUS_OK},
            space.expr,
            algo=tpe.suggest,
            max_evals=done + i + 1,
            trials=trials,
            rstate=rstate,
            show_progressbar=False,
        )

    return _median_time(one, repeats)


def optuna_tpe(space: Any, hist: list[Any], repeats: int) -> float:
    """Optuna 'ask' with its TPE sampler, the same history added as finished trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists = {
        label: CategoricalDistribution(list(range(len(info.options))))
        for label, info in space.params.items()
        if info.options
    }
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(n_startup_trials=20, seed=0)
    )
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={k: v for k, v in item.raw.items() if k in dists},
                distributions={k: dists[k] for k in item.raw if k in dists},
                value=item.value,
            )
            for item in hist
        ]
    )

    def one(_: int) -> None:
        trial = study.ask()
        for label, dist in dists.items():
            trial.suggest_categorical(label, dist.choices)
        study.tell(trial, 0.5)

    return _median_time(one, repeats)


def claim_latency(n_history: int, claims: int = 60) -> tuple[float, float]:
    """p50 / p99 claim latency (ms, client side) on a study with ``n_history`` finished
    trials and a TPE study's queue being refilled in the background after each report."""
    from archsearch.launch import start_coordinator, stop_coordinator
    from client import Client
    from search_space import get_space

    space = get_space("fg11")
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'claims.db'}"
        points = [(raw, objective(raw)) for raw in space.sample_many(n_history, seed=3)]
        token, study_id = seed_study(
            url, points, algorithm="tpe", max_parallel=4, max_trials=n_history + 10 * claims
        )
        admin = "bench-admin-token-0123456789abcdef"
        live = start_coordinator(url, admin_token=admin)
        lat: list[float] = []
        try:
            with Client(live.base_url, token) as c:
                wid = c.register_worker("bench").id
                deadline = time.monotonic() + 120
                while len(lat) < claims and time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    got = c.claim(wid, [study_id])
                    if got is None:  # the queue is still being filled: not a claim
                        time.sleep(0.05)
                        continue
                    lat.append(time.perf_counter() - t0)
                    c.complete(got.trial.id, wid, 0.5)
        finally:
            stop_coordinator(live)
    lat.sort()
    return 1000 * lat[len(lat) // 2], 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def run(quick: bool = False, record: bool = True) -> None:
    from search_space import get_space

    space = get_space("fg11")
    sizes = QUICK_SIZES if quick else SIZES
    rows = []
    for n in sizes:
        hist = history(space, n)
        repeats = 5 if n <= 1000 else 3
        a = ours(space, hist, repeats)
        b = plain_hyperopt(space, hist, repeats)
        c = optuna_tpe(space, hist, repeats)
        rows.append([n, 1000 * a, 1000 * b, 1000 * c, f"{b / a:.2f}x", f"{c / a:.2f}x"])
    body = report.table(
        [
            "finished trials",
            "archsearch TPE ms",
            "hyperopt fmin ms",
            "optuna TPE ms",
            "hyperopt / ours",
            "optuna / ours",
        ],
        rows,
    )
    body += (
        "\n\nOne suggestion, median of 3-5. archsearch rebuilds hyperopt's Trials from "
        "the stored history on every call (stateless coordinator); the hyperopt column "
        "keeps its Trials in memory between iterations, as a script does. A ratio > 1 "
        "means archsearch is faster. Space: fg11 (33 choice parameters).\n\n"
    )
    lat_rows = []
    for n in sizes:
        p50, p99 = claim_latency(n)
        lat_rows.append([n, p50, p99])
    body += report.table(["finished trials", "claim p50 ms", "claim p99 ms"], lat_rows)
    body += (
        "\n\nClaim latency over HTTP (one worker, claim then complete, SQLite, TPE "
        "study with max_parallel=4 refilled in the background after every report)."
    )
    report.record("suggest: suggestion cost and claim latency vs history", body, enabled=record)
