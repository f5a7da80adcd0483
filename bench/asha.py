"""ASHA against flat search and Optuna at equal worker-seconds (issue 14), on a CIFAR-10
subset (the JPEG zip in ../shared/data) with the ``screen`` evaluator over ``pinto-cox``.

Rows, each run once per seed, the rows of one seed one after the other (the order rotated
from seed to seed, so that the load of other processes falls on all rows alike):

* ``flat random``, ``flat TPE``: archsearch studies without a schedule; every trial fits
  the readout on the whole fit split.
* ``ASHA + random``, ``ASHA + TPE``: the same with ``schedule`` = ASHA over
  ``train_per_class`` (:data:`SCHEDULE`), whose top rung is the whole fit split.
* ``Optuna TPE + Hyperband``: Optuna's ``TPESampler`` and ``HyperbandPruner`` (its
  documented pairing) driving :func:`workers.evaluators.evaluate` in this process: every
  trial is evaluated at each rung resource in turn, ``trial.report(value, step=resource)``
  then ``trial.should_prune()`` (Optuna's documented pruning loop).

Both sides keep the features a configuration's evaluation extracted
(:mod:`workers.feature_cache`, the worker's default size): a promoted archsearch rung and
Optuna's next Hyperband step extract only the images they add to the ones seen.

The archsearch rows take the production path: a coordinator (``archsearch serve``, a child
process, SQLite file) and one worker daemon (:class:`workers.daemon.WorkerDaemon`, a thread
of this process, HTTP between them, one trial per claim).

The budget unit is the **worker-second**: the ``seconds`` metric the screen evaluator
measures for each evaluation (split, model build, feature extraction, readout fit and
scoring), summed over every search evaluation, lower rungs and pruned steps included. Both
sides read the same metric of the same function, so they count the same work. An
infeasible candidate costs 0 (refused before any work, on both sides). A row stops once its
budget is spent (archsearch: ``PATCH`` to stopped; its top-k finals then run on the test
split, not counted); what ends past the budget is left out of its curve.

"Validation accuracy" for best-so-far is only a result at the full resource (flat rows:
every result; ASHA and Optuna: the top rung), since a lower rung's readout saw fewer
images. ``python -m bench.asha [--quick] [--no-record] [--seeds N] [--budget S]``.
CIFAR-10 here is JPEG quality 75: close to, not identical with, published CIFAR-10 numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
PNG = ROOT / "bench" / "out" / "asha.png"
DOCS_PNG = ROOT / "docs" / "asha-curves.png"
RUNS_JSON = ROOT / "bench" / "out" / "asha-runs.json"

SPACE = "pinto-cox"
FILTER_SEED = 42  # EvaluatorOptions.filter_seed's default: the archsearch rows use it too
MAX_FEATURES = 50_000  # as bench/search.py: keeps the slowest candidates to seconds
N_STARTUP = 10  # TPE's random start, both implementations (Optuna's default)
TOP_K = 2  # finals per archsearch study; the best within budget is among them nearly always
# A study cost cap (EvaluatorOptions.max_gflops_per_image), the same on both sides: the
# heaviest ~20% of pinto-cox (3 layers at 128-160 px) take minutes each on 2 CPU cores and
# would make a few draws the whole budget; above it a candidate is INFEASIBLE, unstarted.
MAX_GFLOPS = 0.25

# 250 non-test images per class: 20% validation (50 per class, the same at every rung),
# 200 per class in the fit split = the flat rows' budget = ASHA's top rung.
PER_CLASS = {"train": 250, "test": 50}
SCHEDULE = {"kind": "asha", "resource": "train_per_class", "min": 25, "max": 200, "eta": 3}
QUICK_PER_CLASS = {"train": 60, "test": 10}
QUICK_SCHEDULE = {"kind": "asha", "resource": "train_per_class", "min": 6, "max": 48, "eta": 3}

FLAT_RANDOM, FLAT_TPE = "flat random", "flat TPE"
ASHA_RANDOM, ASHA_TPE = "ASHA + random", "ASHA + TPE"
OPTUNA = "Optuna TPE + Hyperband"
ROWS = (FLAT_RANDOM, FLAT_TPE, ASHA_RANDOM, ASHA_TPE, OPTUNA)


# -- the pure part: curves over worker-seconds --------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """One search evaluation, in the order it ran: its worker-seconds, its validation
    accuracy (None: infeasible) and whether it ran at the full resource."""

    seconds: float
    value: float | None
    full: bool
    ref: Any = None  # what identifies the configuration (a trial id, an Optuna number)


def best_curve(evals: Iterable[Evaluation], budget: float) -> list[tuple[float, float, Any]]:
    """Best-so-far after each full-resource result that ends within ``budget``:
    ``(cumulative worker-seconds, best value, ref of the best)``, one point per such
    result. Lower-rung results cost their seconds and add no point."""
    spent, best, best_ref = 0.0, -math.inf, None
    points: list[tuple[float, float, Any]] = []
    for e in evals:
        spent += e.seconds
        if spent > budget:
            break
        if e.full and e.value is not None:
            if e.value > best:
                best, best_ref = e.value, e.ref
            points.append((spent, best, best_ref))
    return points


def best_at(curve: Sequence[tuple[float, float, Any]], t: float) -> float | None:
    """The best value found within ``t`` worker-seconds (None: no full result yet)."""
    found = None
    for spent, best, _ in curve:
        if spent > t:
            break
        found = best
    return found


def seconds_to_reach(curve: Sequence[tuple[float, float, Any]], target: float) -> float | None:
    """Worker-seconds until the best reached ``target`` (None: never within the curve)."""
    for spent, best, _ in curve:
        if best >= target:
            return spent
    return None


def median_curve(curves: Sequence[Sequence[tuple[float, float, Any]]], grid: Sequence[float]):
    """The median over ``curves`` of :func:`best_at` at each ``grid`` time, no result yet
    counting as 0 accuracy: ``[(t, median), ...]`` (non-decreasing)."""
    out: list[tuple[float, float, Any]] = []
    for t in grid:
        values = [best_at(c, t) for c in curves]
        out.append((t, statistics.median(0.0 if v is None else v for v in values), None))
    return out


# -- Optuna's view of a space -------------------------------------------------------------
def suggest_raw(space: Any, trial: Any) -> dict[str, int]:
    """A raw point of ``space`` asked of an Optuna ``trial``, define-by-run: every active
    choice as ``suggest_categorical`` over its option indices, a nested choice asked only
    when the option holding it is picked. Raises ``ValueError`` for a space with other
    parameter types (the built-in grids are all choices)."""
    from search_space.space_params import ParamInfo

    def inner(node: Any) -> Iterable[ParamInfo]:
        if isinstance(node, ParamInfo):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from inner(v)
        elif isinstance(node, list | tuple):
            for v in node:
                yield from inner(v)

    nested = {p.label for info in space.params.values() for o in info.options for p in inner(o)}
    raw: dict[str, int] = {}

    def ask(info: ParamInfo) -> None:
        if info.type != "choice":
            raise ValueError(f"{info.label}: only choice parameters are mapped, not {info.type}")
        index = trial.suggest_categorical(info.label, list(range(len(info.options))))
        raw[info.label] = index
        for p in inner(info.options[index]):
            ask(p)

    for label, info in space.params.items():
        if label not in nested:
            ask(info)
    return raw


# -- one row ------------------------------------------------------------------------------
@dataclass
class RowRun:
    row: str
    seed: int
    evals: list[Evaluation]
    test_of: dict[Any, float] = field(default_factory=dict)  # ref -> test accuracy
    wall: float = 0.0
    configurations: int = 0
    failed: int = 0

    def curve(self, budget: float) -> list[tuple[float, float, Any]]:
        return best_curve(self.evals, budget)

    def best_test(self, budget: float) -> float | None:
        curve = self.curve(budget)
        return self.test_of.get(curve[-1][2]) if curve else None


@dataclass
class Setup:
    dataset: str
    per_class: dict[str, int]
    schedule: dict[str, Any]
    budget: float

    def resources(self) -> list[int]:
        from protocol.options import ScheduleOptions

        return ScheduleOptions.model_validate(self.schedule).resources()


class Archsearch:
    """A coordinator (child process, SQLite file in a temporary directory) and one worker
    daemon thread, for the whole run. :meth:`close` ends both."""

    def __init__(self) -> None:
        from archsearch.launch import start_coordinator
        from client import Client
        from service.auth import create_token
        from service.db import make_engine, session_factory, session_scope
        from service.migrate import upgrade
        from service.models import Role
        from workers.daemon import WorkerConfig, WorkerDaemon

        self.dir = Path(tempfile.mkdtemp(prefix="bench-asha-"))
        url = f"sqlite:///{self.dir / 'archsearch.db'}"
        engine = make_engine(url)
        try:
            upgrade(engine)
            with session_scope(session_factory(engine)) as s:
                worker_token = create_token(s, Role.WORKER, "bench-asha")
        finally:
            engine.dispose()
        admin = secrets.token_urlsafe(24)
        # A short lease: the worker beats every lease / 3 s, so a trial running when its
        # study is stopped hears "stop" within 2 s instead of 20 (less wall time lost).
        self.coordinator = start_coordinator(
            url,
            admin_token=admin,
            env={"ARCHSEARCH_LEASE_SECONDS": "6"},
            die_with_parent_process=True,
        )
        self.client = Client(self.coordinator.base_url, admin, timeout=60)
        # One trial per claim: each result is reported (and promotes, or informs TPE)
        # before the next trial starts, as in Optuna's sequential loop.
        config = WorkerConfig(
            coordinator=self.coordinator.base_url,
            token=worker_token,
            data_dir=self.dir / "worker",
            device="cpu",
            batch=1,
            poll_seconds=0.3,
            name="bench-asha",
        )
        self.daemon = WorkerDaemon(config)
        self.thread = threading.Thread(target=self.daemon.run, name="worker", daemon=True)
        self.thread.start()

    def close(self) -> None:
        from archsearch.launch import stop_coordinator

        self.daemon.stop_event.set()
        self.thread.join(timeout=60)
        self.client.close()
        stop_coordinator(self.coordinator)
        shutil.rmtree(self.dir, ignore_errors=True)

    def run_row(self, row: str, seed: int, setup: Setup) -> RowRun:
        """One study until its worker-seconds pass the budget, then stopped; its finals
        are waited for (their test accuracy is reported, their seconds are not counted)."""
        from protocol.states import StudyState, TrialState

        tpe = row in (FLAT_TPE, ASHA_TPE)
        asha = row in (ASHA_RANDOM, ASHA_TPE)
        body: dict[str, Any] = {
            "name": f"bench {row} seed {seed}",
            "dataset": setup.dataset,
            "space": SPACE,
            "evaluator": "screen",
            "algorithm": "tpe" if tpe else "random",
            "max_trials": 100_000,
            "max_parallel": 1,
            "top_k": TOP_K,
            "seed": seed,
            "evaluator_options": {
                "max_per_class": setup.per_class,
                "max_features": MAX_FEATURES,
                "max_gflops_per_image": MAX_GFLOPS,
                "filter_seed": FILTER_SEED,
            },
        }
        if tpe:
            body["algorithm_options"] = {"n_startup_jobs": N_STARTUP}
        if asha:
            body["schedule"] = setup.schedule
        top_rung = len(setup.resources()) - 1 if asha else 0
        started = time.monotonic()
        study = self.client.create_study(**body)
        # A generous wall limit: a stuck study must not hang the benchmark.
        wall_limit = started + 8 * setup.budget + 300
        while True:
            trials = list(self.client.trials(study.id))
            spent = sum(_seconds(t) for t in trials if not t.is_final)
            if spent >= setup.budget or time.monotonic() > wall_limit:
                break
            if self.client.study(study.id).state != StudyState.RUNNING:
                break  # ended on its own (a paused study is an error here): nothing to stop
            time.sleep(0.5)
        now = self.client.study(study.id)
        if now.state in (StudyState.RUNNING, StudyState.PAUSED):
            if now.state == StudyState.PAUSED:
                print(f"warning: {row} seed {seed} paused itself: {now.error}", flush=True)
            self.client.set_study_state(study.id, "stopped")
        while not self.client.study(study.id).is_over() and time.monotonic() < wall_limit:
            time.sleep(0.5)
        wall = time.monotonic() - started
        trials = list(self.client.trials(study.id))
        search = [t for t in trials if not t.is_final and t.state.finished()]
        # One worker, one trial per claim: the report order is the evaluation order. An
        # INFEASIBLE insertion never ran (no finished_at, no seconds): its creation time.
        search.sort(key=lambda t: (t.finished_at or t.created_at, t.id))
        evals = [
            Evaluation(
                _seconds(t),
                t.value if t.state == TrialState.COMPLETE else None,
                t.rung == top_rung,
                t.id,
            )
            for t in search
            if t.state in (TrialState.COMPLETE, TrialState.INFEASIBLE)
        ]
        test_of = {
            t.final_of_id: t.value
            for t in trials
            if t.is_final and t.state == TrialState.COMPLETE and t.value is not None
        }
        return RowRun(
            row,
            seed,
            evals,
            test_of,
            wall,
            configurations=sum(1 for t in search if t.rung == 0),
            failed=sum(1 for t in search if t.state == TrialState.FAILED),
        )


def _seconds(trial: Any) -> float:
    """A finished search trial's worker-seconds: the evaluator's ``seconds`` metric."""
    value = trial.metrics.get("seconds") if trial.state.finished() else None
    return float(value) if isinstance(value, int | float) else 0.0


def run_optuna(seed: int, setup: Setup, ds: Any) -> RowRun:
    """Optuna's TPE sampler and Hyperband pruner over the same space, evaluator, data and
    budget, in this process; the best full-resource configuration within the budget is
    then scored on the test split as archsearch's finals are (fit capped at the top rung)."""
    import optuna

    from search_space import InfeasibleArchitecture, get_space
    from workers.evaluators import evaluate
    from workers.feature_cache import FeatureCache

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space(SPACE)
    levels = setup.resources()
    eta = int(setup.schedule["eta"])
    evals: list[Evaluation] = []
    archs: dict[int, Any] = {}
    spent = 0.0
    options = {
        "seed": seed,
        "max_features": MAX_FEATURES,
        "max_gflops_per_image": MAX_GFLOPS,
        "device": "cpu",
        # The worker daemon's cache at its default size: a trial's next step extracts only
        # the images it adds, as a promoted archsearch rung does.
        "feature_cache": FeatureCache(),
    }

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        arch = space.to_arch(suggest_raw(space, trial), input_channels=3, seed=FILTER_SEED)
        archs[trial.number] = arch
        value = 0.0
        for level in levels:
            if spent >= setup.budget:
                raise optuna.TrialPruned()  # out of budget: nothing more runs
            try:
                result = evaluate("screen", arch, ds, train_per_class=level, **options)
            except InfeasibleArchitecture:
                # The worst score, as archsearch's TPE counts an INFEASIBLE trial.
                evals.append(Evaluation(0.0, None, False, trial.number))
                return 0.0
            seconds = float(result.metrics["seconds"])
            spent += seconds
            value = result.value
            evals.append(Evaluation(seconds, value, level == levels[-1], trial.number))
            trial.report(value, step=level)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    def out_of_budget(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if spent >= setup.budget:
            study.stop()

    started = time.monotonic()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=levels[0], max_resource=levels[-1], reduction_factor=eta
        ),
    )
    study.optimize(objective, callbacks=[out_of_budget])
    wall = time.monotonic() - started
    run = RowRun(OPTUNA, seed, evals, wall=wall, configurations=len(study.trials))
    curve = run.curve(setup.budget)
    if curve:
        ref = curve[-1][2]
        final = evaluate(
            "screen", archs[ref], ds, final=True, train_per_class=levels[-1], **options
        )
        run.test_of[ref] = final.value
    return run


