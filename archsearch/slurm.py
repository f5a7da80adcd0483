"""``archsearch slurm``: workers as a Slurm job array (``submit``) and a look at them
beside the coordinator's view (``status``).

``submit`` writes a plain sbatch script under the data directory and hands it to sbatch:
one array task per worker, each ``exec``-ing ``archsearch worker`` so that the task's
signals reach the worker itself. Slurm sends SIGTERM when a task is cancelled or
preempted, and ``--signal-seconds`` before its time limit (``--signal=B:TERM@N``); on
SIGTERM the worker gives its running trial and unstarted batch back at once
(:mod:`workers.daemon`), so another worker takes them without waiting for the lease.
``--requeue`` lets Slurm bring a preempted task back; it registers as a new worker
under the same name, ``slurm-<array job>_<task>``, by which ``status`` matches tasks to
workers. The task's output file (``<dir>/logs/<job>_<task>.log``, appended to across
requeues) is the worker's log.

The worker token never appears in the script or on a command line (``ps`` shows those):
it travels in the job's environment. ``submit`` runs sbatch with ``--export=ALL`` and
the caller's environment less the coordinator's own secrets (ARCHSEARCH_ADMIN_TOKEN,
ARCHSEARCH_DATABASE_URL); Slurm keeps a job's environment in its state directory,
readable by root and SlurmUser only, and gives it to a requeued task again.

Called by :mod:`archsearch.cli` (``app.add_typer(slurm_app, name="slurm")``). Exit codes
as in the CLI: 1 a runtime failure (sbatch missing or refusing, the coordinator
unreachable, an unknown study), 2 bad usage; one line on stderr says which.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

slurm_app = typer.Typer(
    help="Workers as a Slurm job array: submit it, see its tasks beside the workers.",
    no_args_is_help=True,
)

# Variables only the coordinator needs: never exported into a job's environment.
COORDINATOR_SECRETS = ("ARCHSEARCH_ADMIN_TOKEN", "ARCHSEARCH_DATABASE_URL")
# Slurm accepts --signal=...@N for N up to this (a 16-bit field).
MAX_SIGNAL_SECONDS = 65535
# How long sbatch / squeue may take (a busy slurmctld answers slowly, a dead one never).
SLURM_COMMAND_TIMEOUT = 120
# Task id | state | elapsed | node | reason (why it is pending).
SQUEUE_FORMAT = "--format=%i|%T|%M|%N|%r"
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


class SlurmError(Exception):
    """A runtime failure with a one-line reason (the CLI exits 1 with it)."""


class UsageError(Exception):
    """Bad input with a one-line reason (the CLI exits 2 with it)."""


# -- the script -------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitOptions:
    """What ``archsearch slurm submit`` was asked for (validated by :func:`check`)."""

    study_id: int
    workers: int
    coordinator: str
    gres: str | None = None
    partition: str | None = None
    time_limit: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    signal_seconds: int = 120
    idle_exit: float = 300.0
    device: str = "auto"


def time_limit_seconds(value: str) -> int | None:
    """Seconds in a Slurm ``--time`` value (``minutes``, ``minutes:seconds``,
    ``hours:minutes:seconds``, ``days-hours``, ``days-hours:minutes``,
    ``days-hours:minutes:seconds``); ``None`` for ``UNLIMITED`` / ``INFINITE``.

    Raises :class:`UsageError` naming the value when it is none of these.
    """
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME_RE.match(value.strip())
    if not m:
        raise UsageError(
            f"--time {value!r}: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
        )
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = [*parts, 0, 0][:3]
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if len(parts) == 1:  # minutes
        return parts[0] * 60
    if len(parts) == 2:  # minutes:seconds
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def check(options: SubmitOptions) -> None:
    """Raise :class:`UsageError` for options no job could run with: fewer than one
    worker, a coordinator that is not an http(s) URL, a time limit not longer than the
    warning signal, values that would break the script's ``#SBATCH`` lines."""
    if options.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {options.workers}")
    if not re.match(r"^https?://[^\s'\"]+$", options.coordinator):
        raise UsageError(f"--coordinator must be an http(s):// URL, got {options.coordinator!r}")
    if not 1 <= options.signal_seconds <= MAX_SIGNAL_SECONDS:
        raise UsageError(f"--signal-seconds must be 1..{MAX_SIGNAL_SECONDS}")
    if options.time_limit is not None:
        limit = time_limit_seconds(options.time_limit)
        if limit is not None and limit <= options.signal_seconds:
            raise UsageError(
                f"--time {options.time_limit} ({limit} s) must be longer than "
                f"--signal-seconds {options.signal_seconds}: the worker is warned that long "
                "before its time limit"
            )
    for flag, value in (
        ("--gres", options.gres),
        ("--partition", options.partition),
        ("--account", options.account),
    ):
        if value is not None and not re.match(r"^[\w.:,+/=-]+$", value):
            raise UsageError(f"{flag} {value!r}: unexpected characters")
    if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", options.device):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {options.device!r}")
    if options.idle_exit <= 0:
        raise UsageError(f"--idle-exit must be more than 0 seconds, got {options.idle_exit:g}")
    if options.cpus_per_task is not None and options.cpus_per_task < 1:
        raise UsageError(f"--cpus-per-task must be at least 1, got {options.cpus_per_task}")


