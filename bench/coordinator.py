"""Coordinator throughput against Optuna's RDB storage, with equal work per trial.

Every row runs N worker *processes* (multiprocessing, spawn) on a study that already
holds 10,000 finished trials (a copy of one template database per system), with
zero-cost evaluation: a worker gets a trial, reports a deterministic score at once, and
asks for the next one. Two kinds of set-up:

* ``production``: each timed trial is created with a suggestion inside the timed window.
  archsearch: a real study with ``algorithm`` "tpe" or "random", paused until the clock
  starts and then resumed with an empty queue, so its coordinator(s) suggest every timed
  trial as in production (``max_parallel`` = workers x batch: the queue can hold a batch
  per worker). Optuna: ``study.ask()`` + ``suggest_categorical`` for every active label
  of the same space, with ``TPESampler`` or ``RandomSampler``.
* ``pre-created``: the timed trials exist before the clock starts. archsearch: WAITING
  trials in the study; Optuna: ``study.enqueue_trial``.

archsearch: 1, 2 or 4 ``archsearch serve`` processes on one database, workers spread
round-robin over them, claiming ``batch`` trials at a time (``claim_many`` /
``report_many`` when the client has them). Optuna: N processes, each opening the storage
and loading the study (its documented way to run in parallel), 8 processes of 4 threads,
and N threads in one process. Both sides get the same connection pool per process and,
on SQLite, the same WAL + ``synchronous=NORMAL`` + 30 s busy timeout.

Run ``python -m bench coordinator [--quick]`` (all rows), or ``python -m
bench.coordinator --help`` to pick rows.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import fixtures, report, workload

ADMIN = "bench-admin-token-0123456789abcdef"
OPTUNA_STUDY = "bench"
QUEUE_CAP = 1024  # service.suggestion_queue.QUEUE_CAP: the deepest queue a study keeps
BASE_POOL = (10, 30)  # pool_size, max_overflow: service.config.Settings' defaults
PG_CONNECTION_BUDGET = 60  # connections all coordinators of a row may open (max 100)


@dataclass
class Config:
    backends: tuple[str, ...] = ("postgres", "sqlite")
    modes: tuple[str, ...] = ("production", "pre-created")
    samplers: tuple[str, ...] = ("tpe", "random")
    coordinators: tuple[int, ...] = (1, 2, 4)
    batches: tuple[int, ...] = (1, 8)
    # "8x4": 8 processes of 4 threads, a process-parallel peer that fits in the memory
    # of a machine where 32 processes holding the history do not (see optuna_row)
    optuna: tuple[str, ...] = ("processes", "8x4", "threads")
    workers: int = 32
    trials: int = 1000
    history: int = 10_000
    run_timeout: float = 1200.0
    systems: tuple[str, ...] = ("archsearch", "optuna")

    @classmethod
    def quick(cls) -> Config:
        return cls(
            backends=("postgres",),
            samplers=("tpe",),
            optuna=("processes",),
            coordinators=(2,),
            batches=(8,),
            workers=8,
            trials=100,
            history=1000,
            run_timeout=60.0,
        )


@dataclass
class Row:
    backend: str
    mode: str
    sampler: str
    system: str
    how: str
    workers: int
    n_trials: int
    run: workload.Run
    notes: list[str] = field(default_factory=list)
    variant: str = ""  # Optuna: "processes", "threads" or "PxT"

    @property
    def setup(self) -> tuple[str, str, str]:
        return (self.backend, self.mode, self.sampler)

    @property
    def rate(self) -> float:
        return self.run.done / self.run.seconds if self.run.seconds > 0 else float("nan")

    def pct(self, q: float) -> float:
        xs = sorted(self.run.latencies)
        return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    def per_trial_ms(self, seconds: float | None) -> float | str:
        if seconds is None or not self.run.done:
            return ""
        return 1000 * seconds / self.run.done


def pools(coordinators: int) -> tuple[int, int]:
    """The pool of each coordinator process in a row with ``coordinators`` of them: the
    defaults (10 + 30) for one; for more, less overflow, so that all of them together
    stay within PG_CONNECTION_BUDGET of the server's 100 connections."""
    size, overflow = BASE_POOL
    if coordinators * (size + overflow) > PG_CONNECTION_BUDGET:
        size = min(size, PG_CONNECTION_BUDGET // coordinators)
        overflow = max(0, PG_CONNECTION_BUDGET // coordinators - size)
    return size, overflow


# -- archsearch ----------------------------------------------------------------------------
@contextlib.contextmanager
def coordinators(url: str, k: int, pool: tuple[int, int]) -> Iterator[list[Any]]:
    from archsearch.launch import start_coordinator

    env = {
        "ARCHSEARCH_DB_POOL_SIZE": str(pool[0]),
        "ARCHSEARCH_DB_MAX_OVERFLOW": str(pool[1]),
    }
    live: list[Any] = []
    try:
        for _ in range(k):
            live.append(start_coordinator(url, admin_token=ADMIN, env=env))
        yield live
    finally:
        for c in live:
            workload.stop_coordinator_tree(c)


def warm_up(live: Sequence[Any], algorithm: str) -> None:
    """Make each coordinator process start its suggester pool and answer its first
    requests before the clock starts (a long-running coordinator has done both): create a
    one-trial study of the same algorithm on each (its creation runs a refill), then stop
    it (a stopped study's trials are never claimed)."""
    from client import Client

    for i, c in enumerate(live):
        with Client(c.base_url, ADMIN) as admin:
            study = admin.create_study(
                name=f"warm-up {i}",
                space=fixtures.SPACE,
                dataset="builtin:digits",
                algorithm=algorithm,
                max_trials=1,
                max_parallel=1,
                top_k=0,
            )
            admin.set_study_state(study.id, "stopped")


def archsearch_row(
    cfg: Config, template: str, study_id: int, token: str, backend: str, mode: str,
    sampler: str, k: int, batch: int,
) -> Row:  # fmt: skip
    from client import Client

    n, h = cfg.trials, cfg.history
    pool = pools(k)
    with fixtures.clone_database(template) as url:
        if mode == "production":
            fixtures.configure_study(
                url,
                study_id,
                algorithm=sampler,
                max_parallel=min(cfg.workers * batch, QUEUE_CAP),
                max_trials=h + n,
                state="paused",
            )
        else:
            raws = [raw for raw, _ in fixtures.history_points(n, seed=fixtures.HISTORY_SEED + 1)]
            fixtures.add_waiting(url, study_id, raws)
            fixtures.configure_study(
                url,
                study_id,
                algorithm="random",
                max_parallel=min(cfg.workers * batch, QUEUE_CAP),
                max_trials=h + n,
                state="running",
            )
        with coordinators(url, k, pool) as live:
            warm_up(live, sampler if mode == "production" else "random")
            specs = [
                {"base_url": live[i % k].base_url, "token": token, "batch": batch}
                for i in range(cfg.workers)
            ]

            def resume() -> None:
                with Client(live[0].base_url, ADMIN) as admin:
                    admin.set_study_state(study_id, "running")

            def is_over() -> bool:
                counts = fixtures.study_counts(url, study_id)
                pending = counts.get("WAITING", 0) + counts.get("RUNNING", 0)
                return pending == 0 and sum(counts.values()) >= h + n

            run = workload.drive(
                workload.archsearch_worker,
                specs,
                n_trials=n,
                server_pids=[c.process.pid for c in live],
                on_start=resume if mode == "production" else None,
                is_over=is_over,
                run_timeout=cfg.run_timeout,
            )
        counts = fixtures.study_counts(url, study_id)
    notes = []
    complete = counts.get("COMPLETE", 0) - h
    infeasible = counts.get("INFEASIBLE", 0)
    if complete != run.done:
        run.results[0].errors.append(f"workers finished {run.done}, the study has {complete}")
    if infeasible:
        notes.append(f"{infeasible} suggestions infeasible (not run)")
    if run.done + infeasible < n:
        why = "timed out" if run.timed_out else "missing"
        notes.append(f"{why}: {run.done + infeasible} of {n} ended")
    what = f"HTTP, {k} coord{'s' if k > 1 else ''}, batch {batch}"
    if pool != BASE_POOL:
        what += f", pool {pool[0]}+{pool[1]}"
    return Row(backend, mode, sampler, "archsearch", what, cfg.workers, n, run, notes)


# -- Optuna --------------------------------------------------------------------------------
# Resident memory of one Optuna process that has loaded a study (measured: ~600 MB with
# 10,000 finished trials of 34 categorical parameters: its cache holds a FrozenTrial with
# a distribution object per parameter per trial).
OPTUNA_BASE_MB = 150
OPTUNA_KB_PER_TRIAL = 50


def available_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def optuna_layout(cfg: Config, how: str) -> tuple[int, int, str]:
    """``(processes, threads each, label)`` for an Optuna variant: "processes" (one
    thread each), "threads" (one process) or "PxT" (e.g. "8x4", for a machine without
    the memory for one process per worker)."""
    if how == "processes":
        return cfg.workers, 1, f"{cfg.workers} processes"
    if how == "threads":
        return 1, cfg.workers, f"{cfg.workers} threads, 1 process"
    p, _, t = how.partition("x")
    if not (p.isdigit() and t.isdigit()):
        raise ValueError(f"Optuna variant {how!r}: processes, threads or PxT (e.g. 8x4)")
    return int(p), int(t), f"{p} processes x {t} threads"


def optuna_memory_mb(cfg: Config, how: str) -> float:
    """What the row's Optuna processes will hold once they have loaded the study."""
    processes = optuna_layout(cfg, how)[0]
    per = OPTUNA_BASE_MB + OPTUNA_KB_PER_TRIAL * (cfg.history + cfg.trials) / 1024
    return processes * per


def skipped_row(cfg: Config, backend: str, mode: str, sampler: str, how: str, why: str) -> Row:
    run = workload.Run(float("nan"), [])
    label = optuna_layout(cfg, how)[2]
    return Row(backend, mode, sampler, "optuna", label, cfg.workers, cfg.trials, run, [why], how)


def optuna_row(cfg: Config, template: str, backend: str, mode: str, sampler: str, how: str) -> Row:
    import optuna

    n = cfg.trials
    need, have = optuna_memory_mb(cfg, how), available_mb()
    if need > 0.8 * have:
        why = (
            f"skipped: would need ~{need / 1024:.1f} GiB ({OPTUNA_KB_PER_TRIAL} KB per "
            f"trial per process), {have / 1024:.1f} GiB available"
        )
        _say(f"  {backend} {mode} {sampler} optuna ({how}): {why}")
        return skipped_row(cfg, backend, mode, sampler, how, why)
    with fixtures.clone_database(template) as url:
        if mode == "pre-created":
            storage = fixtures.optuna_storage(url, *BASE_POOL)
            study = optuna.load_study(study_name=OPTUNA_STUDY, storage=storage)
            for raw, _ in fixtures.history_points(n, seed=fixtures.HISTORY_SEED + 1):
                study.enqueue_trial(dict(raw))
            fixtures.dispose_optuna(storage)
        spec = {
            "url": url,
            "study": OPTUNA_STUDY,
            "sampler": "random" if mode == "pre-created" else sampler,
            "seed": 1000,
            "pool_size": BASE_POOL[0],
            "max_overflow": BASE_POOL[1],
            "n_trials": n,
            # pre-created: an ask would take one of the enqueued trials
            "warm_ask": mode == "production",
        }
        processes, threads, label = optuna_layout(cfg, how)
        specs = [{**spec, "threads": threads} for _ in range(processes)]
        run = workload.drive(workload.optuna_worker, specs, n_trials=n, run_timeout=cfg.run_timeout)
        storage = fixtures.optuna_storage(url, *BASE_POOL)
        trials = optuna.load_study(study_name=OPTUNA_STUDY, storage=storage).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        )
        fixtures.dispose_optuna(storage)
    notes = []
    complete = len(trials) - cfg.history
    if complete != run.done:
        run.results[0].errors.append(f"workers finished {run.done}, the study has {complete}")
    if run.done < n:
        why = "timed out" if run.timed_out else "asks or tells failed"
        notes.append(f"{why}: {run.done} of {n} told")
    return Row(backend, mode, sampler, "optuna", label, cfg.workers, n, run, notes, how)


# -- the table -----------------------------------------------------------------------------
HEADERS = [
    "db",
    "set-up",
    "system",
    "how",
    "trials",
    "s",
    "trials/s",
    "p50 ms to work",
    "p99 ms to work",
    "empty claims",
    "server CPU ms/trial",
    "client CPU ms/trial",
    "errors",
    "vs optuna",
]


def table_rows(rows: Sequence[Row], variants: Sequence[str]) -> list[list[object]]:
    peers: dict[tuple[tuple[str, str, str], str], Row] = {
        (r.setup, r.variant): r for r in rows if r.system == "optuna"
    }
    out: list[list[object]] = []
    for r in rows:
        ratio = "peer"
        if r.system == "archsearch":
            parts = []
            for how in variants:
                peer = peers.get((r.setup, how))
                ok = peer is not None and math.isfinite(peer.rate * r.rate) and peer.rate > 0
                parts.append(f"{r.rate / peer.rate:.2f}x" if ok else "-")  # type: ignore[union-attr]
            ratio = " / ".join(parts)
        setup = f"{r.mode} {r.sampler}" if r.mode == "production" else r.mode
        errors = str(len(r.run.errors))
        if r.notes:
            errors += " (" + "; ".join(r.notes) + ")"
        out.append(
            [
                r.backend,
                setup,
                r.system,
                r.how,
                r.run.done,
                r.run.seconds,
                r.rate,
                r.pct(0.5),
                r.pct(0.99),
                r.run.empties if r.system == "archsearch" else "",
                r.per_trial_ms(r.run.server_cpu),
                r.per_trial_ms(r.run.client_cpu),
                errors,
                ratio,
            ]
        )
    return out


def notes(cfg: Config, batch_fallback: bool) -> str:
    """The table's notes: the set-up and what makes the comparison fair."""
    from service.config import Settings

    sp = Settings().suggest_processes
    lo, hi = workload.BACKOFF_MIN * 1000, workload.BACKOFF_MAX * 1000
    intro = (
        f"{cfg.workers} worker processes (multiprocessing, spawn) per row, {cfg.trials} "
        f"timed trials, {cfg.history:,} finished trials already in each study (the same "
        "fg11 points and scores on both sides, from a copy of one template database per "
        "system). Zero-cost evaluation: the score is a hash of the parameters, reported at "
        "once. The clock starts when every worker is ready (archsearch: registered; "
        "Optuna: opened the storage, loaded the study, read its history into its cache "
        "and, in production rows, made one untimed ask told FAIL, which builds its "
        "sampler's search-space cache as a long-running worker has; samplers ignore failed "
        "trials) and stops at the last finished trial."
    )
    bullets = [
        "Equal work per trial. production rows: every timed trial is created with a "
        "suggestion from the same sampler family inside the timed window. archsearch's "
        "study waits paused with an empty queue and is resumed through the API when the "
        "clock starts; its coordinators then suggest every timed trial as in production "
        f"(max_parallel = workers x batch, at most {QUEUE_CAP}; {sp} suggester process(es) "
        "per coordinator, ARCHSEARCH_SUGGEST_PROCESSES). Optuna: study.ask(), then "
        "suggest_categorical for each active label of the same space (conditional labels "
        "only when active), TPESampler(seed=...) or RandomSampler(seed=...), otherwise "
        "defaults. pre-created rows: the timed trials exist before the clock (archsearch: "
        "WAITING rows; Optuna: study.enqueue_trial); no suggestion is timed on either side.",
        "Processes on both sides: archsearch workers are processes talking HTTP to "
        "`archsearch serve` processes (each has created a one-trial warm-up study before "
        "the clock, so its suggester pool is running, as in a long-lived coordinator); "
        f"Optuna runs as {cfg.workers} processes that each open the storage and load the "
        "study (its documented way to run in parallel) and, for reference, as "
        f"{cfg.workers} threads in one process (one GIL, as study.optimize(n_jobs=...)).",
        f"Equal pools: every Optuna process gets RDBStorage engine_kwargs pool_size="
        f"{BASE_POOL[0]}, max_overflow={BASE_POOL[1]} (the coordinator's defaults, "
        "ARCHSEARCH_DB_POOL_SIZE / ARCHSEARCH_DB_MAX_OVERFLOW); a row with several "
        "coordinators gives each less overflow (shown in the row) so that all stay within "
        f"{PG_CONNECTION_BUDGET} of PostgreSQL's 100 connections. archsearch also "
        "pre-pings PostgreSQL connections (a round trip per checkout); Optuna keeps "
        "SQLAlchemy's default (no pre-ping).",
        "Equal SQLite settings: Optuna's connections are given archsearch's (WAL journal, "
        "synchronous=NORMAL, through a SQLAlchemy connect event in each Optuna process; "
        "the same 30 s busy timeout through connect_args). archsearch's are unchanged. "
        "SQLite rows run one coordinator.",
        "Time to work (archsearch): per claim call that got work, from the start of the "
        "worker's first claim attempt until it holds its trial(s): empty claims (204 or an "
        f"empty batch) and the back-off after each ({lo:.0f} ms doubling to {hi:.0f} ms, "
        "jittered) count. 'empty claims' counts every claim that got nothing, the last "
        "ones too (workers poll until the final trials of the row are reported). Optuna: "
        "the ask plus the suggestions (it samples inside suggest_*), per trial.",
        "Server CPU: user + system CPU of the coordinator processes and all their children "
        "(the suggester pool), from /proc before and after the timed window, per finished "
        "trial. Optuna has no server: its sampling is in its client CPU (every worker "
        "process's CPU in the window, per trial). The database server's CPU is in neither.",
        "Ratios: archsearch trials/s over Optuna's in the same set-up and run, one per "
        "Optuna variant in the order of the column's header. Everything shares the "
        "machine's cores: the database server, the coordinators and every worker.",
        "Memory: an Optuna process that has loaded the study holds ~"
        f"{OPTUNA_KB_PER_TRIAL} KB per trial (its cache keeps a FrozenTrial with a "
        f"distribution object per parameter), ~0.6 GB at 10,000 trials: a variant whose "
        "processes would need more than 80% of the available memory is skipped (its row "
        "says so); PxT variants (P processes of T threads) fit smaller machines.",
    ]
    if batch_fallback:
        bullets.append(
            "client.Client has no claim_many / report_many yet: only batch 1 rows were run "
            f"(batches {list(cfg.batches)} were asked for)."
        )
    wrap = textwrap.TextWrapper(width=92, subsequent_indent="  ")
    return "\n".join(
        [textwrap.fill(intro, 92), "", "Fairness:"] + [wrap.fill("- " + b) for b in bullets]
    )


def run(quick: bool = False, record: bool = True, cfg: Config | None = None) -> list[Row]:
    """Measure every row of ``cfg`` (default: the full set, or :meth:`Config.quick`)."""
    cfg = cfg or (Config.quick() if quick else Config())
    started = time.monotonic()
    has_batches = workload.client_has_batches()
    batches = tuple(b for b in cfg.batches if b == 1 or has_batches) or (1,)
    fallback = batches != cfg.batches
    missing_optuna = "optuna" in cfg.systems and not _has_optuna()
    if missing_optuna:
        cfg.systems = tuple(x for x in cfg.systems if x != "optuna")
        _say("optuna is not installed (pip install -e '.[bench]'): archsearch rows only")
    points = fixtures.history_points(cfg.history)
    rows: list[Row] = []
    for backend in cfg.backends:
        ks = cfg.coordinators if backend == "postgres" else (1,)
        with contextlib.ExitStack() as stack:
            tmpl_a = tmpl_o = None
            token, sid = "", 0
            if "archsearch" in cfg.systems:
                tmpl_a = stack.enter_context(fixtures.database(backend))
                token, sid = fixtures.seed_study(tmpl_a, points, state="paused")
            if "optuna" in cfg.systems:
                tmpl_o = stack.enter_context(fixtures.database(backend))
                fixtures.seed_optuna(tmpl_o, points, OPTUNA_STUDY)
            _say(f"{backend}: templates seeded ({time.monotonic() - started:.0f} s)")
            for mode in cfg.modes:
                samplers = cfg.samplers if mode == "production" else ("-",)
                for sampler in samplers:
                    if tmpl_a is not None:
                        for k in ks:
                            for b in batches:
                                rows.append(_guard(
                                    archsearch_row, cfg, tmpl_a, sid, token, backend, mode,
                                    sampler, k, b, label=f"HTTP, {k} coord(s), batch {b}",
                                ))  # fmt: skip
                                _say(_line(rows[-1], started))
                    if tmpl_o is not None:
                        for how in cfg.optuna:
                            rows.append(_guard(
                                optuna_row, cfg, tmpl_o, backend, mode, sampler, how, label=how
                            ))  # fmt: skip
                            _say(_line(rows[-1], started))
    headers = [*HEADERS[:-1], "vs optuna " + " / ".join(cfg.optuna)]
    body = report.table(headers, table_rows(rows, cfg.optuna))
    body += "\n\n" + notes(cfg, fallback)
    if missing_optuna:
        body += "\n\nOptuna is not installed here (pip install -e '.[bench]'): no peer rows."
    errors = [e for r in rows for e in r.run.errors]
    if errors:
        body += "\n\nFirst errors:\n" + "\n".join(f"- {e.strip()[-300:]}" for e in errors[:5])
    body += f"\n\nWall time of the whole benchmark: {time.monotonic() - started:.0f} s."
    report.record("coordinator: throughput vs Optuna, equal work per trial", body,
                  enabled=record)  # fmt: skip
    return rows


def _has_optuna() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def _guard(make: Any, cfg: Config, template: str, *args: Any, label: str) -> Row:
    """``make(cfg, template, *args)`` (:func:`archsearch_row` or :func:`optuna_row`), or
    a row that says why it failed: a long run goes on to the next row."""
    try:
        return make(cfg, template, *args)
    except Exception as exc:
        import traceback

        backend, mode, sampler = args[2:5] if make is archsearch_row else args[:3]
        system = "archsearch" if make is archsearch_row else "optuna"
        run = workload.Run(float("nan"), [workload.WorkerResult(errors=[traceback.format_exc()])])
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        why = f"failed: {type(exc).__name__}: {first}"
        return Row(backend, mode, sampler, system, label, cfg.workers, cfg.trials, run, [why])


def _line(r: Row, started: float) -> str:
    return (
        f"  [{time.monotonic() - started:5.0f} s] {r.backend} {r.mode} {r.sampler} "
        f"{r.system} ({r.how}): {r.run.done} trials, {r.rate:.1f}/s, "
        f"{r.run.empties} empty, {len(r.run.errors)} errors {r.notes or ''}"
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _csv(kind: type) -> Any:
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    base = Config()
    p = argparse.ArgumentParser(
        prog="python -m bench.coordinator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="the smoke profile (then overrides)")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--backends", type=_csv(str), help=f"default {','.join(base.backends)}")
    p.add_argument("--modes", type=_csv(str), help=f"default {','.join(base.modes)}")
    p.add_argument("--samplers", type=_csv(str), help=f"default {','.join(base.samplers)}")
    p.add_argument("--coordinators", type=_csv(int), help="default 1,2,4 (PostgreSQL only)")
    p.add_argument("--batches", type=_csv(int), help="default 1,8")
    p.add_argument(
        "--optuna", type=_csv(str), help="default processes,8x4,threads (PxT: P procs of T threads)"
    )
    p.add_argument("--systems", type=_csv(str), help="default archsearch,optuna")
    p.add_argument("--workers", type=int)
    p.add_argument("--trials", type=int)
    p.add_argument("--history", type=int)
    p.add_argument("--run-timeout", type=float, help="seconds a row may run")
    args = p.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    for name in cfg.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    run(record=not args.no_record, cfg=cfg)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