# -- the benchmark ------------------------------------------------------------------------
def run(
    quick: bool = False,
    record: bool = True,
    seeds: int | None = None,
    budget: float | None = None,
    first_seed: int = 0,
    out: Path = RUNS_JSON,
) -> dict[str, list[RowRun]]:
    """Run every row for seeds ``first_seed`` .. ``first_seed + seeds - 1``, saving the
    runs to ``out`` after every row; print (and record) the table, draw the curves."""
    if not CIFAR_ZIP.is_file():
        print(f"asha benchmark skipped: {CIFAR_ZIP} is absent")
        return {}
    from workers.datasets import load_dataset

    setup = Setup(
        dataset=f"imagefolder:{CIFAR_ZIP}",
        per_class=QUICK_PER_CLASS if quick else PER_CLASS,
        schedule=QUICK_SCHEDULE if quick else SCHEDULE,
        budget=budget or (30.0 if quick else 60.0),
    )
    n_seeds = seeds or (1 if quick else 4)
    runs: dict[str, list[RowRun]] = {row: [] for row in ROWS}
    t_start = time.perf_counter()
    service = Archsearch()
    try:
        for seed in range(first_seed, first_seed + n_seeds):
            # The daemon loads the data with the study's seed; so does this side.
            ds = load_dataset(setup.dataset, color="rgb", seed=seed, max_per_class=setup.per_class)
            order = ROWS[seed % len(ROWS) :] + ROWS[: seed % len(ROWS)]
            for row in order:
                if row == OPTUNA:
                    r = run_optuna(seed, setup, ds)
                else:
                    r = service.run_row(row, seed, setup)
                runs[row].append(r)
                print(_progress(r, setup.budget), flush=True)
                save_runs(runs, setup, quick, time.perf_counter() - t_start, out)
    finally:
        service.close()
    seconds = time.perf_counter() - t_start
    return finish(runs, setup, quick=quick, wall=seconds, record=record)


