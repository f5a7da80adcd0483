"""`archsearch slurm submit` / `status` against a real single-node Slurm cluster
(slurmctld + slurmd on this host, deploy/slurm/), a real coordinator on a loopback port
and real `archsearch worker` processes run by Slurm as array tasks; and the refusals
(unknown study, workers < 1, sbatch missing or refusing) that submit nothing.

The Slurm tests are skipped only where the cluster cannot start (see conftest.py);
CI sets ARCHSEARCH_REQUIRE_SLURM=1 and fails them there instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import typer

from archsearch.cli import app
from archsearch.slurm import (
    JobRecord,
    SubmitOptions,
    TaskRow,
    UsageError,
    check,
    status_lines,
    time_limit_seconds,
)
from client import Client
from protocol.wire import TrialOut
from tests.cluster.conftest import LEASE_SECONDS, ROOT, Slurm, System
from tests.helpers.coordinator import ADMIN_TOKEN
from tests.helpers.waiting import wait_finished, wait_for

# One small layer at 32 px: a trial screens in well under a second.
TINY_SPACE = {
    "name": "tiny",
    "description": "one small layer at 32 px (tests)",
    "input_size": 32,
    "preprocess": "minmax",
    "lnorm0": {"size": 3, "remove_mean": False, "stretch": 1, "threshold": 1},
    "layers": [
        {
            "n_filters": {"type": "choice", "options": [16, 32]},
            "filter_size": 3,
            "min_out": 0,
            "max_out": "inf",
            "pool_size": 3,
            "pool_order": {"type": "choice", "options": [1, 2, 10]},
            "pool_stride": 2,
            "norm_size": 3,
            "norm_remove_mean": False,
            "norm_stretch": {"type": "choice", "options": [0.1, 1, 10]},
            "norm_threshold": 1,
        }
    ],
}
# The same at 40 px with 5x5 filters, on all of builtin:digits: 2-4 s a trial on an idle
# core (more on a busy one), long enough to cancel a task in the middle of one.
SLOW_SPACE = {
    **TINY_SPACE,
    "name": "slow",
    "input_size": 40,
    "layers": [
        {
            **TINY_SPACE["layers"][0],
            "n_filters": {"type": "choice", "options": [32, 48]},
            "filter_size": 5,
        }
    ],
}


def archsearch(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archsearch", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submitted_job(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    m = re.search(r"^submitted job (\d+):", result.stdout, flags=re.M)
    assert m, result.stdout
    return m.group(1)


def trial_by_id(admin: Client, sid: int, trial_id: int) -> TrialOut:
    return next(t for t in admin.trials(sid) if t.id == trial_id)


def wait_trial(
    admin: Client, sid: int, trial_id: int, test: Callable[[TrialOut], bool], what: str
) -> TrialOut:
    """The trial once ``test`` holds for it (polled every 50 ms, for at most a lease)."""
    return wait_for(
        lambda: t if test(t := trial_by_id(admin, sid, trial_id)) else None,
        timeout=LEASE_SECONDS,
        what=what,
        step=0.05,
    )


def task_states(slurm: Slurm, job: str) -> dict[int, str]:
    out = slurm.run("squeue", "--jobs", job, "--array", "--states=all", "--noheader",
                    "--format=%i %T").stdout  # fmt: skip
    states = {}
    for line in out.split("\n"):
        ident, _, state = line.strip().partition(" ")
        if "_" in ident and ident.split("_")[1].isdigit():
            states[int(ident.split("_")[1])] = state
    return states


def worker_processes(job: str) -> dict[int, int]:
    """pid of each task's worker (by its --name on the command line), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            m = re.fullmatch(rb"slurm-" + job.encode() + rb"_(\d+)", arg)
            if m and b"worker" in argv:
                found[int(m.group(1))] = int(entry.name)
    return found


def all_command_lines() -> str:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, UnicodeDecodeError):
                continue
    return "\n".join(lines)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def submit_env(slurm: Slurm, system: System) -> dict[str, str]:
    # The admin token and database URL are in the submitter's environment on purpose:
    # submit must keep both out of the jobs.
    return {
        **slurm.env,
        "ARCHSEARCH_TOKEN": system.worker_token,
        "ARCHSEARCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "ARCHSEARCH_DATABASE_URL": system.url,
    }


