"""A worker's share of the node's cores (workers/threads.py), and in real worker processes:
the thread split applied, the peak memory reported per trial, and ``--max-memory``
refusing a candidate before it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from service.models import Role
from tests.helpers.coordinator import ADMIN_TOKEN, make_token, migrate
from tests.helpers.waiting import wait_finished
from workers.threads import _cgroup_quota, available_cores, choose_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("requested", "env", "cores", "expected"),
    [
        (3, {"ARCHSEARCH_LOCAL_WORKERS": "2", "SLURM_CPUS_PER_TASK": "4"}, 8, 3),
        (None, {"ARCHSEARCH_LOCAL_WORKERS": "2", "SLURM_CPUS_PER_TASK": "4"}, 8, 4),
        (None, {"ARCHSEARCH_LOCAL_WORKERS": "3"}, 8, 2),
        (None, {"ARCHSEARCH_LOCAL_WORKERS": "4"}, 2, 1),  # never 0
        (None, {"SLURM_CPUS_PER_TASK": "6"}, 8, 6),
        (None, {}, 8, 8),
        (None, {"ARCHSEARCH_LOCAL_WORKERS": " "}, 8, 8),  # blank: not set
    ],
)
def test_choose_threads_precedence(
    requested: int | None, env: dict[str, str], cores: int, expected: int
) -> None:
    assert choose_threads(requested, env, cores).threads == expected


@pytest.mark.parametrize(
    ("requested", "env", "needle"),
    [
        (0, {}, "--threads"),
        (None, {"ARCHSEARCH_LOCAL_WORKERS": "two"}, "ARCHSEARCH_LOCAL_WORKERS"),
        (None, {"ARCHSEARCH_LOCAL_WORKERS": "0"}, "ARCHSEARCH_LOCAL_WORKERS"),
        (None, {"SLURM_CPUS_PER_TASK": "-1"}, "SLURM_CPUS_PER_TASK"),
    ],
)
def test_choose_threads_names_what_is_wrong(
    requested: int | None, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        choose_threads(requested, env, 4)


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(tmp_path) is None
    assert 1 <= available_cores() <= (os.cpu_count() or 1)


def _fixed_space(n_filters: int) -> dict:
    return {
        "name": f"one-layer-{n_filters}",
        "input_size": 28,
        "layers": [
            {
                "n_filters": n_filters,
                "filter_size": 3,
                "min_out": 0,
                "max_out": "inf",
                "pool_size": 3,
                "pool_order": 2,
                "pool_stride": 1,
                "norm_size": 3,
            }
        ],
    }


@pytest.mark.e2e
@pytest.mark.slow
def test_worker_process_splits_threads_reports_peak_memory_and_obeys_max_memory(
    sqlite_url: str, tmp_path: Path
) -> None:
    # 1,500 digits of the search split (1,200 fit). 8 filters: 3,872 features, estimated
    # 119 MiB. 192 filters: 92,928 features, estimated 1,852 MiB (features 532, readout
    # copies 1,320): above what a 1200 MiB worker has left beside torch and the data.
    migrate(sqlite_url)
    live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN)
    token = make_token(sqlite_url, Role.WORKER)
    options = {"max_per_class": {"train": 150, "test": 50}}
    worker = None
    try:
        with Client(live.base_url, ADMIN_TOKEN) as admin:
            ids = {
                n: admin.create_study(
                    name=f"memory-{n}",
                    dataset="builtin:mnist5k",
                    space=_fixed_space(n),
                    algorithm="random",
                    max_trials=1,
                    max_parallel=1,
                    top_k=0,
                    evaluator_options=options,
                ).id
                for n in (8, 192)
            }
            env = {
                **os.environ,
                "ARCHSEARCH_TOKEN": token,
                "ARCHSEARCH_LOCAL_WORKERS": "2",
                "ARCHSEARCH_WORKER_MAX_MEMORY": "1200MiB",
            }
            log_file = (tmp_path / "worker.log").open("w")  # a file: a pipe could fill up
            worker = subprocess.Popen(
                [sys.executable, "-m", "archsearch", "worker", "--coordinator", live.base_url,
                 "--device", "cpu", "--data-dir", str(tmp_path / "w"), "--idle-exit", "5"],
                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            for sid in ids.values():
                wait_finished(admin, sid, timeout=240)
            small = next(iter(admin.trials(ids[8])))
            big = next(iter(admin.trials(ids[192])))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
            log_file.close()
        stop_coordinator(live)
    log = (tmp_path / "worker.log").read_text()
    expected = max(1, available_cores() // 2)
    assert f"{expected} torch thread(s) ({available_cores()} cores shared by 2" in log, log
    assert small.state == "COMPLETE", (small, log)
    m = small.metrics
    assert m["threads"] == expected, m
    assert m["peak_memory_method"] == "hwm"
    # The whole process at its peak: more than torch alone, less than the budget.
    assert 150 < m["peak_rss_mb"] < 1200, m
    assert 0 < m["memory_estimate_mb"] < 1200, m
    assert big.state == "INFEASIBLE", (big, log)
    assert "--max-memory" in (big.reason or "") and "readout" in (big.reason or ""), big.reason
    assert "peak_rss_mb" not in (big.metrics or {})  # refused before it started


def test_too_small_a_max_memory_and_sizes_that_are_not_sizes_are_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "archsearch", "worker", "--coordinator", "http://127.0.0.1:9",
         "--token", "x", "--device", "cpu", "--data-dir", str(tmp_path), "--max-memory", "50M"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out
    assert "--max-memory 50 MiB leaves no room" in out.stderr, out.stderr
    for option in ("--max-memory", "--feature-cache"):
        bad = subprocess.run(
            [sys.executable, "-m", "archsearch", "worker", "--coordinator", "http://127.0.0.1:9",
             "--token", "x", "--data-dir", str(tmp_path), option, "lots"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert bad.returncode == 2 and "'lots' is not a size" in bad.stderr, (option, bad.stderr)