def finish(
    runs: dict[str, list[RowRun]], setup: Setup, *, quick: bool, wall: float, record: bool
) -> dict[str, list[RowRun]]:
    """Print (and record) the table and draw the curves of finished runs."""
    body = summarize(runs, setup, quick=quick, wall=wall)
    _plot(runs, setup.budget, docs=record and not quick)
    report.record(
        "asha: ASHA vs flat search vs Optuna at equal worker-seconds", body, enabled=record
    )
    return runs


def save_runs(
    runs: dict[str, list[RowRun]], setup: Setup, quick: bool, wall: float, path: Path = RUNS_JSON
) -> None:
    """Write what has run so far to ``path`` (after every row: a run cut short can still
    be summarised, ``--summarize``)."""
    doc = {
        "setup": dataclasses.asdict(setup),
        "quick": quick,
        "wall": wall,
        "runs": {
            row: [
                {
                    "seed": r.seed,
                    "evals": [[e.seconds, e.value, e.full, e.ref] for e in r.evals],
                    "test_of": [[k, v] for k, v in r.test_of.items()],
                    "wall": r.wall,
                    "configurations": r.configurations,
                    "failed": r.failed,
                }
                for r in rs
            ]
            for row, rs in runs.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def load_runs(path: Path) -> tuple[dict[str, list[RowRun]], Setup, bool, float]:
    """Read :func:`save_runs`' file, keeping only the seeds every row finished."""
    doc = json.loads(path.read_text())
    runs = {
        row: [
            RowRun(
                row,
                d["seed"],
                [Evaluation(*e) for e in d["evals"]],
                {k: v for k, v in d["test_of"]},
                d["wall"],
                d["configurations"],
                d["failed"],
            )
            for d in rs
        ]
        for row, rs in doc["runs"].items()
    }
    complete = set.intersection(*({r.seed for r in rs} for rs in runs.values()))
    runs = {row: [r for r in rs if r.seed in complete] for row, rs in runs.items()}
    return runs, Setup(**doc["setup"]), doc["quick"], doc["wall"]


def merge_runs(
    parts: Sequence[tuple[dict[str, list[RowRun]], Setup, bool, float]],
) -> tuple[dict[str, list[RowRun]], Setup, bool, float]:
    """Several :func:`load_runs` results of one setup as one (seeds in order, walls
    added). Raises ``ValueError`` when the setups differ or a seed repeats."""
    runs, setup, quick, wall = parts[0]
    runs = {row: list(rs) for row, rs in runs.items()}
    for more, other, q, w in parts[1:]:
        if other != setup or q != quick:
            raise ValueError(f"runs of different setups: {setup} and {other}")
        wall += w
        for row, rs in more.items():
            runs.setdefault(row, []).extend(rs)
    for row, rs in runs.items():
        rs.sort(key=lambda r: r.seed)
        if len({r.seed for r in rs}) != len(rs):
            raise ValueError(f"{row}: a seed appears twice")
    return runs, setup, quick, wall


def _progress(r: RowRun, budget: float) -> str:
    curve = r.curve(budget)
    best = f"{curve[-1][1]:.4f}" if curve else "-"
    return (
        f"seed {r.seed} {r.row}: {len(r.evals)} evaluations, {r.configurations} "
        f"configurations, best {best}, test {r.best_test(budget)}, wall {r.wall:.0f} s"
    )


def summarize(
    runs: dict[str, list[RowRun]], setup: Setup, *, quick: bool = False, wall: float = 0.0
) -> str:
    """The table and the goal lines, from finished runs."""
    budget = setup.budget
    curves = {row: [r.curve(budget) for r in rs] for row, rs in runs.items() if rs}
    finals = {row: [c[-1][1] if c else 0.0 for c in cs] for row, cs in curves.items()}
    target = statistics.median(finals[FLAT_RANDOM])
    grid = [budget * i / 400 for i in range(1, 401)]
    table_rows = []
    reach: dict[str, float | None] = {}
    for row, cs in curves.items():
        med = median_curve(cs, grid)
        reach[row] = seconds_to_reach(med, target)
        # Per seed: worker-seconds to reach that seed's own flat-random final best.
        per_seed = [seconds_to_reach(c, f) for c, f in zip(cs, finals[FLAT_RANDOM], strict=True)]
        tests = [t for t in (r.best_test(budget) for r in runs[row]) if t is not None]
        table_rows.append(
            [
                row,
                len(cs),
                f"{statistics.median(finals[row]):.4f}",
                f"{min(finals[row]):.4f}-{max(finals[row]):.4f}",
                f"{statistics.median(len(r.evals) for r in runs[row]):.0f}",
                f"{statistics.median(r.configurations for r in runs[row]):.0f}",
                "-" if reach[row] is None else f"{reach[row]:.0f}",
                "-" if reach[row] is None else f"{reach[row] / budget:.2f}",
                " ".join("-" if s is None else f"{s / budget:.2f}" for s in per_seed),
                f"{statistics.median(tests):.4f}" if tests else "-",
                f"{statistics.median(r.wall for r in runs[row]):.0f}",
            ]
        )
    body = report.table(
        [
            "row",
            "seeds",
            "median best val",
            "min-max over seeds",
            "evaluations",
            "configurations",
            "worker-s to flat random's median best",
            "/ budget",
            "per seed (own flat-random best) / budget",
            "median test acc of best",
            "median wall s",
        ],
        table_rows,
    )
    asha_tpe = reach.get(ASHA_TPE)
    seeds = sorted({r.seed for rs in runs.values() for r in rs})
    lines = [
        f"Seeds {seeds}, the same for every row; the rows of one seed run one after the "
        "other, their order rotated from seed to seed.",
        f"Budget {budget:.0f} worker-seconds per row and seed; flat random's final median "
        f"best {target:.4f}.",
        "ASHA + TPE reaches it in "
        + ("never (within the budget)" if asha_tpe is None else f"{asha_tpe:.0f} worker-s")
        + (
            ""
            if asha_tpe is None
            else f" = {asha_tpe / budget:.2f}x flat random's {budget:.0f} (goal <= 0.33: "
            f"{'met' if asha_tpe <= budget / 3 else 'NOT met'})"
        )
        + ".",
    ]
    own = reach.get(FLAT_RANDOM)
    if asha_tpe is not None and own is not None:
        lines.append(
            f"Against the time flat random's own median curve took to get there ({own:.0f} "
            f"worker-s, the median of its seeds being reached before their end): "
            f"{asha_tpe / own:.2f}x."
        )
    if OPTUNA in finals and ASHA_TPE in finals:
        a, o = statistics.median(finals[ASHA_TPE]), statistics.median(finals[OPTUNA])
        lo_a, hi_o = min(finals[ASHA_TPE]), max(finals[OPTUNA])
        lines.append(
            f"ASHA + TPE / Optuna (median best at the budget): {a:.4f} / {o:.4f} = "
            f"{a / o if o else math.inf:.3f}x (goal > 1: {'met' if a > o else 'NOT met'}; "
            + (
                "outside the seed spread"
                if lo_a > hi_o
                else "within the seed-to-seed spread, i.e. not a clear difference"
            )
            + ")."
        )
    for row in (FLAT_TPE, ASHA_RANDOM, ASHA_TPE, OPTUNA):
        if row in finals:
            lines.append(
                f"{row} / flat random (median best): "
                f"{statistics.median(finals[row]) / target:.3f}x."
            )
    resources = setup.resources()
    lines.append(
        f"Setup: {SPACE} space, screen evaluator (ridge readout, l2 chosen on an inner "
        f"split, max_features {MAX_FEATURES:,}, max_gflops_per_image {MAX_GFLOPS}, filter "
        f"seed {FILTER_SEED}), CIFAR-10 JPEG "
        f"subset {setup.per_class['train']} + {setup.per_class['test']} images per class "
        f"(20% of the non-test ones for validation, the same at every rung; the rest, "
        f"{resources[-1]} per class, is the fit split), data seeded by the row's seed. ASHA "
        f"over train_per_class {resources} (eta {setup.schedule['eta']}); Optuna's "
        f"Hyperband pruner with min_resource {resources[0]}, max_resource {resources[-1]}, "
        f"reduction_factor {setup.schedule['eta']}, reporting at the same resources. TPE: "
        f"{N_STARTUP} random start-up trials on both sides (archsearch n_startup_jobs, "
        "Optuna n_startup_trials), else defaults; infeasible = worst score on both sides."
    )
    lines.append(
        "Fairness: a worker-second is the screen evaluator's own `seconds` metric (split, "
        "model build, feature extraction, readout fit, scoring) for every search "
        "evaluation, lower rungs and pruned steps included, read the same way for "
        "archsearch (from the trials the worker reported) and Optuna (from the result of "
        "each `evaluate` call); not counted on either side: suggestion time (the "
        "coordinator's suggester process; Optuna's sampler in-process), HTTP, data loading, "
        "finals. archsearch: the production path (coordinator child process on SQLite, one "
        "worker daemon thread over HTTP, max_parallel 1, one trial per claim, CPU); Optuna "
        "in-process on the same CPU threads, sequential. Both sides keep each "
        "configuration's extracted features (workers.feature_cache, the worker's default "
        "2 GiB): a promoted rung or a Hyperband step extracts only the images it adds. "
        "Best validation counts only "
        "full-resource results (a lower rung's readout saw fewer images); an evaluation "
        "ending past the budget is left out on both sides. Test accuracy: the best "
        "in-budget configuration re-scored on the test split (archsearch: its final, one of "
        f"the study's top {TOP_K}; flat rows fit on all non-test images, ASHA finals and "
        f"Optuna's re-score on the top rung's {resources[-1]} per class). 'per seed': "
        "worker-seconds for that seed's run to reach that seed's flat-random final best "
        "('-': not within the budget)."
    )
    lines.append(
        f"torch threads {_threads()}; wall {wall:.0f} s in all; 1-minute load average at "
        f"the end {os.getloadavg()[0]:.1f} (other processes share the cores: seconds are "
        f"noisy). Curves: {PNG.relative_to(ROOT)} (copied to {DOCS_PNG.relative_to(ROOT)}). "
        "JPEG quality 75: not the official CIFAR-10 pixels."
        + (" Quick run: a smoke test, not a measurement." if quick else "")
    )
    return body + "\n\n" + "\n".join(lines)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _plot(runs: dict[str, list[RowRun]], budget: float, docs: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PNG.parent.mkdir(parents=True, exist_ok=True)
    grid = [budget * i / 400 for i in range(1, 401)]
    colors = ("tab:gray", "tab:blue", "tab:orange", "tab:red", "tab:green")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (row, rs), color in zip(runs.items(), colors, strict=True):
        if not rs:
            continue
        cs = [r.curve(budget) for r in rs]
        for c in cs:
            if c:
                xs = [p[0] for p in c] + [budget]
                ys = [p[1] for p in c] + [c[-1][1]]
                ax.step(xs, ys, where="post", color=color, alpha=0.25, linewidth=0.8)
        med = median_curve(cs, grid)
        # Drawn from where most seeds have a full result: before that, the median would
        # average a result with a "none yet" (0) and draw a level no run reached.
        most = [sum(best_at(c, t) is None for c in cs) * 2 < len(cs) for t in grid]
        ax.step(
            [p[0] for p in med],
            [p[1] if ok else float("nan") for p, ok in zip(med, most, strict=True)],
            where="post",
            color=color,
            linewidth=2.2,
            label=f"{row} (median of {len(cs)})",
        )
    ax.set_xlabel("worker-seconds spent (evaluator seconds, all rungs)")
    ax.set_ylabel("best full-resource validation accuracy")
    ax.set_title("pinto-cox on a CIFAR-10 subset: best so far at equal worker-seconds")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)
    plt.close(fig)
    if docs:  # only a recorded measurement replaces the README's figure
        shutil.copyfile(PNG, DOCS_PNG)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.asha", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 4)")
    parser.add_argument("--budget", type=float, default=None, help="worker-seconds per row")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RUNS_JSON, help="where runs are saved")
    parser.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        default=None,
        help="summarise saved runs (files of one setup, seeds merged) instead of running",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        runs, setup, quick, wall = merge_runs([load_runs(p) for p in args.summarize])
        finish(runs, setup, quick=quick, wall=wall, record=not args.no_record)
        return
    run(args.quick, not args.no_record, args.seeds, args.budget, args.first_seed, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