def scancel(slurm: Slurm, job: str | None) -> None:
    """Cancel the array and wait for its tasks to end (their workers give their trials
    back to the coordinator before the module's coordinator stops)."""
    if job is None:
        return
    slurm.run("scancel", job)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if not {"RUNNING", "COMPLETING"} & set(task_states(slurm, job).values()):
            return
        time.sleep(0.2)


# -- the real cluster ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_study_runs_to_the_end_on_a_two_task_array(slurm: Slurm, system: System, tmp_path):
    data_dir = tmp_path / "data"
    job = None
    with Client(system.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="slurm run",
            dataset="builtin:digits",
            space=TINY_SPACE,
            algorithm="random",
            max_trials=8,
            max_parallel=2,
            top_k=1,
            evaluator_options={"max_per_class": {"train": 60, "test": 20}},
        ).id
        try:
            started = time.monotonic()
            result = archsearch(
                "slurm", "submit", "--study", str(sid), "--workers", "2",
                "--cpus-per-task", "1", "--time", "10", "--idle-exit", "4",
                "--device", "cpu", "--coordinator", system.base_url,
                "--data-dir", str(data_dir),
                env=submit_env(slurm, system),
            )  # fmt: skip
            job = submitted_job(result)
            record = JobRecord.load(data_dir, job)
            assert record is not None and record.study_id == sid and record.workers == 2
            script = Path(record.script).read_text()
            assert "#SBATCH --array=0-1" in script and "#SBATCH --time=10" in script
            assert system.worker_token not in script

            # The workers: one process per task, the token in their environment only.
            pids = wait_for(
                lambda: p if len(p := worker_processes(job)) == 2 else None,
                timeout=60,
                what="both tasks' worker processes",
            )
            for pid in pids.values():
                env = environ_of(pid)
                assert env["ARCHSEARCH_TOKEN"] == system.worker_token
                assert "ARCHSEARCH_ADMIN_TOKEN" not in env
                assert "ARCHSEARCH_DATABASE_URL" not in env
            assert system.worker_token not in all_command_lines()

            study = wait_finished(admin, sid, timeout=150)
            took = time.monotonic() - started
            assert study.search_done == 8 and study.finals_done == study.finals == 1
            names = {w.id: w.name for w in admin.workers()}
            ours = {wid for wid, name in names.items() if name.startswith(f"slurm-{job}_")}
            assert sorted(names[w] for w in ours) == [f"slurm-{job}_0", f"slurm-{job}_1"]
            ran = {t.worker_id for t in admin.trials(sid) if t.worker_id is not None}
            assert ran and ran <= ours
            # Idle workers exit (--idle-exit): the tasks end by themselves.
            wait_for(
                lambda: task_states(slurm, job) == {0: "COMPLETED", 1: "COMPLETED"},
                timeout=60,
                what="both tasks to complete",
            )
        finally:
            scancel(slurm, job)
    # Each task's output file is its worker's log.
    for task in (0, 1):
        log = (Path(record.logs) / f"{job}_{task}.log").read_text()
        assert f"archsearch slurm task {job}_{task}" in log
        assert "registered as worker" in log and f"(slurm-{job}_{task})" in log
        assert "trial(s) finished" in log
    # status: the tasks beside the workers the coordinator saw.
    shown = archsearch(
        "slurm", "status", job, "--data-dir", str(data_dir),
        env={**slurm.env, "ARCHSEARCH_TOKEN": system.reader_token},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"2 worker task(s) for study {sid}" in shown.stdout
    for task in (0, 1):
        row = next(line for line in shown.stdout.splitlines() if line.startswith(f"{job}_{task} "))
        wid = next(w for w, n in names.items() if n == f"slurm-{job}_{task}")
        assert row.split()[1] == "COMPLETED" and f"#{wid}" in row.split()
    print(f"study of 8 trials + 1 final on a 2-task array: {took:.1f} s from submit to finished")


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_scancel_of_a_task_hands_its_trial_to_the_other_worker(
    slurm: Slurm, system: System, tmp_path
):
    data_dir = tmp_path / "data"
    job = None
    with Client(system.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="slurm scancel",
            dataset="builtin:digits",
            space=SLOW_SPACE,
            algorithm="random",
            max_trials=8,
            max_parallel=2,
            top_k=0,
        ).id
        try:
            job = submitted_job(
                archsearch(
                    "slurm", "submit", "--study", str(sid), "--workers", "2",
                    "--cpus-per-task", "1", "--idle-exit", "60", "--device", "cpu",
                    "--coordinator", system.base_url, "--data-dir", str(data_dir),
                    env=submit_env(slurm, system),
                )
            )  # fmt: skip

            def running_by_task() -> dict[int, tuple[int, int]] | None:
                """task -> (worker id, trial id) once both tasks' workers run a trial."""
                names = {w.id: w.name for w in admin.workers()}
                out = {}
                for t in admin.trials(sid):
                    name = names.get(t.worker_id or -1, "")
                    if t.state == "RUNNING" and name.startswith(f"slurm-{job}_"):
                        out[int(name.rsplit("_", 1)[1])] = (t.worker_id, t.id)
                return out if len(out) == 2 else None

            # In the middle of a trial: the victim's has been running for a second.
            for _ in range(20):
                running = wait_for(running_by_task, timeout=90, what="both workers in a trial")
                victim_worker, trial_id = running[0]
                time.sleep(1.0)
                if (running_by_task() or {}).get(0) == (victim_worker, trial_id):
                    break
            other_worker = running[1][0]
            cancelled = time.monotonic()
            assert slurm.run("scancel", f"{job}_0").returncode == 0

            trial = wait_trial(
                admin, sid, trial_id, lambda t: t.worker_id != victim_worker,
                "the cancelled task's worker to give its trial back",
            )  # fmt: skip
            released = time.monotonic() - cancelled
            assert trial.attempt == 2, "released by its worker (one attempt used)"
            assert "lease expired" not in (trial.reason or "")
            trial = wait_trial(
                admin, sid, trial_id, lambda t: t.worker_id == other_worker,
                "the other worker to take the trial",
            )  # fmt: skip
            handover = time.monotonic() - cancelled
            assert handover < LEASE_SECONDS
            done = wait_for(
                lambda: (t := trial_by_id(admin, sid, trial_id)).state == "COMPLETE" and t,
                timeout=60,
                what="the handed-over trial to complete",
            )
            assert done.worker_id == other_worker and done.value is not None
            assert task_states(slurm, job)[0] == "CANCELLED"
            # status while the other task still runs.
            shown = archsearch(
                "slurm", "status", job, "--data-dir", str(data_dir),
                env={**slurm.env, "ARCHSEARCH_TOKEN": system.reader_token},
            )  # fmt: skip
            assert shown.returncode == 0, shown.stderr
            rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[3:]}
            assert rows[f"{job}_0"][1] == "CANCELLED" and f"#{victim_worker}" in rows[f"{job}_0"]
            assert rows[f"{job}_1"][1] == "RUNNING" and f"#{other_worker}" in rows[f"{job}_1"]
            admin.set_study_state(sid, "stopped")
        finally:
            scancel(slurm, job)
    log = next((data_dir / "slurm").rglob(f"logs/{job}_0.log")).read_text()
    assert "CANCELLED" in log and "releasing the running trial" in log
    print(
        f"scancel -> trial {trial_id} given back after {released:.1f} s, running on the "
        f"other worker after {handover:.1f} s (lease {LEASE_SECONDS:g} s)"
    )


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_requeued_task_gives_its_trial_back_and_returns_as_a_new_worker(
    slurm: Slurm, system: System, tmp_path
):
    """Preemption with requeue, as `scontrol requeue` does it: SIGTERM, then the task
    waits to run again (Slurm's begin-time delay, lifted here so the test need not wait)."""
    data_dir = tmp_path / "data"
    job = None
    with Client(system.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="slurm requeue",
            dataset="builtin:digits",
            space=SLOW_SPACE,
            algorithm="random",
            max_trials=8,
            max_parallel=2,
            top_k=0,
        ).id
        try:
            job = submitted_job(
                archsearch(
                    "slurm", "submit", "--study", str(sid), "--workers", "1",
                    "--idle-exit", "60", "--device", "cpu",
                    "--coordinator", system.base_url, "--data-dir", str(data_dir),
                    env=submit_env(slurm, system),
                )
            )  # fmt: skip
            name = f"slurm-{job}_0"

            def running() -> tuple[int, int] | None:
                ids = {w.id for w in admin.workers() if w.name == name}
                return next(
                    ((t.worker_id, t.id) for t in admin.trials(sid)
                     if t.state == "RUNNING" and t.worker_id in ids),
                    None,
                )  # fmt: skip

            first_worker, trial_id = wait_for(running, timeout=90, what="a trial to run")
            assert slurm.run("scontrol", "requeue", f"{job}_0").returncode == 0
            trial = wait_trial(
                admin, sid, trial_id, lambda t: t.worker_id != first_worker,
                "the requeued task's worker to give its trial back",
            )  # fmt: skip
            assert trial.attempt == 2 and trial.state in ("WAITING", "RUNNING")
            wait_for(
                lambda: task_states(slurm, job).get(0) == "PENDING",
                timeout=30,
                what="the task to wait for its requeue",
            )
            slurm.run("scontrol", "update", f"JobId={job}_0", "StartTime=now")
            # It comes back as a new worker of the same name and takes the trial up again.
            again = wait_for(
                lambda: r if (r := running()) and r[0] != first_worker else None,
                timeout=90,
                what="the task's new worker to run a trial",
            )
            workers = [w.id for w in admin.workers() if w.name == name]
            assert workers == [first_worker, again[0]]
            shown = archsearch(
                "slurm", "status", job, "--data-dir", str(data_dir),
                env={**slurm.env, "ARCHSEARCH_TOKEN": system.reader_token},
            )  # fmt: skip
            row = next(line for line in shown.stdout.splitlines() if line.startswith(f"{job}_0 "))
            assert row.split()[1] == "RUNNING" and f"#{again[0]} (+1)" in row
            admin.set_study_state(sid, "stopped")
        finally:
            scancel(slurm, job)
    log = next((data_dir / "slurm").rglob(f"logs/{job}_0.log")).read_text()
    assert f"archsearch slurm task {job}_0 on" in log and "restart 1," in log
    assert "DUE TO JOB REQUEUE" in log and "releasing the running trial" in log
    assert log.count("registered as worker") == 2


