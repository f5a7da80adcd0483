"""Start and stop ``archsearch serve`` as a child process on a loopback port.

Used by the integration tests, the benchmarks and the demo: one place that knows how to
wait for a coordinator to answer and how to take it down without leaving orphans.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM the child when its parent dies, so a
    killed demo leaves no orphans (Linux ``prctl(PR_SET_PDEATHSIG)``; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveCoordinator:
    base_url: str
    port: int
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        """What the coordinator wrote to stderr so far."""
        return self.log_path.read_text()


def start_coordinator(
    database_url: str,
    *,
    admin_token: str | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    quiet: bool = True,
    die_with_parent_process: bool = False,
    serve_args: Sequence[str] = (),
) -> LiveCoordinator:
    """Run ``python -m archsearch serve`` (plus ``serve_args``, e.g. ``["--keep-alive",
    "1"]``) and wait until ``/healthz`` answers 200.

    The schema must already be migrated. Raises ``RuntimeError`` with the child's
    stderr when it exits early, or when it does not answer within ``timeout`` seconds
    (the child is killed then).
    """
    port = port or free_port()
    child_env = {
        **os.environ,
        "ARCHSEARCH_DATABASE_URL": database_url,
        "ARCHSEARCH_LOG_LEVEL": "warning",
        **(env or {}),
    }
    if admin_token is not None:
        child_env["ARCHSEARCH_ADMIN_TOKEN"] = admin_token
    # The child's stderr goes to a file, not a pipe: a pipe nobody reads fills up and
    # blocks the coordinator on its next log line.
    log_path = Path(tempfile.mkstemp(prefix=f"archsearch-coordinator-{port}-", suffix=".log")[1])
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "archsearch", "serve", "--port", str(port), *serve_args],
            env=child_env,
            stdout=subprocess.DEVNULL if quiet else None,
            stderr=log_file,
            text=True,
            preexec_fn=die_with_parent if die_with_parent_process else None,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return LiveCoordinator(base, port, proc, log_path)
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(
                f"coordinator exited with {proc.returncode}: {log_path.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"coordinator did not answer /healthz within {timeout} s")
        time.sleep(0.1)


def stop_coordinator(live: LiveCoordinator, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds. The log file stays for reading."""
    live.process.terminate()
    try:
        live.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        live.process.kill()
        live.process.wait()
