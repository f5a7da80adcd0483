"""``archsearch demo``: the whole product on one machine in a few minutes.

Starts the coordinator on the embedded SQLite default (in a data directory), local worker
processes (CUDA when present, else CPU), creates a TPE study of the ``pinto-cox`` space
on ``builtin:mnist5k`` with the ``screen`` evaluator, shows live progress, then prints a
leaderboard with the final test scores, the database file and the dashboard URL, and
keeps serving the dashboard until Ctrl-C (``--no-serve`` exits instead).

Ctrl-C at any moment: workers give their trials back, every child process is ended
(children also die with the demo if it is killed), and the database stays a valid
archsearch database that ``archsearch serve`` opens.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from archsearch.launch import LiveCoordinator, die_with_parent, start_coordinator, stop_coordinator
from client import Client
from protocol.wire import StudyOut
from service.auth import create_token
from service.db import make_engine, session_factory, session_scope
from service.migrate import upgrade
from service.models import Role

# Screening on a class-balanced subset keeps every trial to seconds on a laptop CPU.
DEMO_SUBSET = {"train": 150, "test": 50}


@dataclass
class DemoOptions:
    data_dir: Path
    trials: int = 24
    workers: int = 2
    dataset: str = "builtin:mnist5k"
    space: str = "pinto-cox"
    port: int | None = None
    serve: bool = True
    top_k: int = 5
    seed: int = 0
    out: TextIO = field(default_factory=lambda: sys.stdout)


class Demo:
    """Owns the child processes; :meth:`close` ends them all, whatever state it is in."""

    def __init__(self, options: DemoOptions) -> None:
        self.o = options
        self.coordinator: LiveCoordinator | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.db_path = options.data_dir / "archsearch.db"
        self.url = f"sqlite:///{self.db_path}"
        self.admin_token = secrets.token_urlsafe(24)

    def say(self, text: str = "", end: str = "\n") -> None:
        self.o.out.write(text + end)
        self.o.out.flush()

    # -- set up -----------------------------------------------------------------------
    def start(self) -> tuple[Client, int]:
        self.o.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(self.url)
        try:
            upgrade(engine)
            with session_scope(session_factory(engine)) as s:
                worker_token = create_token(s, Role.WORKER, "demo")
        finally:
            engine.dispose()
        self.say(f"database   {self.db_path}")
        self.coordinator = start_coordinator(
            self.url,
            admin_token=self.admin_token,
            port=self.o.port,
            env={"ARCHSEARCH_OPEN_READS": "true", "ARCHSEARCH_LOG_LEVEL": "warning"},
            die_with_parent_process=True,
        )
        self.say(f"coordinator {self.coordinator.base_url} (pid {self.coordinator.process.pid})")
        client = Client(self.coordinator.base_url, self.admin_token)
        study = client.create_study(
            name=f"demo {time.strftime('%Y-%m-%d %H:%M')}",
            dataset=self.o.dataset,
            space=self.o.space,
            evaluator="screen",
            algorithm="tpe",
            algorithm_options={"n_startup_jobs": max(4, self.o.trials // 3)},
            max_trials=self.o.trials,
            max_parallel=self.o.workers,
            top_k=self.o.top_k,
            seed=self.o.seed,
            evaluator_options={"max_per_class": DEMO_SUBSET},
        )
        self.say(
            f"study      #{study.id} {self.o.space} on {self.o.dataset}, TPE, "
            f"{self.o.trials} trials, screen evaluator "
            f"({DEMO_SUBSET['train']}+{DEMO_SUBSET['test']} images per class)"
        )
        logs = self.o.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        for i in range(self.o.workers):
            log = (logs / f"worker-{i}.log").open("ab")
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "archsearch",
                        "worker",
                        "--coordinator",
                        self.coordinator.base_url,
                        "--studies",
                        str(study.id),
                        "--device",
                        "auto",
                        "--data-dir",
                        str(self.o.data_dir / f"worker-{i}"),
                        "--name",
                        f"demo-{i}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                    env={
                        **os.environ,
                        # In the environment, not the arguments: `ps` shows arguments.
                        "ARCHSEARCH_TOKEN": worker_token,
                        # The workers split this machine's cores (workers.threads).
                        "ARCHSEARCH_LOCAL_WORKERS": str(self.o.workers),
                    },
                )
            )
        self.say(f"workers    {self.o.workers} (logs in {logs})")
        return client, study.id

    # -- watch ------------------------------------------------------------------------
    def watch(self, client: Client, study_id: int) -> StudyOut:
        started = time.monotonic()
        tty = self.o.out.isatty()
        last_line = last_state = ""
        while True:
            study = client.study(study_id)
            finals, finals_done = study.finals, study.finals_done
            elapsed = time.monotonic() - started
            total = self.o.trials + max(finals, min(self.o.top_k, self.o.trials))
            progress = study.search_done + finals_done
            eta = elapsed / progress * (total - progress) if progress else float("nan")
            best = study.best_value
            phase = "final test evaluation" if finals else "search"
            state = (
                f"{_bar(progress, total)} {study.search_done}/{self.o.trials} trials"
                f"{f', {finals_done}/{finals} final' if finals else ''} | best "
                f"{'-' if best is None else f'{best:.4f}'} | {phase}"
            )
            line = f"{state} | elapsed {_clock(elapsed)} | ETA {_clock(eta)}"
            if tty:  # one line, redrawn every second
                self.say("\r" + line.ljust(len(last_line)), end="")
                last_line = line
            elif state != last_state:  # a log file gets a line per change
                self.say(line)
            last_state = state
            if study.is_over():
                if tty:
                    self.say()
                return study
            dead = [w for w in self.workers if w.poll() is not None]
            if len(dead) == len(self.workers):
                raise RuntimeError(f"all workers exited; see {self.o.data_dir / 'logs'} for why")
            time.sleep(1.0)

    def leaderboard(self, client: Client, study_id: int) -> None:
        best = client.best(study_id, k=5)
        study = client.study(study_id)
        self.say()
        self.say(
            f"Leaderboard (validation accuracy; test accuracy from the final "
            f"evaluation). infeasible rate {study.infeasible_rate or 0:.0%}"
        )
        self.say(f"{'#':>4}  {'val':>6}  {'test':>6}  architecture")
        for t in best:
            test = "-" if t.test_value is None else f"{t.test_value:.4f}"
            self.say(f"{t.number:>4}  {t.value or 0:.4f}  {test:>6}  {t.arch_summary}")
        assert self.coordinator is not None
        self.say()
        self.say(f"database   {self.db_path}")
        self.say(f"dashboard  {self.coordinator.base_url}/studies/{study_id}")
        self.say(f"API        {self.coordinator.base_url}/docs")

    # -- tear down --------------------------------------------------------------------
    def stop_workers(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)  # releases its trial, then exits
        deadline = time.monotonic() + 15
        for w in self.workers:
            try:
                w.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()

    def close(self) -> None:
        self.stop_workers()
        if self.coordinator is not None:
            stop_coordinator(self.coordinator)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN: nothing to extrapolate yet
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def run_demo(options: DemoOptions) -> int:
    """Run the demo; returns an exit status (0 finished, 130 interrupted, 1 failed)."""
    demo = Demo(options)
    interrupted = False

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        client, study_id = demo.start()
        demo.watch(client, study_id)
        demo.leaderboard(client, study_id)
        demo.stop_workers()
        if options.serve:
            demo.say("serving the dashboard; Ctrl-C to stop")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        interrupted = True
        demo.say("\ninterrupted: stopping workers and coordinator")
        return 130
    except Exception as exc:
        demo.say(f"\ndemo failed: {exc}")
        return 1
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            demo.close()
        signal.signal(signal.SIGTERM, previous)
        if interrupted:
            demo.say(
                f"database {demo.db_path} is intact: archsearch serve can open it "
                f"(ARCHSEARCH_DATABASE_URL={demo.url})"
            )


def default_data_dir() -> Path:
    return Path.home() / ".archsearch" / "demo"


def reset_data_dir(path: Path) -> None:
    """Remove a previous demo's directory (only one that looks like ours)."""
    if path.exists() and (path / "archsearch.db").exists():
        shutil.rmtree(path)