@pytest.mark.e2e
def test_sbatch_refusing_the_job_is_a_clear_error(slurm: Slurm, system: System, tmp_path):
    """No GPU is configured on the test cluster: sbatch refuses --gres gpu:1."""
    before = slurm.run("squeue", "--noheader", "--states=all", "--format=%i").stdout.split()
    with Client(system.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="gres", dataset="builtin:digits", space=TINY_SPACE, max_trials=2, top_k=0
        ).id
    result = archsearch(
        "slurm", "submit", "--study", str(sid), "--workers", "1", "--gres", "gpu:1",
        "--coordinator", system.base_url, "--data-dir", str(tmp_path),
        env=submit_env(slurm, system),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: sbatch refused the job: ")
    assert "gres" in result.stderr.lower() and len(result.stderr.splitlines()) == 1
    after = slurm.run("squeue", "--noheader", "--states=all", "--format=%i").stdout.split()
    assert after == before
    assert not list(tmp_path.rglob("jobs/*.json"))


# -- refusals that never reach Slurm --------------------------------------------------------
@pytest.fixture
def fake_sbatch(tmp_path) -> tuple[dict[str, str], Path]:
    """A PATH whose sbatch only records that it was called (and prints a job id)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho 4242\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return env, calls


def test_an_unknown_study_is_refused_and_nothing_is_submitted(
    system: System, fake_sbatch, tmp_path
):
    env, calls = fake_sbatch
    result = archsearch(
        "slurm", "submit", "--study", "999", "--workers", "2",
        "--coordinator", system.base_url, "--data-dir", str(tmp_path / "data"),
        env={**env, "ARCHSEARCH_TOKEN": system.worker_token},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == f"error: study 999 does not exist at {system.base_url}\n"
    assert not calls.exists() and not (tmp_path / "data").exists()


def test_fewer_than_one_worker_is_bad_usage(system: System, fake_sbatch, tmp_path):
    env, calls = fake_sbatch
    for workers in ("0", "-3"):
        result = archsearch(
            "slurm", "submit", "--study", "1", "--workers", workers,
            "--coordinator", system.base_url, "--data-dir", str(tmp_path / "data"),
            env={**env, "ARCHSEARCH_TOKEN": system.worker_token},
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr == f"error: --workers must be at least 1, got {workers}\n"
    assert not calls.exists() and not (tmp_path / "data").exists()


def test_sbatch_missing_from_path_is_a_clear_error(system: System, tmp_path):
    with Client(system.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="no sbatch", dataset="builtin:digits", space=TINY_SPACE, max_trials=2, top_k=0
        ).id
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = archsearch(
        "slurm", "submit", "--study", str(sid), "--workers", "2",
        "--coordinator", system.base_url, "--data-dir", str(tmp_path / "data"),
        env={**os.environ, "PATH": str(empty), "ARCHSEARCH_TOKEN": system.worker_token},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: sbatch not found on PATH: run this on a Slurm login")
    assert not (tmp_path / "data").exists()


def test_a_missing_token_is_refused_before_sbatch(system: System, fake_sbatch, tmp_path):
    env, calls = fake_sbatch
    env = {k: v for k, v in env.items() if k != "ARCHSEARCH_TOKEN"}
    result = archsearch(
        "slurm", "submit", "--study", "1", "--workers", "1",
        "--coordinator", system.base_url, "--data-dir", str(tmp_path / "data"), env=env,
    )  # fmt: skip
    assert result.returncode == 1 and "ARCHSEARCH_TOKEN is not set" in result.stderr
    assert not calls.exists()


def test_a_finished_study_is_refused(system: System, fake_sbatch, tmp_path):
    env, calls = fake_sbatch
    with Client(system.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="over", dataset="builtin:digits", space=TINY_SPACE, max_trials=2, top_k=0
        ).id
        admin.set_study_state(sid, "stopped")
    result = archsearch(
        "slurm", "submit", "--study", str(sid), "--workers", "1",
        "--coordinator", system.base_url, "--data-dir", str(tmp_path / "data"),
        env={**env, "ARCHSEARCH_TOKEN": system.worker_token},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == f"error: study {sid} is stopped: there is no work for workers\n"
    assert not calls.exists()


# -- the script -----------------------------------------------------------------------------
def worker_options() -> set[str]:
    command = typer.main.get_command(app).commands["worker"]  # type: ignore[attr-defined]
    return {opt for p in command.params for opt in p.opts}


def test_dry_run_prints_the_script_and_touches_nothing(tmp_path):
    """No sbatch, no coordinator, no token needed; nothing written."""
    env = {**os.environ, "PATH": "/usr/bin:/bin", "ARCHSEARCH_TOKEN": "t0ken-never-printed"}
    result = archsearch(
        "slurm", "submit", "--study", "3", "--workers", "4", "--gres", "gpu:1",
        "--partition", "gpu", "--time", "1-00:00", "--account", "lab",
        "--cpus-per-task", "8", "--signal-seconds", "300",
        "--coordinator", "http://coord.example:8000", "--data-dir", str(tmp_path / "d"),
        "--dry-run",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("#!/bin/bash\n")
    directives = re.findall(r"^#SBATCH (\S+)$", script, flags=re.M)
    root = re.search(r"^#SBATCH --chdir=(\S+)$", script, flags=re.M).group(1)
    assert root.startswith(f"{tmp_path / 'd'}/slurm/study-3/")
    assert directives == [
        "--job-name=archsearch-study-3",
        "--array=0-3",
        "--ntasks=1",
        "--cpus-per-task=8",
        "--gres=gpu:1",
        "--partition=gpu",
        "--account=lab",
        "--time=1-00:00",
        "--requeue",
        "--signal=B:TERM@300",
        f"--chdir={root}",
        f"--output={root}/logs/%A_%a.log",
        "--open-mode=append",
        "--export=ALL",
    ]
    assert "export ARCHSEARCH_COORDINATOR=http://coord.example:8000\n" in script
    assert f"exec {sys.executable} -m archsearch worker \\\n" in script
    assert "t0ken" not in script and "--token" not in script
    # Every option the script gives the worker is an option of `archsearch worker`.
    tail = script[script.index("-m archsearch worker") :]
    used = set(re.findall(r"(--[a-z-]+)", tail))
    assert used == {"--studies", "--device", "--idle-exit", "--name", "--data-dir"}
    assert used <= worker_options()
    assert "--studies 3 \\" in tail and '--name "slurm-${task}"' in tail
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    assert not (tmp_path / "d").exists()


def test_the_time_limit_must_outlast_the_warning_signal(tmp_path):
    result = archsearch(
        "slurm", "submit", "--study", "3", "--workers", "1", "--time", "2",
        "--dry-run", "--data-dir", str(tmp_path),
        env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "error: --time 2 (120 s) must be longer than --signal-seconds 120: the worker is "
        "warned that long before its time limit\n"
    )
    bad = archsearch(
        "slurm", "submit", "--study", "3", "--workers", "1", "--time", "soon", "--dry-run",
        env=dict(os.environ),
    )  # fmt: skip
    assert bad.returncode == 2 and "--time 'soon': use minutes, MM:SS" in bad.stderr


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("4:00:00", 14400),
        ("2-12", 216000),
        ("1-02:03", 93780),
        ("1-02:03:04", 93784),
        ("UNLIMITED", None),
    ],
)
def test_slurm_time_formats(value, seconds):
    assert time_limit_seconds(value) == seconds


def test_options_that_would_break_the_script_are_refused():
    base = {"study_id": 1, "workers": 1, "coordinator": "http://h:8000"}
    with pytest.raises(UsageError, match="--partition"):
        check(SubmitOptions(**base, partition="gpu\n#SBATCH --x"))
    with pytest.raises(UsageError, match="--coordinator"):
        check(SubmitOptions(**{**base, "coordinator": "h:8000; rm -rf /"}))
    with pytest.raises(UsageError, match="--device must be auto, cpu, cuda or cuda:N"):
        check(SubmitOptions(**base, device="gpu"))
    with pytest.raises(UsageError, match="--idle-exit"):
        check(SubmitOptions(**base, idle_exit=0))
    check(SubmitOptions(**base, gres="gpu:a100:2", partition="gpu,long", device="cuda:1"))


def test_status_lines_match_tasks_to_workers_by_name():
    record = JobRecord("77", 5, 3, "http://h:8000", "/s/workers.sbatch", "/s/logs", "now")
    tasks = [
        TaskRow(0, "RUNNING", "1:02", "node1", "None"),
        TaskRow(2, "PENDING", "0:00", "", "Resources"),
    ]
    workers = [
        {"id": 4, "name": "slurm-77_0", "alive": False, "current": None, "trials_done": 2,
         "seconds_since_seen": 300.0},
        {"id": 9, "name": "slurm-77_0", "alive": True, "trials_done": 1,
         "current": {"trial_id": 30, "study_id": 5, "number": 12, "started_at": None},
         "seconds_since_seen": 1.4},
        {"id": 5, "name": "slurm-77_1", "alive": False, "current": None, "trials_done": 3,
         "seconds_since_seen": 80.0},
        {"id": 6, "name": "slurm-770_1", "alive": True, "current": None, "trials_done": 0,
         "seconds_since_seen": 1.0},
    ]  # fmt: skip
    lines = status_lines("77", tasks, workers, record)
    assert lines[0] == "job 77: 3 worker task(s) for study 5 at http://h:8000"
    assert lines[-1].startswith("GONE: squeue no longer lists the task")
    rows = [line.split() for line in lines[3:-1]]
    assert rows[0][:2] == ["77_0", "RUNNING"] and rows[0][4:9] == ["#9", "(+1)", "yes", "#12", "1"]
    assert rows[1][:2] == ["77_1", "GONE"] and rows[1][4:6] == ["#5", "no"]
    assert rows[2][:4] == ["77_2", "PENDING", "0:00", "(Resources)"] and rows[2][4] == "-"
    assert len(rows) == 3  # slurm-770_1 belongs to another job