@dataclass(frozen=True)
class SubmissionPaths:
    """Where one submission keeps its script, its tasks' logs and the workers' spools
    (``<data dir>/slurm/study-<id>/<timestamp>/``): a directory the compute nodes must
    see at the same path, as Slurm opens the log files there."""

    root: Path

    @property
    def script(self) -> Path:
        return self.root / "workers.sbatch"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @classmethod
    def new(cls, data_dir: Path, study_id: int) -> SubmissionPaths:
        base = data_dir.expanduser().resolve() / "slurm" / f"study-{study_id}"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root, n = base / stamp, 1
        while root.exists():  # two submissions in one second
            n += 1
            root = base / f"{stamp}-{n}"
        return cls(root)


def render_script(
    options: SubmitOptions,
    paths: SubmissionPaths,
    *,
    study_name: str | None = None,
    python: str = sys.executable,
) -> str:
    """The sbatch script (pure; :func:`check` the options first). The worker runs with
    ``python`` (this installation's interpreter, by absolute path: the compute nodes
    must see it at the same path)."""
    q = shlex.quote
    sid = options.study_id
    name = re.sub(r"[^\x20-\x7e]", " ", study_name or "")[:80].strip()
    directives = [
        f"--job-name=archsearch-study-{sid}",
        f"--array=0-{options.workers - 1}",
        "--ntasks=1",
    ]
    if options.cpus_per_task is not None:
        directives.append(f"--cpus-per-task={options.cpus_per_task}")
    if options.gres:
        directives.append(f"--gres={options.gres}")
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.account:
        directives.append(f"--account={options.account}")
    if options.time_limit:
        directives.append(f"--time={options.time_limit}")
    directives += [
        "--requeue",
        f"--signal=B:TERM@{options.signal_seconds}",
        f"--chdir={paths.root}",
        f"--output={paths.logs}/%A_%a.log",
        "--open-mode=append",
        "--export=ALL",
    ]
    lines = [
        "#!/bin/bash",
        f"# archsearch workers for study {sid}{f' ({name})' if name else ''}.",
        f"# Written by `archsearch slurm submit` on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        f"# Coordinator: {options.coordinator}",
        "#",
        "# One worker per array task. A task that is cancelled (scancel) or preempted gets",
        "# SIGTERM, and so does one that nears its time limit (--signal, up to a minute",
        "# early): the worker gives its running trial and the rest of its batch back at",
        "# once, so another worker takes them, and exits. --requeue: a preempted task comes",
        "# back as a new worker of the same name. This task's output file is its worker's",
        "# log (appended to across requeues).",
        "#",
        "# The worker token is not in this file: it comes from the job's environment",
        "# (ARCHSEARCH_TOKEN, exported by sbatch). To submit this file again by hand:",
        "#   ARCHSEARCH_TOKEN=... sbatch --export=ALL " + str(paths.script),
        *(f"#SBATCH {d}" for d in directives),
        "",
        "set -euo pipefail",
        ': "${ARCHSEARCH_TOKEN:?no worker token: submit with ARCHSEARCH_TOKEN set'
        ' in the environment (sbatch --export=ALL)}"',
        f"export ARCHSEARCH_COORDINATOR={q(options.coordinator)}",
        'task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        'echo "archsearch slurm task ${task} on $(hostname),'
        ' restart ${SLURM_RESTART_COUNT:-0}, $(date -Is)"',
        "# exec: the worker is the batch step itself, so Slurm's signals reach it.",
        f"exec {q(python)} -m archsearch worker \\",
        f"    --studies {sid} \\",
        f"    --device {q(options.device)} \\",
        f"    --idle-exit {options.idle_exit:g} \\",
        '    --name "slurm-${task}" \\',
        f'    --data-dir {q(str(paths.root))}/"worker-${{SLURM_ARRAY_TASK_ID}}"',
        "",
    ]
    return "\n".join(lines)


