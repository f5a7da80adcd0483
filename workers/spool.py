"""The worker's spool: a finished result stays on disk until the coordinator acknowledged it.

One JSON file per result, written atomically (temp file, fsync, rename), so a worker that
is killed, or a coordinator that is down, loses nothing: the next run (or the next loop
iteration) delivers what is there. A result the coordinator keeps refusing is counted in
its file (``attempts``, so the count survives restarts) and finally set aside as
``*.rejected`` with the reason in ``*.reason.txt``, so it cannot block the worker.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class SpoolEntry:
    """A result to deliver: ``kind`` is "complete" or one of the fail kinds."""

    trial_id: int
    worker_id: int
    kind: Literal["complete", "infeasible", "error", "pruned"]
    value: float | None
    metrics: dict[str, Any]
    reason: str | None = None
    # Content hash of the data the result was computed on (older spool files lack it).
    dataset_fingerprint: str | None = None
    # Deliveries the coordinator answered with an error that counts (see the daemon).
    attempts: int = 0


class Spool:
    """A directory of pending results. Safe for one worker process at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, trial_id: int, worker_id: int) -> Path:
        return self.directory / f"trial-{trial_id}-worker-{worker_id}.json"

    def put(self, entry: SpoolEntry) -> Path:
        """Write ``entry`` durably; returns its file."""
        path = self._path(entry.trial_id, entry.worker_id)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(entry), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def pending(self) -> list[SpoolEntry]:
        """Entries not yet acknowledged, oldest first. Unreadable files are set aside
        (renamed ``*.corrupt``) rather than blocking the spool forever."""
        entries = []
        for path in sorted(self.directory.glob("trial-*.json"), key=lambda p: p.stat().st_mtime):
            try:
                entries.append(SpoolEntry(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                path.rename(path.with_suffix(".corrupt"))
        return entries

    def count_attempt(self, entry: SpoolEntry) -> SpoolEntry:
        """Record one more failed delivery of ``entry`` on disk; returns the new entry.
        The file keeps its place in the delivery order (its modification time)."""
        path = self._path(entry.trial_id, entry.worker_id)
        updated = replace(entry, attempts=entry.attempts + 1)
        try:
            times = path.stat()
        except OSError:
            times = None
        self.put(updated)
        if times is not None:
            os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
        return updated

    def reject(self, entry: SpoolEntry, reason: str) -> Path:
        """Set ``entry`` aside for good (renamed ``*.rejected``, ``reason`` written beside
        it in ``*.reason.txt``); returns the rejected file."""
        path = self._path(entry.trial_id, entry.worker_id)
        target = path.with_suffix(".rejected")
        path.with_suffix(".reason.txt").write_text(reason + "\n")
        if path.exists():
            path.rename(target)
        return target

    def rejected(self) -> list[Path]:
        """The entries set aside by :meth:`reject`."""
        return sorted(self.directory.glob("trial-*.rejected"))

    def ack(self, entry: SpoolEntry) -> None:
        """The coordinator has the result (or refused it for good): forget it."""
        self._path(entry.trial_id, entry.worker_id).unlink(missing_ok=True)
