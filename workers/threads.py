"""How many CPU threads a worker's torch uses: its share of the node.

Several workers on one node that each take every core oversubscribe it: each torch
thread pool assumes the cores are its own. A worker therefore takes, in this order:

1. ``--threads N`` (``ARCHSEARCH_WORKER_THREADS``): what the user asked for;
2. ``ARCHSEARCH_LOCAL_WORKERS=K``, set by the launchers that start K workers on one node
   together (``archsearch demo``; a user's own script may set it too): the node's cores
   divided by K (at least 1);
3. ``SLURM_CPUS_PER_TASK``: the CPUs Slurm gave this task;
4. otherwise every core this process may use.

"Cores" are the CPUs of this process's affinity mask, capped by a cgroup CPU quota
(Kubernetes CPU limits, ``docker --cpus``), so a container limited to 2 CPUs on a 64-core
host takes 2, not 64.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

LOCAL_WORKERS_ENV = "ARCHSEARCH_LOCAL_WORKERS"
THREADS_ENV = "ARCHSEARCH_WORKER_THREADS"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str  # for the worker's start-up log line


def _positive(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def choose_threads(
    requested: int | None, env: Mapping[str, str] | None = None, cores: int | None = None
) -> ThreadChoice:
    """The worker's thread count by the rules of the module docstring.

    ``requested`` is ``--threads`` (``None``: not given). Raises ``ValueError`` for a
    requested count under 1 or a malformed ``ARCHSEARCH_LOCAL_WORKERS`` /
    ``SLURM_CPUS_PER_TASK`` (named in the message).
    """
    env = os.environ if env is None else env
    cores = available_cores() if cores is None else cores
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        return ThreadChoice(requested, "--threads")
    local = _positive(env, LOCAL_WORKERS_ENV)
    if local is not None:
        share = max(1, cores // local)
        return ThreadChoice(share, f"{cores} cores shared by {local} local workers")
    slurm = _positive(env, "SLURM_CPUS_PER_TASK")
    if slurm is not None:
        return ThreadChoice(slurm, "SLURM_CPUS_PER_TASK")
    return ThreadChoice(cores, f"all {cores} cores")


def apply_threads(threads: int) -> None:
    """Make this process's torch (and any child it starts) use ``threads`` CPU threads.

    Call once, early, from the worker's main thread. Inter-op parallelism is set to one
    thread (the evaluators run one op at a time) where torch still allows changing it.
    """
    torch.set_num_threads(threads)
    # Fixed once parallel work has run in this process: then it stays as it is.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
