"""A real worker daemon (CPU) in a thread of the test, against a live coordinator."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workers.daemon import WorkerConfig, WorkerDaemon


def worker_config(base_url: str, token: str, data_dir: Path, **options: Any) -> WorkerConfig:
    """A CPU worker's configuration; ``options``: the other fields (``poll_seconds`` 0.1
    and ``idle_exit_seconds`` 2.0 unless given)."""
    options.setdefault("poll_seconds", 0.1)
    options.setdefault("idle_exit_seconds", 2.0)
    return WorkerConfig(
        coordinator=base_url, token=token, data_dir=data_dir, device="cpu", **options
    )


@contextmanager
def worker_thread(
    base_url: str, token: str, data_dir: Path, *, join_timeout: float = 60, **options: Any
) -> Iterator[WorkerDaemon]:
    """Run a :class:`WorkerDaemon` of :func:`worker_config` in a daemon thread for the
    ``with`` block; leaving it, the daemon is told to stop and joined (``join_timeout``)."""
    daemon = WorkerDaemon(worker_config(base_url, token, data_dir, **options))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop_event.set()
        thread.join(timeout=join_timeout)
