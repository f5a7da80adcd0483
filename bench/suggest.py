"""TPE suggestion cost as the history grows, against plain hyperopt and Optuna, on the same
space and the same history; and the coordinator's claim latency as the history grows.

Per history size (finished trials), medians of a few repeats with the same seeds:

* archsearch, cold: ``get_suggester("tpe").suggest(space, history, 1, seed)`` from the
  history list (what a stateless coordinator does for one suggestion);
* archsearch, 32 in one call, per suggestion (how the coordinator refills a queue);
* archsearch, warm: ``suggest_encoded`` on an ``EncodedHistory`` kept between calls (the
  service's cached path), when ``search_space`` has it;
* hyperopt ``fmin`` keeping its ``Trials`` in memory between iterations (a script);
* Optuna's ``TPESampler`` (its defaults, and ``multivariate=True``) on an in-memory study
  holding the same history (``study.add_trials``): one ``ask`` with every parameter
  suggested.

The space is ``fg11`` (every parameter a choice; Optuna gets a categorical over the same
option indices). Histories are distinct prior draws scored by a fixed hash, all COMPLETE.

Run ``python -m bench suggest [--quick]``, or ``python -m bench.suggest --help``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import fixtures, report, workload

SIZES = (100, 1000, 5000, 10_000)
QUICK_SIZES = (100, 1000)
BATCH = 32
CLAIMS = 60
QUICK_CLAIMS = 20
ADMIN = "bench-admin-token-0123456789abcdef"


def history(n: int) -> tuple[list[Any], list[tuple[dict[str, Any], float]]]:
    """``n`` finished trials: as archsearch ``HistoryItem`` s and as (raw, value) pairs."""
    from search_space import HistoryItem

    points = fixtures.history_points(n)
    return [HistoryItem(raw=r, state="COMPLETE", value=v) for r, v in points], points


def _median_time(fn: Callable[[int], Any], repeats: int, warm_up: bool = True) -> float:
    """Median seconds of ``fn(seed)`` over ``repeats`` seeds 100, 101, ... (after one
    untimed call with seed 99 that pays the one-time imports and caches)."""
    if warm_up:
        fn(99)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(100 + i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours_cold(space: Any, hist: list[Any], repeats: int, n: int = 1) -> float:
    """Seconds per suggestion: ``n`` in one call from the history list."""
    from search_space import get_suggester

    return _median_time(lambda s: get_suggester("tpe").suggest(space, hist, n, s), repeats) / n


def ours_warm(space: Any, hist: list[Any], repeats: int) -> float | None:
    """One suggestion from an ``EncodedHistory`` built once (None without one)."""
    import search_space

    encoded_cls = getattr(search_space, "EncodedHistory", None)
    if encoded_cls is None:
        return None
    encoded = encoded_cls.from_history(space, hist)
    tpe = search_space.get_suggester("tpe")
    return _median_time(lambda s: tpe.suggest_encoded(encoded, 1, s), repeats)


def _hyperopt_trials(space: Any, hist: list[Any]) -> Any:
    """hyperopt ``Trials`` holding the history (loss = -value), built once."""
    from hyperopt import Trials
    from hyperopt.base import JOB_STATE_DONE, STATUS_OK

    trials = Trials()
    tids = list(range(len(hist)))
    miscs = []
    for tid, item in zip(tids, hist, strict=True):
        vals = space.trial_vals(item.raw)
        miscs.append(
            {
                "tid": tid,
                "cmd": None,
                "workdir": None,
                "idxs": {label: [tid] if v else [] for label, v in vals.items()},
                "vals": vals,
            }
        )
    results = [{"status": STATUS_OK, "loss": -item.value} for item in hist]
    docs = trials.new_trial_docs(tids, [None] * len(tids), results, miscs)
    for doc in docs:
        doc["state"] = JOB_STATE_DONE
    trials.insert_trial_docs(docs)
    trials.refresh()
    return trials


def plain_hyperopt(space: Any, hist: list[Any], repeats: int) -> float:
    """What a hyperopt script does per iteration: ``fmin`` over an in-memory ``Trials``
    that it keeps between iterations (no rebuild), one more evaluation each call."""
    import numpy as np
    from hyperopt import STATUS_OK, fmin, tpe

    trials = _hyperopt_trials(space, hist)

    def one(seed: int) -> None:
        fmin(
            lambda p: {"loss": -0.5, "status": STATUS_OK},
            space.expr,
            algo=tpe.suggest,
            max_evals=len(trials.trials) + 1,
            trials=trials,
            rstate=np.random.default_rng(seed),
            show_progressbar=False,
        )

    return _median_time(one, repeats)


def optuna_tpe(
    points: Sequence[tuple[dict[str, Any], float]], repeats: int
) -> tuple[dict[str, float], bool]:
    """One Optuna ``ask`` with every active parameter suggested, on an in-memory study
    holding ``points``: ``{"default": s, "other": s}`` for ``TPESampler(seed)`` with its
    defaults and with ``multivariate`` the other way, and whether the default is
    multivariate (it is for a single objective since Optuna 5). Each sampler is made
    once (seed 100) and kept, as a script keeps it: the untimed first ask builds its
    search-space cache (~0.5 s at 5,000 trials), which a fresh sampler would rebuild."""
    import optuna

    from search_space import get_space

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    plan = fixtures.optuna_plan(get_space(fixtures.SPACE))
    study = optuna.create_study(direction="maximize")
    study.add_trials(fixtures.optuna_frozen_trials(points))
    probe = optuna.samplers.TPESampler()
    is_mv = getattr(probe, "_is_multivariate", None)
    default_mv = bool(is_mv(study)) if callable(is_mv) else False
    out = {}
    for name, kwargs in (("default", {}), ("other", {"multivariate": not default_mv})):
        study.sampler = optuna.samplers.TPESampler(seed=100, **kwargs)

        def one(_: int) -> None:
            trial = study.ask()
            point = fixtures.suggest_all(trial, plan)
            study.tell(trial, fixtures.objective(point))

        out[name] = _median_time(one, repeats)
    return out, default_mv


def _optuna_available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


# -- claim latency -------------------------------------------------------------------------
def claim_latency(n_history: int, claims: int) -> dict[str, float]:
    """Claim -> complete by one HTTP worker on a TPE study (max_parallel=4, SQLite) holding
    ``n_history`` finished trials, its queue full at the start (a running study's steady
    state) and refilled in the background after every claim, as in production. Each
    claim's time runs from its first attempt until it gets a trial: empty claims (204)
    and the back-off after them count, and are counted."""
    import random

    from archsearch.launch import start_coordinator
    from client import Client

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'claims.db'}"
        points = fixtures.history_points(n_history)
        # Room for twice the claims: infeasible suggestions use up max_trials too, and
        # the study must not end before the last measured claim.
        token, study_id = fixtures.seed_study(
            url, points, algorithm="tpe", max_parallel=4, max_trials=n_history + 2 * claims + 8
        )
        live = start_coordinator(url, admin_token=ADMIN)
        lat: list[float] = []
        empties = 0
        try:
            deadline = time.monotonic() + 120
            while fixtures.study_counts(url, study_id).get("WAITING", 0) < 4:
                if time.monotonic() > deadline:
                    raise RuntimeError("the coordinator did not fill the queue in 120 s")
                time.sleep(0.05)
            with Client(live.base_url, token) as c:
                wid = c.register_worker("bench").id
                while len(lat) < claims:
                    t0 = time.perf_counter()
                    deadline = time.monotonic() + 60  # for one claim
                    delay = workload.BACKOFF_MIN
                    while (got := c.claim(wid, [study_id])) is None:
                        empties += 1
                        if time.monotonic() > deadline:
                            break
                        time.sleep(delay * rng.uniform(0.5, 1.5))
                        delay = min(2 * delay, workload.BACKOFF_MAX)
                    if got is None:
                        break
                    lat.append(time.perf_counter() - t0)
                    c.complete(got.trial.id, wid, fixtures.objective(got.trial.params))
        finally:
            workload.stop_coordinator_tree(live)
    lat.sort()
    return {
        "claims": len(lat),
        "p50": 1000 * lat[len(lat) // 2],
        "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "max": 1000 * lat[-1],
        "empties": empties,
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(
    quick: bool = False,
    record: bool = True,
    sizes: Sequence[int] | None = None,
    claims: int | None = None,
) -> None:
    from search_space import get_space

    space = get_space(fixtures.SPACE)
    sizes = tuple(sizes or (QUICK_SIZES if quick else SIZES))
    claims = claims or (QUICK_CLAIMS if quick else CLAIMS)
    started = time.monotonic()
    has_optuna = _optuna_available()
    default_mv = False
    rows = []
    for n in sizes:
        hist, points = history(n)
        repeats = 5 if n <= 1000 else 3
        batch_repeats = 3 if n <= 1000 else 1
        a = ours_cold(space, hist, repeats)
        b = ours_cold(space, hist, batch_repeats, n=BATCH)
        w = ours_warm(space, hist, repeats)
        c = plain_hyperopt(space, hist, repeats)
        d = e = None
        if has_optuna:
            times, default_mv = optuna_tpe(points, repeats)
            d, e = times["default"], times["other"]

        def ms(x: float | None) -> float | str:
            return "n/a" if x is None else 1000 * x

        def ratio(x: float | None, base: float) -> str:
            return "n/a" if x is None else f"{x / base:.2f}x"

        rows.append(
            [n, ms(a), ms(b), ms(w), ms(c), ms(d), ms(e), ratio(c, a), ratio(d, a), ratio(e, a)]
        )
        _say(f"  [{time.monotonic() - started:4.0f} s] {n} finished: {rows[-1][1:7]}")
    mv = " (multivariate)" if default_mv else ""
    body = report.table(
        [
            "finished trials",
            "archsearch TPE cold ms",
            f"archsearch {BATCH} in one call, ms each",
            "archsearch warm (encoded) ms",
            "hyperopt fmin ms",
            f"optuna TPE default{mv} ms",
            f"optuna TPE multivariate={not default_mv} ms",
            "hyperopt / cold",
            "optuna default / cold",
            f"optuna mv={not default_mv} / cold",
        ],
        rows,
    )
    body += (
        "\n\nOne suggestion; medians of 5 (<= 1,000 finished) or 3 repeats with seeds "
        f"100, 101, ... after one untimed call; the {BATCH}-in-one-call column is one "
        f"call's time / {BATCH} (median of 3, or 1 call above 1,000). archsearch cold: "
        "get_suggester('tpe').suggest(space, history, n, seed) from the list of "
        "HistoryItem (a stateless coordinator's work); warm: suggest_encoded on an "
        "EncodedHistory built once (the service's cached path; n/a where search_space has "
        "none). hyperopt: fmin keeping its Trials in memory between iterations, as a "
        "script does. Optuna: TPESampler(seed=100) with its defaults (multivariate for a "
        "single objective since Optuna 5) and with multivariate the other way, each made "
        "once and kept (its untimed first ask builds its search-space cache, as in a "
        "script), on an in-memory study holding the same trials (study.add_trials), timing "
        "ask + suggest_categorical for all 34 labels. A ratio > 1 means archsearch cold is "
        "faster. Space: fg11 (34 choice parameters)."
    )
    if not has_optuna:
        body += " Optuna is not installed here (pip install -e '.[bench]'): its columns are n/a."
    body += "\n\n"
    lat_rows = []
    for n in sizes:
        r = claim_latency(n, claims)
        lat_rows.append([n, r["claims"], r["p50"], r["p99"], r["max"], r["empties"]])
        _say(f"  [{time.monotonic() - started:4.0f} s] claims at {n}: {r}")
    body += report.table(
        ["finished trials", "claims", "p50 ms", "p99 ms", "max ms", "empty claims"], lat_rows
    )
    body += (
        "\n\nClaim latency over HTTP: one worker claims then completes at once, SQLite, a "
        "TPE study with max_parallel=4 whose queue is full when the first claim starts and "
        "is refilled in the background after every claim, as in production. A claim's time "
        "runs from its first attempt until it holds a trial: empty claims (204 while the "
        f"queue refills) and the back-off after each ({workload.BACKOFF_MIN * 1000:.0f} ms "
        f"doubling to {workload.BACKOFF_MAX * 1000:.0f} ms) count, and are counted. "
        f"Wall time of the whole benchmark: {time.monotonic() - started:.0f} s."
    )
    report.record("suggest: suggestion cost and claim latency vs history", body, enabled=record)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.suggest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--sizes", help=f"comma-separated history sizes (default {SIZES})")
    p.add_argument("--claims", type=int, help=f"claims per size (default {CLAIMS})")
    args = p.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else None
    run(quick=args.quick, record=not args.no_record, sizes=sizes, claims=args.claims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