# -- submitting -------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRecord:
    """What ``status`` needs to know about a submitted array, kept as
    ``<data dir>/slurm/jobs/<job id>.json``."""

    job_id: str
    study_id: int
    workers: int
    coordinator: str
    script: str
    logs: str
    submitted_at: str

    @staticmethod
    def path(data_dir: Path, job_id: str) -> Path:
        return data_dir.expanduser().resolve() / "slurm" / "jobs" / f"{job_id}.json"

    def save(self, data_dir: Path) -> Path:
        where = self.path(data_dir, self.job_id)
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return where

    @classmethod
    def load(cls, data_dir: Path, job_id: str) -> JobRecord | None:
        where = cls.path(data_dir, job_id)
        try:
            return cls(**json.loads(where.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def find_tool(name: str) -> str:
    """The absolute path of a Slurm command on PATH; :class:`SlurmError` when it is
    missing (this is not a Slurm login node, or Slurm's bin directory is not on PATH)."""
    found = shutil.which(name)
    if found is None:
        raise SlurmError(
            f"{name} not found on PATH: run this on a Slurm login node "
            "(or use --dry-run to print the script)"
        )
    return found


def job_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment sbatch exports into the job: the caller's, less the coordinator's
    secrets (:data:`COORDINATOR_SECRETS`)."""
    return {k: v for k, v in environ.items() if k not in COORDINATOR_SECRETS}


def sbatch(sbatch_path: str, script: Path, env: dict[str, str]) -> str:
    """Submit ``script``; returns the job id. Raises :class:`SlurmError` with sbatch's
    own words when it refuses (bad partition, gres, account, time...)."""
    # --export=ALL on the command line too: it wins over a site's SBATCH_EXPORT=NONE,
    # which would leave the workers without their token.
    try:
        done = subprocess.run(
            [sbatch_path, "--parsable", "--export=ALL", str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=SLURM_COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"sbatch did not answer within {SLURM_COMMAND_TIMEOUT} s (is slurmctld up?); "
            f"script kept at {script}"
        ) from None
    if done.returncode != 0:
        reason = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise SlurmError(f"sbatch refused the job: {reason} (script kept at {script})")
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {done.stdout.strip()!r}")
    return job_id


def _ask_coordinator(
    coordinator: str, token: str | None, call: Callable[[Any], Any], not_found: str
) -> Any:
    """``call(client)`` against the coordinator; its refusals and an unreachable
    coordinator become :class:`SlurmError` (``not_found`` is the message for a 404)."""
    import httpx

    from client import ApiError, Client

    try:
        with Client(coordinator, token, timeout=15) as c:
            return call(c)
    except ApiError as exc:
        if exc.status == 404:
            raise SlurmError(not_found) from None
        raise SlurmError(f"the coordinator at {coordinator} answered {exc}") from None
    except httpx.TransportError as exc:
        raise SlurmError(f"cannot reach the coordinator at {coordinator}: {exc}") from None


def fetch_study(coordinator: str, token: str | None, study_id: int) -> Any:
    """The study as the coordinator has it (a :class:`protocol.wire.StudyOut`).
    Raises :class:`SlurmError`: unknown study, token refused, coordinator unreachable."""
    missing = f"study {study_id} does not exist at {coordinator}"
    return _ask_coordinator(coordinator, token, lambda c: c.study(study_id), missing)


# -- status -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRow:
    """One array task as squeue shows it."""

    task: int
    state: str
    elapsed: str
    node: str
    reason: str


def squeue_tasks(job_id: str) -> list[TaskRow]:
    """The array's tasks Slurm still knows (pending, running and, for ``MinJobAge``
    seconds, ended ones). Raises :class:`SlurmError` when squeue is missing or fails
    for another reason than an id Slurm has forgotten."""
    squeue = find_tool("squeue")
    try:
        done = subprocess.run(
            [squeue, "--jobs", job_id, "--array", "--states=all", "--noheader", SQUEUE_FORMAT],
            capture_output=True,
            text=True,
            timeout=SLURM_COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(f"squeue did not answer within {SLURM_COMMAND_TIMEOUT} s") from None
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return []
        raise SlurmError(f"squeue failed: {' '.join(done.stderr.split())}")
    rows = []
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        ident, state, elapsed, node, reason = parts
        _, _, task = ident.partition("_")
        if not task.isdigit():  # the array itself, or an unexpanded range
            continue
        rows.append(TaskRow(int(task), state, elapsed, node or "-", reason))
    return sorted(rows, key=lambda r: r.task)


def fetch_workers(coordinator: str, token: str | None) -> list[dict[str, Any]]:
    """``GET /api/v1/workers/status``: every worker the coordinator knows, with
    ``alive``, ``current`` (its RUNNING trial) and ``trials_done``. Raises
    :class:`SlurmError` when the coordinator refuses or cannot be reached."""
    missing = f"{coordinator} has no workers status route (an older coordinator?)"
    answer = _ask_coordinator(coordinator, token, lambda c: c.workers_status(), missing)
    return list(answer["workers"])


def status_lines(
    job_id: str,
    tasks: list[TaskRow],
    workers: list[dict[str, Any]],
    record: JobRecord | None,
) -> list[str]:
    """The table ``status`` prints: one row per task (from squeue, plus the tasks the
    job record names that squeue no longer shows), beside the newest worker of that
    task's name (a requeued task registers again: older ones are counted)."""
    by_task: dict[int, list[dict[str, Any]]] = {}
    pattern = re.compile(rf"^slurm-{re.escape(job_id)}_(\d+)$")
    for w in workers:  # the script names each task's worker slurm-<job>_<task>
        m = pattern.match(w.get("name", ""))
        if m:
            by_task.setdefault(int(m.group(1)), []).append(w)
    known = {t.task: t for t in tasks}
    count = record.workers if record else 0
    ids = sorted(set(known) | set(by_task) | set(range(count)))
    out = []
    if record:
        out.append(
            f"job {job_id}: {record.workers} worker task(s) for study {record.study_id} "
            f"at {record.coordinator}"
        )
        out.append(f"script {record.script}; logs {record.logs}")
    else:
        out.append(f"job {job_id} (no record of it under the data directory)")
    header = ("TASK", "SLURM", "TIME", "NODE", "WORKER", "ALIVE", "TRIAL", "DONE", "SEEN")
    rows: list[tuple[str, ...]] = [header]
    for i in ids:
        t = known.get(i)
        state = t.state if t else "GONE"
        elapsed = t.elapsed if t else "-"
        node = t.node if t else "-"
        if t and t.state == "PENDING" and t.reason not in ("", "None"):
            node = f"({t.reason})"
        mine = sorted(by_task.get(i, []), key=lambda w: w["id"])
        if mine:
            w = mine[-1]
            wid = f"#{w['id']}" + (f" (+{len(mine) - 1})" if len(mine) > 1 else "")
            current = w.get("current")
            trial = f"#{current['number']}" if current else "-"
            rows.append(
                (
                    f"{job_id}_{i}",
                    state,
                    elapsed,
                    node,
                    wid,
                    "yes" if w.get("alive") else "no",
                    trial,
                    str(w.get("trials_done", 0)),
                    f"{w.get('seconds_since_seen', 0):.0f}s ago",
                )
            )
        else:
            rows.append((f"{job_id}_{i}", state, elapsed, node, "-", "-", "-", "-", "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if len(rows) == 1:
        out.append("(no tasks in Slurm and no workers of this job at the coordinator)")
    if any(r[1] == "GONE" for r in rows):
        out.append("GONE: squeue no longer lists the task (it ended over MinJobAge ago)")
    return out


# -- the commands -----------------------------------------------------------------------
def _exit(exc: SlurmError | UsageError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2 if isinstance(exc, UsageError) else 1)


def _default_data_dir() -> Path:
    from service.config import DEFAULT_DATA_DIR

    return DEFAULT_DATA_DIR


DataDirOpt = typer.Option(
    None,
    "--data-dir",
    envvar="ARCHSEARCH_DATA_DIR",
    help="Where the scripts, logs and job records go, under slurm/ (default ~/.archsearch). "
    "The compute nodes must see it at the same path.",
)
TokenOpt = typer.Option(
    None,
    "--token",
    envvar="ARCHSEARCH_TOKEN",
    help="A worker token. Give it as ARCHSEARCH_TOKEN in the environment, not as an "
    "option: the jobs get it from there.",
)


@slurm_app.command("submit")
def submit(
    study: int = typer.Option(..., "--study", help="The study the workers run."),
    workers: int = typer.Option(..., "--workers", help="Array tasks: one worker each."),
    gres: str = typer.Option(None, help="Generic resources per worker, e.g. gpu:1."),
    partition: str = typer.Option(None, help="Slurm partition."),
    time_limit: str = typer.Option(
        None, "--time", help="Time limit per task (Slurm format, e.g. 4:00:00 or 1-00:00)."
    ),
    account: str = typer.Option(None, help="Slurm account to charge."),
    cpus_per_task: int = typer.Option(
        None, help="CPUs per worker (the worker sizes its thread pools to them)."
    ),
    signal_seconds: int = typer.Option(
        120,
        help="SIGTERM the worker this long before its time limit, so it gives its trial "
        "back (Slurm may send it up to 60 s earlier).",
    ),
    idle_exit: float = typer.Option(
        300.0, help="A worker exits (its task ends) after this many seconds without work."
    ),
    device: str = typer.Option("auto", help="Worker --device: auto | cpu | cuda | cuda:N"),
    coordinator: str = typer.Option(
        "http://127.0.0.1:8000",
        "--coordinator",
        envvar="ARCHSEARCH_COORDINATOR",
        help="Coordinator base URL, as the compute nodes reach it.",
    ),
    token: str = TokenOpt,
    data_dir: Path = DataDirOpt,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the script; write and submit nothing."
    ),
) -> None:
    """Submit a job array of workers for a study (one worker per task) with sbatch.

    The script is written under <data dir>/slurm/study-<ID>/ and stays there with the
    tasks' logs. The worker token (ARCHSEARCH_TOKEN) reaches the jobs through their
    environment, never through the script or a command line.
    """
    options = SubmitOptions(
        study_id=study,
        workers=workers,
        coordinator=coordinator,
        gres=gres,
        partition=partition,
        time_limit=time_limit,
        account=account,
        cpus_per_task=cpus_per_task,
        signal_seconds=signal_seconds,
        idle_exit=idle_exit,
        device=device,
    )
    data_dir = data_dir or _default_data_dir()
    try:
        check(options)
        if dry_run:
            paths = SubmissionPaths.new(data_dir, study)
            typer.echo(render_script(options, paths), nl=False)
            return
        sbatch_path = find_tool("sbatch")
        if not token:
            raise SlurmError(
                "ARCHSEARCH_TOKEN is not set: the workers need a worker token "
                "(archsearch token create --role worker) in the environment"
            )
        found = fetch_study(coordinator, token, study)
        if found.is_over():
            raise SlurmError(f"study {study} is {found.state}: there is no work for workers")
        paths = SubmissionPaths.new(data_dir, study)
        paths.logs.mkdir(parents=True)
        paths.script.write_text(render_script(options, paths, study_name=found.name))
        env = job_environment()
        env["ARCHSEARCH_TOKEN"] = token
        env["ARCHSEARCH_COORDINATOR"] = coordinator
        job_id = sbatch(sbatch_path, paths.script, env)
    except (SlurmError, UsageError) as exc:
        raise _exit(exc) from None
    JobRecord(
        job_id=job_id,
        study_id=study,
        workers=workers,
        coordinator=coordinator,
        script=str(paths.script),
        logs=str(paths.logs),
        submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    ).save(data_dir)
    typer.echo(f"submitted job {job_id}: {workers} worker(s) for study {study}")
    typer.echo(f"script {paths.script}")
    typer.echo(f"logs   {paths.logs}/{job_id}_<task>.log")
    typer.echo(f"watch  archsearch slurm status {job_id}")


@slurm_app.command("status")
def status(
    job_id: str = typer.Argument(..., metavar="JOB_ID", help="The array's Slurm job id."),
    coordinator: str = typer.Option(
        None,
        "--coordinator",
        envvar="ARCHSEARCH_COORDINATOR",
        help="Coordinator base URL (default: the one the job was submitted for).",
    ),
    token: str = typer.Option(
        None, "--token", envvar="ARCHSEARCH_TOKEN", help="A reader (or worker) token."
    ),
    data_dir: Path = DataDirOpt,
) -> None:
    """The array's tasks beside the workers the coordinator sees.

    Tasks as squeue has them; workers matched by name (slurm-<job>_<task>): alive,
    running trial, trials done. A requeued task's earlier workers are counted (+N).
    """
    if not job_id.isdigit():
        typer.echo(f"error: JOB_ID must be a Slurm job id (digits), got {job_id!r}", err=True)
        raise typer.Exit(2)
    record = JobRecord.load(data_dir or _default_data_dir(), job_id)
    url = coordinator or (record.coordinator if record else "http://127.0.0.1:8000")
    try:
        tasks = squeue_tasks(job_id)
        workers = fetch_workers(url, token)
    except SlurmError as exc:
        raise _exit(exc) from None
    for line in status_lines(job_id, tasks, workers, record):
        typer.echo(line)
