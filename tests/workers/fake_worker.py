"""A worker daemon with a stand-in evaluation (no model, no data), for protocol tests.

Run as ``python -m tests.workers.fake_worker --coordinator URL --token T --data-dir D
[--sleep S]``: every trial "takes" S seconds (calling tick() like a real evaluation) and
scores ``number / 100``. The daemon, the HTTP client, the spool and the signals are real.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.daemon import WorkerConfig, WorkerDaemon


@dataclass(frozen=True)
class FakeData:
    fingerprint: str = "f" * 64


@dataclass(frozen=True)
class FakeResult:
    value: float
    metrics: dict[str, Any]


def fake_evaluate(seconds: float):  # type: ignore[no-untyped-def]
    def evaluate(
        protocol: str,
        arch: Any,
        data: Any,
        *,
        final: bool = False,
        tick: Any = None,
        report: Any = None,
        **_: Any,
    ) -> FakeResult:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if tick is not None:
                tick()
            time.sleep(0.02)
        value = arch.layers[0].fbcorr.n_filters / 1000 + (0.5 if final else 0.0)
        if report is not None:
            report(1, value)
        return FakeResult(value, {"images_per_s": 1000.0, "final": final})

    return evaluate


def fake_load(fingerprint: str = "f" * 64):  # type: ignore[no-untyped-def]
    def load(uri: str, **_: Any) -> FakeData:
        return FakeData(fingerprint)

    return load


def spawn(
    base_url: str,
    token: str,
    data_dir: Path,
    sleep: float,
    idle_exit: float | None = None,
    output: bool = True,
    batch: int | None = None,
) -> subprocess.Popen:
    """Start this module as a worker process (from the repository root); ``batch`` is
    the daemon's ``--batch`` (default: the daemon's)."""
    cmd = [
        sys.executable,
        "-m",
        "tests.workers.fake_worker",
        "--coordinator",
        base_url,
        "--token",
        token,
        "--data-dir",
        str(data_dir),
        "--sleep",
        str(sleep),
    ]
    if idle_exit is not None:
        cmd += ["--idle-exit", str(idle_exit)]
    if batch is not None:
        cmd += ["--batch", str(batch)]
    pipe = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(
        cmd,
        stdout=pipe,
        stderr=subprocess.STDOUT if output else pipe,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--idle-exit", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    batch = {} if args.batch is None else {"batch": args.batch}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    daemon = WorkerDaemon(
        WorkerConfig(
            coordinator=args.coordinator,
            token=args.token,
            data_dir=Path(args.data_dir),
            device="cpu",
            idle_exit_seconds=args.idle_exit,
            poll_seconds=0.2,
            **batch,
        ),
        evaluate=fake_evaluate(args.sleep),
        load_data=fake_load(),
    )
    daemon.install_signal_handlers()
    print(f"done {daemon.run()}", flush=True)


if __name__ == "__main__":
    main()
