"""Fixtures of the cluster-engine tests: a real single-node Slurm cluster and a real
coordinator on a loopback port for its jobs to talk to.

The Slurm cluster is the one deploy/slurm/start-local.sh runs on this host (`.ci/run`
starts it; the ``slurm`` fixture starts it when it is not running). Where it cannot start
(not root, slurm-wlm or munge not installed, the daemons do not come up) the tests that
need it are skipped with the reason, and the run's summary says so in yellow, unless
ARCHSEARCH_REQUIRE_SLURM=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from archsearch.launch import LiveCoordinator, start_coordinator, stop_coordinator
from service.models import Role
from tests.helpers.coordinator import ADMIN_TOKEN, make_token, migrate

ROOT = Path(__file__).resolve().parents[2]
START_LOCAL = ROOT / "deploy" / "slurm" / "start-local.sh"
SLURM_DIR = Path(os.environ.get("ARCHSEARCH_SLURM_DIR", "/var/tmp/archsearch-slurm"))
SLURM_CONF = SLURM_DIR / "slurm.conf"
# CI sets ARCHSEARCH_REQUIRE_SLURM=1: a cluster that cannot start fails the tests then.
REQUIRE_SLURM = os.environ.get("ARCHSEARCH_REQUIRE_SLURM", "") not in ("", "0", "false")
# The coordinator's lease for the jobs' workers: a cancelled task's trial must reach the
# other worker well within it (it is released at once, not left to expire).
LEASE_SECONDS = 30.0

_slurm_counts = {"ran": 0, "skipped": 0}
_slurm_reason: list[str] = []


def _start_slurm() -> str | None:
    """Start (or find running) the local cluster; ``None`` when it answers, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (apt-get install slurm-wlm munge)"
    try:
        done = subprocess.run(
            ["bash", str(START_LOCAL)], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return f"{START_LOCAL.relative_to(ROOT)} did not finish within 120 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"{START_LOCAL.relative_to(ROOT)} failed: {last}"
    return None


@dataclass(frozen=True)
class Slurm:
    """The running cluster: ``env`` is what a Slurm command needs (SLURM_CONF)."""

    conf: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def slurm_cluster() -> Slurm | str:
    """The cluster, or the reason it cannot run here (a string), once per session."""
    reason = _start_slurm()
    if reason is not None:
        _slurm_reason.append(reason)
        return reason
    return Slurm(SLURM_CONF)


@pytest.fixture
def slurm(slurm_cluster: Slurm | str) -> Slurm:
    """A running single-node Slurm cluster (skip, or fail under ARCHSEARCH_REQUIRE_SLURM)."""
    if isinstance(slurm_cluster, str):
        if REQUIRE_SLURM:
            pytest.fail(f"ARCHSEARCH_REQUIRE_SLURM=1 but Slurm cannot start: {slurm_cluster}")
        _slurm_counts["skipped"] += 1
        pytest.skip(f"Slurm test skipped: {slurm_cluster}")
    _slurm_counts["ran"] += 1
    return slurm_cluster


@dataclass(frozen=True)
class System:
    """A coordinator on a loopback port with its tokens."""

    live: LiveCoordinator
    url: str
    worker_token: str
    reader_token: str

    @property
    def base_url(self) -> str:
        return self.live.base_url


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:
    """One coordinator (SQLite) for a module's tests; lease :data:`LEASE_SECONDS`."""
    url = f"sqlite:///{tmp_path_factory.mktemp('coordinator') / 'archsearch.db'}"
    migrate(url)
    live = start_coordinator(
        url,
        admin_token=ADMIN_TOKEN,
        env={"ARCHSEARCH_LEASE_SECONDS": str(LEASE_SECONDS)},
    )
    try:
        yield System(live, url, make_token(url, Role.WORKER), make_token(url, Role.READER))
    finally:
        stop_coordinator(live)


def pytest_terminal_summary(terminalreporter) -> None:
    if not (_slurm_counts["ran"] or _slurm_counts["skipped"]):
        return
    line = f"Slurm tests: {_slurm_counts['ran']} ran on the local cluster ({SLURM_CONF})"
    if _slurm_counts["skipped"]:
        line += f"; {_slurm_counts['skipped']} SKIPPED because {_slurm_reason[0]}"
    terminalreporter.write_line(line, yellow=bool(_slurm_counts["skipped"]), bold=True)
