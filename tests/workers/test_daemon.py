"""The worker daemon against a real coordinator over HTTP: spool, signals, kill -9,
coordinator outage, data fingerprints. The evaluation is a stand-in (see fake_worker);
tests/workers/test_end_to_end.py runs real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from client import Client
from protocol import TrialOut
from protocol.wire import CompleteIn, FailIn, ReportsIn
from search_space import Architecture, InfeasibleArchitecture
from service.models import Role
from tests.helpers.archs import one_layer_space
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, make_token, migrate
from tests.helpers.waiting import wait_for
from tests.workers.fake_worker import FakeData, FakeResult, fake_evaluate, fake_load, spawn
from workers import daemon as daemon_module
from workers.daemon import WorkerConfig, WorkerDaemon
from workers.outcomes import Stopped
from workers.spool import Spool, SpoolEntry


@pytest.fixture
def coordinator(sqlite_url):
    migrate(sqlite_url)
    live = start_coordinator(
        sqlite_url,
        admin_token=ADMIN_TOKEN,
        env={"ARCHSEARCH_LEASE_SECONDS": "3", "ARCHSEARCH_REAPER_INTERVAL_SECONDS": "0.5"},
    )
    yield live, sqlite_url, make_token(sqlite_url, Role.WORKER)
    stop_coordinator(live)


def daemon_for(base_url: str, token: str, tmp_path: Path, **kw) -> WorkerDaemon:
    evaluate = kw.pop("evaluate", fake_evaluate(0.0))
    load = kw.pop("load_data", fake_load())
    kw.setdefault("idle_exit_seconds", 1.0)
    config = WorkerConfig(
        coordinator=base_url,
        token=token,
        data_dir=tmp_path / "w",
        device="cpu",
        poll_seconds=0.1,
        **kw,
    )
    return WorkerDaemon(config, evaluate=evaluate, load_data=load)


def test_spool_roundtrip_and_corrupt_files(tmp_path):
    spool = Spool(tmp_path)
    a = SpoolEntry(1, 7, "complete", 0.5, {"x": 1})
    b = SpoolEntry(2, 7, "error", None, {}, "boom")
    spool.put(a)
    time.sleep(0.01)
    spool.put(b)
    (tmp_path / "trial-3-worker-7.json").write_text("{not json")
    assert spool.pending() == [a, b]
    assert (tmp_path / "trial-3-worker-7.corrupt").exists()
    spool.ack(a)
    assert spool.pending() == [b]
    assert Spool(tmp_path).pending() == [b]  # durable across instances


def test_daemon_runs_study_and_final_evaluation(coordinator, tmp_path):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="d", max_trials=5, max_parallel=2, top_k=2, **FG11_STUDY).id
        daemon = daemon_for(live.base_url, token, tmp_path)
        done = daemon.run()
        study = admin.study(sid)
        trials = list(admin.trials(sid))
    assert study.state == "finished"
    search = [t for t in trials if t.source != "final"]
    finals = [t for t in trials if t.source == "final"]
    n_complete = sum(1 for t in search if t.state == "COMPLETE")
    assert len(search) == 5 and len(finals) == min(2, n_complete)
    assert done == n_complete + len(finals)
    # The fingerprint travels in its own report field; the study keeps the first one.
    assert study.dataset_fingerprint == "f" * 64
    assert all("dataset_fingerprint" not in t.metrics for t in search)
    best = sorted((t for t in search if t.state == "COMPLETE"), key=lambda t: -t.value)
    for t in best[:2]:
        assert t.test_value == pytest.approx(t.value + 0.5)
    assert daemon.spool.pending() == []


def test_infeasible_and_crash_are_reported_with_reasons(coordinator, tmp_path):
    live, _, token = coordinator
    calls = {"n": 0}

    def evaluate(protocol, arch, data, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise InfeasibleArchitecture("out of memory at batch size 1 on cuda:0")
        if calls["n"] == 2:
            raise RuntimeError("something broke deep inside")
        return FakeResult(0.3, {})

    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="d", max_trials=3, max_parallel=1, top_k=0, **FG11_STUDY).id
        daemon_for(live.base_url, token, tmp_path, evaluate=evaluate).run()
        trials = {t.number: t for t in admin.trials(sid)}
    states = sorted(t.state for t in trials.values())
    assert states.count("COMPLETE") >= 1
    infeasible = [t for t in trials.values() if t.reason and "out of memory" in t.reason]
    assert infeasible and infeasible[0].state == "INFEASIBLE"
    failed = [t for t in trials.values() if t.state == "FAILED"]
    assert failed and "RuntimeError: something broke deep inside" in failed[0].reason
    assert "Traceback" in failed[0].reason or "line" in failed[0].reason


def _running(admin: Client, sid: int) -> TrialOut | None:
    return next((t for t in admin.trials(sid) if t.state == "RUNNING"), None)


def test_sigterm_releases_the_trial_at_once(coordinator, tmp_path):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="d", max_trials=1, max_parallel=1, top_k=0, **FG11_STUDY).id
        proc = spawn(live.base_url, token, tmp_path / "w", sleep=60)
        running = wait_for(lambda: _running(admin, sid), what="the worker to claim")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert time.monotonic() - t0 < 10
        trial = admin.trial(sid, running.number)
    assert trial.state == "WAITING" and trial.worker_id is None
    # Released at once (no lease to wait out); the release counts as an attempt, so a
    # trial that every worker gives back ends FAILED instead of circling for ever.
    assert trial.attempt == 2
    assert "released" in out


@pytest.mark.slow
def test_kill_9_mid_trial_another_worker_finishes_it_once(coordinator, tmp_path):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="d", max_trials=1, max_parallel=1, top_k=0, **FG11_STUDY).id
        victim = spawn(live.base_url, token, tmp_path / "a", sleep=60)
        running = wait_for(lambda: _running(admin, sid), what="the worker to claim")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        # The lease is 3 s; the reaper returns the trial and a second worker finishes it.
        daemon = daemon_for(live.base_url, token, tmp_path, idle_exit_seconds=10.0)
        thread = threading.Thread(target=daemon.run)
        thread.start()
        wait_for(
            lambda: admin.study(sid).state == "finished", timeout=60, what="the study to finish"
        )
        daemon.stop_event.set()
        thread.join(timeout=30)
        trial = admin.trial(sid, running.number)
        trials = list(admin.trials(sid))
    assert trial.state == "COMPLETE" and trial.attempt == 2
    assert trial.worker_id == daemon.worker_id
    assert len(trials) == 1 and daemon.done == 1


@pytest.mark.slow
def test_spool_delivers_a_result_finished_while_the_coordinator_was_down(sqlite_url, tmp_path):
    # A long lease: the outage must not cost the trial its lease (that case is a 409
    # and another worker's job, tested above).
    url = sqlite_url
    migrate(url)
    token = make_token(url, Role.WORKER)
    lease = {"ARCHSEARCH_LEASE_SECONDS": "60"}
    live = start_coordinator(url, admin_token=ADMIN_TOKEN, env=lease)
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="d", max_trials=1, max_parallel=1, top_k=0, **FG11_STUDY).id
    gate = threading.Event()
    finished = threading.Event()

    def evaluate(protocol, arch, data, **kw):
        gate.wait(60)  # returns once the coordinator is down
        finished.set()
        return FakeResult(0.42, {})

    daemon = daemon_for(live.base_url, token, tmp_path, evaluate=evaluate, idle_exit_seconds=5.0)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        running = wait_for(lambda: _running(admin, sid), what="the claim")
    stop_coordinator(live)
    gate.set()
    finished.wait(30)
    wait_for(lambda: daemon.spool.pending(), what="the result to be spooled")
    time.sleep(1.0)  # the daemon retries against a dead coordinator meanwhile
    assert daemon.spool.pending(), "the result was dropped while the coordinator was down"
    restarted = start_coordinator(url, admin_token=ADMIN_TOKEN, port=live.port, env=lease)
    try:
        with Client(restarted.base_url, ADMIN_TOKEN) as admin:
            wait_for(
                lambda: admin.trial(sid, running.number).state == "COMPLETE",
                timeout=60,
                what="the spooled result to arrive",
            )
            trial = admin.trial(sid, running.number)
        thread.join(timeout=30)
    finally:
        stop_coordinator(restarted)
    assert trial.value == 0.42 and trial.attempt == 1
    assert daemon.spool.pending() == []


def test_worker_with_different_data_gives_the_trial_back(coordinator, tmp_path):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="d", max_trials=3, max_parallel=1, top_k=0, **FG11_STUDY).id
        # The first worker's data define the study's fingerprint.
        daemon_for(live.base_url, token, tmp_path / "a", max_trials=1).run()
        assert (
            admin.study(sid).counts.get("COMPLETE", 0)
            + admin.study(sid).counts.get("INFEASIBLE", 0)
            >= 1
        )
        other = daemon_for(live.base_url, token, tmp_path / "b", load_data=fake_load("0" * 64))
        assert other.run() == 0
        trials = list(admin.trials(sid))
    assert not any(t.state == "RUNNING" for t in trials)
    assert other._excluded == {sid}


def test_a_trial_past_its_timeout_fails_with_a_timeout_reason(coordinator, tmp_path):
    """A real FG11 model on real digits cannot be screened in 1 s on a CPU: the
    evaluator's deadline check stops it, and the report says it was a timeout."""
    from workers.datasets import DatasetCache
    from workers.evaluators import evaluate

    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        study = dict(
            FG11_STUDY, evaluator_options={"max_features": 10_000_000, "trial_timeout_seconds": 1}
        )
        sid = admin.create_study(name="slow", max_trials=1, max_parallel=1, top_k=0, **study).id
        daemon = daemon_for(
            live.base_url, token, tmp_path, evaluate=evaluate, load_data=DatasetCache().get
        )
        started = time.monotonic()
        daemon.run()
        took = time.monotonic() - started
        (trial,) = list(admin.trials(sid))
    assert trial.state == "FAILED"
    assert trial.reason == "timed out after 1 s (trial_timeout_seconds)"
    # Loading digits and building the model come first; the deadline is then honoured
    # at the next batch, not at the end of the evaluation.
    assert took < 30, f"the daemon took {took:.1f} s"


# -- reports the coordinator keeps refusing -----------------------------------------------
def _fake_coordinator(report_status: int):
    """An httpx transport standing in for a coordinator that answers every report with
    ``report_status``; records the report bodies and the claims."""
    seen: dict[str, list] = {"reports": [], "claims": []}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/workers":
            now = "2026-01-01T00:00:00+00:00"
            body = {"id": 7, "name": "w", "host": None, "device": "cpu"}
            return httpx.Response(201, json=body | {"registered_at": now, "last_seen_at": now})
        if path.endswith("/claim"):
            seen["claims"].append(path)
            return httpx.Response(204)
        if path.endswith(("/complete", "/fail")):
            seen["reports"].append(json.loads(request.content))
            error = {"code": "internal", "message": "boom", "field": None}
            return httpx.Response(report_status, json={"error": error})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    return httpx.MockTransport(handle), seen


def _offline_daemon(tmp_path: Path, transport: httpx.MockTransport) -> WorkerDaemon:
    config = WorkerConfig(
        coordinator="http://coordinator.test",
        token="t",
        data_dir=tmp_path / "w",
        device="cpu",
        poll_seconds=0.01,
        idle_exit_seconds=0.0,
    )
    client = Client(config.coordinator, "t", transport=transport)
    return WorkerDaemon(config, client=client, evaluate=fake_evaluate(0), load_data=fake_load())


@pytest.mark.parametrize("status", [500, 418])
def test_a_report_refused_again_and_again_is_set_aside_and_the_worker_claims(
    tmp_path, monkeypatch, status
):
    monkeypatch.setattr(daemon_module.Backoff, "wait", lambda self, stop: stop.wait(0.01))
    transport, seen = _fake_coordinator(status)
    stuck = SpoolEntry(3, 7, "complete", 0.5, {"x": 1.0})
    daemon = _offline_daemon(tmp_path, transport)
    daemon.spool.put(stuck)
    # Two tries in a first life of the worker; the count is kept on disk.
    assert daemon.deliver_spool() == 0
    assert daemon.deliver_spool() == 0
    assert [e.attempts for e in daemon.spool.pending()] == [2]
    # A restarted worker goes on counting, sets the report aside and claims again.
    daemon = _offline_daemon(tmp_path, transport)
    assert daemon.run() == 0
    assert len(seen["reports"]) == daemon_module.MAX_DELIVERY_ATTEMPTS
    assert daemon.spool.pending() == []
    (rejected,) = daemon.spool.rejected()
    assert json.loads(rejected.read_text())["trial_id"] == 3
    reason = rejected.with_suffix(".reason.txt").read_text()
    assert f"refused {daemon_module.MAX_DELIVERY_ATTEMPTS} times" in reason
    assert str(status) in reason
    assert seen["claims"], "the worker never claimed after setting the report aside"


@pytest.mark.parametrize("status", [503, 502, 429])
def test_an_unavailable_coordinator_is_never_counted(tmp_path, status):
    transport, seen = _fake_coordinator(status)
    daemon = _offline_daemon(tmp_path, transport)
    daemon.spool.put(SpoolEntry(3, 7, "complete", 0.5, {}))
    for _ in range(daemon_module.MAX_DELIVERY_ATTEMPTS + 2):
        assert daemon.deliver_spool() == 0
    assert [e.attempts for e in daemon.spool.pending()] == [0]
    assert daemon.spool.rejected() == []
    assert len(seen["reports"]) == daemon_module.MAX_DELIVERY_ATTEMPTS + 2


def test_reports_are_sanitised_before_they_are_sent(tmp_path):
    transport, seen = _fake_coordinator(422)  # a final answer: each is sent once
    daemon = _offline_daemon(tmp_path, transport)
    daemon.spool.put(
        SpoolEntry(
            3,
            7,
            "complete",
            0.5,
            {"loss\x00": float("nan"), "ok": 1.0, "n": {"inf": float("inf"), "s": "a\x00b"}},
            None,
            "f" * 64,
        )
    )
    daemon.spool.put(SpoolEntry(4, 7, "error", None, {}, "crash\x00 in C"))
    daemon.spool.put(SpoolEntry(5, 7, "complete", float("nan"), {}))
    daemon.deliver_spool()
    complete, fail, nan_score = seen["reports"]
    CompleteIn.model_validate(complete)
    assert complete["metrics"] == {"ok": 1.0, "n": {"s": "ab"}}
    FailIn.model_validate(fail)
    assert fail["reason"] == "crash\\x00 in C"
    FailIn.model_validate(nan_score)
    assert nan_score["kind"] == "error" and "non-finite score" in nan_score["reason"]


# -- SIGTERM while the main thread is busy -------------------------------------------------
def _spawn_cli_worker(base_url: str, token: str, data_dir: Path) -> subprocess.Popen:
    cli = Path(sys.executable).with_name("archsearch")
    cmd = [str(cli), "worker", "--coordinator", base_url, "--token", token]
    cmd += ["--device", "cpu", "--data-dir", str(data_dir)]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _sigterm_and_time_release(admin: Client, sid: int, number: int, proc) -> tuple[float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: admin.trial(sid, number).state != "RUNNING", timeout=60, what="the release")
    released = time.monotonic() - t0
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return released, out


@pytest.mark.slow
def test_sigterm_during_a_real_evaluation_releases_within_seconds(coordinator, tmp_path):
    """A real FG11 screen on builtin:digits (minutes on a CPU), SIGTERM mid-evaluation."""
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        study = dict(
            FG11_STUDY,
            evaluator_options={"max_features": 10_000_000, "trial_timeout_seconds": 3600},
        )
        sid = admin.create_study(name="slow", max_trials=1, max_parallel=1, top_k=0, **study).id
        proc = _spawn_cli_worker(live.base_url, token, tmp_path / "w")
        running = wait_for(lambda: _running(admin, sid), timeout=60, what="the claim")
        time.sleep(4)  # data loaded, model built: inside the feature extraction
        released, out = _sigterm_and_time_release(admin, sid, running.number, proc)
        trial = admin.trial(sid, running.number)
    assert trial.state == "WAITING" and trial.attempt == 2, out
    assert released < 6, f"released {released:.1f} s after SIGTERM\n{out}"


_BUSY_WORKER = """
import hashlib, logging, sys
from pathlib import Path
from tests.workers.fake_worker import FakeResult, fake_load
from workers.daemon import WorkerConfig, WorkerDaemon

def evaluate(protocol, arch, data, *, tick=None, **kw):
    tick()
    print("busy", flush=True)
    # One long C call that runs no Python bytecode (like a big torch op): ~10 s.
    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 40_000_000)
    return FakeResult(0.5, {})

logging.basicConfig(level=logging.INFO)
url, token, data_dir = sys.argv[1:4]
config = WorkerConfig(coordinator=url, token=token, data_dir=Path(data_dir), device="cpu")
daemon = WorkerDaemon(config, evaluate=evaluate, load_data=fake_load())
if len(sys.argv) > 4:  # the handler alone (no watcher thread), for comparison
    daemon._watch_signals = lambda fd: None
daemon.install_signal_handlers()
print("done", daemon.run(), flush=True)
"""


@pytest.mark.slow
def test_sigterm_during_a_long_c_call_releases_at_once(coordinator, tmp_path):
    """The Python handler waits for the C call to return; the watcher thread does not."""
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="d", max_trials=1, max_parallel=1, top_k=0, **FG11_STUDY).id
        cmd = [sys.executable, "-c", _BUSY_WORKER, live.base_url, token, str(tmp_path / "w")]
        root = Path(__file__).resolve().parents[2]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("busy"):
                break
        running = _running(admin, sid)
        assert running is not None
        time.sleep(0.5)
        released, out = _sigterm_and_time_release(admin, sid, running.number, proc)
        trial = admin.trial(sid, running.number)
    assert trial.state == "WAITING" and trial.attempt == 2, out
    assert released < 6, f"released {released:.1f} s after SIGTERM\n{out}"


# -- batches -------------------------------------------------------------------------------
class CountingClient(Client):
    """A real client that counts the requests of each kind it makes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        self.report_batches: list[int] = []

    def claim_many(self, *args, **kwargs):
        self.calls["claim_many"] += 1
        return super().claim_many(*args, **kwargs)

    def report_many(self, worker_id, reports):
        self.calls["report_many"] += 1
        self.report_batches.append(len(reports))
        return super().report_many(worker_id, reports)

    def heartbeat_many(self, *args, **kwargs):
        self.calls["heartbeat_many"] += 1
        return super().heartbeat_many(*args, **kwargs)

    def complete(self, *args, **kwargs):
        self.calls["complete"] += 1
        return super().complete(*args, **kwargs)

    def fail(self, *args, **kwargs):
        self.calls["fail"] += 1
        return super().fail(*args, **kwargs)

    def release(self, *args, **kwargs):
        self.calls["release"] += 1
        return super().release(*args, **kwargs)


def test_batch_sizer_grows_for_fast_trials_and_stays_at_one_for_slow_ones():
    sizer = daemon_module.BatchSizer(16)
    assert sizer.next() == 1 and sizer.keep() is None  # nothing known yet
    sizer.record(0.1)
    assert [sizer.next() for _ in range(6)] == [2, 4, 8, 16, 16, 16]  # doubling, capped
    slow = daemon_module.BatchSizer(16)
    slow.record(daemon_module.FAST_TRIAL_SECONDS + 0.5)
    assert slow.next() == 1
    paced = daemon_module.BatchSizer(64)
    paced.record(1.0)  # 1 s trials: about BATCH_TARGET_SECONDS of them, after doubling
    assert [paced.next() for _ in range(4)] == [2, 4, 4, 4]
    assert paced.keep() == int(daemon_module.IDLE_LEASE_SECONDS)
    assert daemon_module.BatchSizer(1).next() == 1
    with pytest.raises(ValueError, match="--batch"):
        WorkerConfig(coordinator="http://x", token=None, data_dir=Path("."), batch=65)


@pytest.mark.slow
def test_daemon_with_batches_finishes_a_study_end_to_end(coordinator, tmp_path):
    """Fast trials over real HTTP: the daemon claims growing batches, heart-beats them in
    one request, reports each batch in one request, and finishes the study (finals too)
    with every trial run once."""
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="fast", max_trials=40, max_parallel=40, top_k=2, **FG11_STUDY
        ).id
        client = CountingClient(live.base_url, token, timeout=60)
        config = WorkerConfig(
            coordinator=live.base_url,
            token=token,
            data_dir=tmp_path / "w",
            device="cpu",
            poll_seconds=0.1,
            idle_exit_seconds=2.0,
            batch=8,
        )
        daemon = WorkerDaemon(
            config, client=client, evaluate=fake_evaluate(0.05), load_data=fake_load()
        )
        done = daemon.run()
        study = admin.study(sid)
        trials = list(admin.trials(sid))
    assert study.state == "finished", study.counts
    assert not any(t.state in ("RUNNING", "WAITING") for t in trials)
    assert all(t.attempt == 1 for t in trials), "a lease was lost or a trial given back"
    ran = [t for t in trials if t.state == "COMPLETE"]
    assert done == len(ran) and len([t for t in ran if t.source == "final"]) == 2
    sizes = [n for n, _ in daemon.claims]
    assert sizes[0] == 1 and max(sizes) == 8, sizes  # one first, then batches
    assert client.calls["complete"] == client.calls["fail"] == 0  # batch reports only
    assert client.calls["report_many"] < done / 2 and max(client.report_batches) > 1
    assert sum(client.report_batches) == done
    assert daemon.spool.pending() == []


_BATCH_THEN_SLOW = """
import logging, sys, time
from pathlib import Path
from tests.workers.fake_worker import FakeResult, fake_load
from workers.daemon import WorkerConfig, WorkerDaemon

calls = 0

def evaluate(protocol, arch, data, *, tick=None, **kw):
    global calls
    calls += 1
    if calls <= 7:  # seven fast trials make the batches grow: 1, 2, 4, then 8
        time.sleep(0.05)
        return FakeResult(0.5, {})
    print("busy", flush=True)
    while True:  # the first trial of the batch of 8 never ends by itself
        tick()
        time.sleep(0.05)

logging.basicConfig(level=logging.INFO)
url, token, data_dir = sys.argv[1:4]
config = WorkerConfig(coordinator=url, token=token, data_dir=Path(data_dir), device="cpu",
                      batch=8)
daemon = WorkerDaemon(config, evaluate=evaluate, load_data=fake_load())
daemon.install_signal_handlers()
print("done", daemon.run(), flush=True)
"""


@pytest.mark.slow
def test_sigterm_gives_back_the_running_trial_and_the_rest_of_its_batch(coordinator, tmp_path):
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="b", max_trials=24, max_parallel=24, top_k=0, **FG11_STUDY).id
        wait_for(
            lambda: (c := admin.study(sid).counts).get("WAITING", 0) + c.get("INFEASIBLE", 0) == 24,
            what="the queue to fill",
        )
        cmd = [sys.executable, "-c", _BATCH_THEN_SLOW, live.base_url, token, str(tmp_path / "w")]
        root = Path(__file__).resolve().parents[2]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("busy"):
                break
        held = [t for t in admin.trials(sid) if t.state == "RUNNING"]
        assert len(held) >= 2, "a batch: the slow trial and unstarted ones"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_for(
            lambda: not any(t.state == "RUNNING" for t in admin.trials(sid)),
            timeout=30,
            what="every held trial to be given back",
        )
        released = time.monotonic() - t0
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        after = {t.id: t for t in admin.trials(sid)}
    assert released < 6, f"given back {released:.1f} s after SIGTERM\n{out}"
    back = [after[t.id] for t in held]
    assert all(t.state == "WAITING" and t.worker_id is None for t in back), out
    # The trial under evaluation used up an attempt; the unstarted ones did not.
    assert sorted(t.attempt for t in back) == [1] * (len(back) - 1) + [2], out
    assert sum(1 for t in back if t.reason == "given back unstarted by its worker") == len(back) - 1
    assert sum(1 for t in after.values() if t.state == "COMPLETE") == 7, out


def test_a_stopped_study_gets_its_unstarted_trials_back(coordinator, tmp_path):
    """The study is stopped while a batch is being worked on: the trial running sees
    ``stop`` within a heartbeat and is released, the batch's unstarted trials are given
    back, none is left to expire."""
    live, _, token = coordinator
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(name="s", max_trials=30, max_parallel=30, top_k=0, **FG11_STUDY).id
        wait_for(
            lambda: (c := admin.study(sid).counts).get("WAITING", 0) + c.get("INFEASIBLE", 0) == 30,
            what="the queue to fill",
        )
        calls = {"n": 0}

        def evaluate(protocol, arch, data, *, tick=None, **kw):
            calls["n"] += 1
            if calls["n"] == 8:  # the first trial of the batch of 8
                admin.set_study_state(sid, "stopped")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if tick() == "stop":  # as the evaluators' control does
                        raise Stopped("stopped during the evaluation")
                    time.sleep(0.05)
                raise AssertionError("the heartbeat never said stop")
            time.sleep(0.05)
            return FakeResult(0.5, {})

        daemon = daemon_for(live.base_url, token, tmp_path, evaluate=evaluate, batch=8)
        daemon.run()
        trials = list(admin.trials(sid))
    assert calls["n"] == 8, "no trial of the stopped study was started after the stop"
    assert not any(t.state == "RUNNING" for t in trials)
    given_back = [t for t in trials if t.reason == "given back unstarted by its worker"]
    assert len(given_back) >= 1 and all(t.attempt == 1 for t in given_back)
    assert sum(1 for t in trials if t.attempt == 2) == 1  # the one that was running


def _batch_coordinator(report_status: int, item_status: list[int] | None = None):
    """An httpx transport standing in for a coordinator with the batch routes: it answers
    claims with nothing, batch reports with ``report_status`` (200: ``item_status`` per
    item), single reports with 500; records every report body."""
    seen: dict[str, list] = {"batches": [], "singles": []}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/workers":
            now = "2026-01-01T00:00:00+00:00"
            body = {"id": 7, "name": "w", "host": None, "device": "cpu"}
            return httpx.Response(201, json=body | {"registered_at": now, "last_seen_at": now})
        if path.endswith("/claims"):
            return httpx.Response(200, json={"claims": []})
        if path.endswith("/reports"):
            items = json.loads(request.content)["reports"]
            seen["batches"].append(items)
            if report_status != 200:
                error = {"code": "x", "message": "refused", "field": None}
                return httpx.Response(report_status, json={"error": error})
            statuses = item_status or [200] * len(items)
            results = [
                {
                    "trial_id": item["trial_id"],
                    "status": status,
                    "trial": None,
                    "error": None if status == 200 else {"code": "conflict", "message": "lost"},
                }
                for item, status in zip(items, statuses, strict=True)
            ]
            return httpx.Response(200, json={"results": results})
        if path.endswith(("/complete", "/fail")):
            seen["singles"].append(json.loads(request.content))
            error = {"code": "internal", "message": "boom", "field": None}
            return httpx.Response(500, json={"error": error})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    return httpx.MockTransport(handle), seen


def _spooled_daemon(tmp_path: Path, transport: httpx.MockTransport) -> WorkerDaemon:
    daemon = _offline_daemon(tmp_path, transport)
    daemon.register()
    assert daemon._claim(1) == []  # the coordinator has the batch routes
    for i in range(3):
        daemon.spool.put(SpoolEntry(10 + i, 7, "complete", 0.5, {"i": float(i)}, None, "f" * 64))
    daemon.spool.put(SpoolEntry(13, 7, "error", float("nan"), {"x": float("inf")}, "crash\x00"))
    return daemon


def test_spooled_results_go_in_one_batch_and_each_answer_counts_alone(tmp_path):
    transport, seen = _batch_coordinator(200, [200, 409, 200, 404])
    daemon = _spooled_daemon(tmp_path, transport)
    assert daemon.deliver_spool() == 4
    (batch,) = seen["batches"]
    ReportsIn.model_validate({"reports": batch})  # what the coordinator accepts
    assert [r["trial_id"] for r in batch] == [10, 11, 12, 13]
    assert batch[3]["reason"] == "crash\\x00" and batch[3]["value"] is None
    # 200 is stored, 409 / 404 are final refusals: nothing is left to send.
    assert daemon.spool.pending() == [] and seen["singles"] == []


def test_a_batch_refused_as_a_whole_is_sent_one_report_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon_module.Backoff, "wait", lambda self, stop: stop.wait(0.01))
    transport, seen = _batch_coordinator(500)
    daemon = _spooled_daemon(tmp_path, transport)
    assert daemon.deliver_spool() == 0
    # One by one, the first single report (500) is counted like any refusal.
    assert len(seen["batches"]) == 1 and len(seen["singles"]) == 1
    assert [e.attempts for e in daemon.spool.pending()] == [1, 0, 0, 0]


@pytest.mark.parametrize("status", [503, 502, 429])
def test_a_batch_answered_unavailable_is_kept_and_never_counted(tmp_path, status):
    transport, seen = _batch_coordinator(status)
    daemon = _spooled_daemon(tmp_path, transport)
    for _ in range(3):
        assert daemon.deliver_spool() == 0
    assert len(seen["batches"]) == 3 and seen["singles"] == []
    assert [e.attempts for e in daemon.spool.pending()] == [0, 0, 0, 0]


def test_next_studys_data_load_while_the_current_trial_runs(coordinator, tmp_path):
    # A batch [study A, study B]: B's dataset is loaded by the prefetch thread while A's
    # trial is being evaluated, so B's trial finds it loaded (one load of each).
    live, _, token = coordinator
    events: list[tuple[str, str, float, float]] = []
    loaded: dict[str, FakeData] = {}
    lock = threading.Lock()

    def load(uri: str, **_: object) -> FakeData:
        with lock:  # a cache, as DatasetCache: one load per dataset
            if uri in loaded:
                return loaded[uri]
            start = time.monotonic()
            time.sleep(0.6)
            events.append(("load", uri, start, time.monotonic()))
            loaded[uri] = FakeData()
            return loaded[uri]

    def evaluate(protocol, arch, data, **kw):
        start = time.monotonic()
        time.sleep(1.0)
        events.append(("evaluate", threading.current_thread().name, start, time.monotonic()))
        return FakeResult(0.5, {})

    with Client(live.base_url, ADMIN_TOKEN) as admin:
        body = {**FG11_STUDY, "max_trials": 1, "max_parallel": 1, "top_k": 0}
        a = admin.create_study(name="a", **{**body, "dataset": "builtin:digits"}).id
        b = admin.create_study(name="b", **{**body, "dataset": "builtin:mnist5k"}).id
        daemon = daemon_for(live.base_url, token, tmp_path, evaluate=evaluate, load_data=load)
        wid = daemon.register()
        claimed = daemon.client.claim_many(wid, 2, None, [])
        assert sorted(c.study.id for c in claimed) == [a, b]
        claimed.sort(key=lambda c: c.study.id != a)  # A first, then B
        daemon._run_batch(claimed)
        daemon.deliver_spool()
        assert [t.state for t in admin.trials(b)] == ["COMPLETE"]
    loads = {uri: (s, e) for kind, uri, s, e in events if kind == "load"}
    evals = [(s, e) for kind, _, s, e in events if kind == "evaluate"]
    assert set(loads) == {"builtin:digits", "builtin:mnist5k"}
    (_, a_end), (second_start, _) = sorted(evals)
    b_start, b_end = loads["builtin:mnist5k"]
    # B's load began once A's data were there and ran beside A's evaluation, so B's
    # trial started right after A's instead of 0.6 s later.
    assert loads["builtin:digits"][1] <= b_start < a_end and b_end <= second_start, (loads, evals)
    assert second_start - a_end < 0.3, (loads, evals)


# Up to 32 filters of 3x3 or 5x5 on 16 px digits.
SMALL_SPACE = one_layer_space(
    "small",
    16,
    {"type": "choice", "options": list(range(4, 33, 2))},
    {"type": "choice", "options": [3, 5]},
)


def test_group_screening_in_the_daemon_equals_one_by_one(coordinator, tmp_path):
    # --group 4 on the CPU (a GPU worker groups by default): the batch's screen trials
    # of the study run together through workers.screen_group, each scored as it would
    # be alone, each reported as its own trial.
    from workers.datasets import DatasetCache, load_dataset
    from workers.evaluators import evaluate as evaluate_alone

    live, _, token = coordinator
    options = {"max_per_class": {"train": 40, "test": 10}}
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="group", dataset="builtin:digits", space=SMALL_SPACE, algorithm="random",
            max_trials=12, max_parallel=12, top_k=0, evaluator_options=options,
        ).id  # fmt: skip
        daemon = daemon_for(
            live.base_url, token, tmp_path, evaluate=evaluate_alone,
            load_data=DatasetCache().get, group=4, batch=8,
        )  # fmt: skip
        daemon.run()
        trials = [t for t in admin.trials(sid) if t.state == "COMPLETE"]
    grouped = [t for t in trials if t.metrics.get("group_size", 1) > 1]
    assert len(trials) == 12 and grouped, [t.metrics.get("group_size") for t in trials]
    ds = load_dataset("builtin:digits", color="gray", max_per_class=options["max_per_class"])
    for t in grouped[:3]:
        alone = evaluate_alone("screen", Architecture.from_dict(t.arch), ds, seed=0)  # study seed
        assert t.value == pytest.approx(alone.value, abs=1e-9), (t.metrics, alone.metrics)
        assert t.metrics["peak_rss_mb"] > 0 and t.metrics["threads"] >= 1


# -- blends (issue 17): the trial of source blend runs alone through workers.blend ----------
def test_a_blend_trial_runs_alone_on_real_data_and_reports_its_test_score(coordinator, tmp_path):
    # Real evaluations, the real blend, finals screened in groups of 4: the blend (queued
    # after the finals) must not join a group, and its value / test score must be what
    # workers.blend computes for the study's best two, in that order.
    from workers.blend import blend
    from workers.datasets import DatasetCache, load_dataset
    from workers.evaluators import evaluate

    live, _, token = coordinator
    options = {"max_per_class": {"train": 30, "test": 10}}
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="blend", dataset="builtin:digits", space=SMALL_SPACE, algorithm="random",
            max_trials=4, max_parallel=4, top_k=2, blend_k=2, evaluator_options=options,
        ).id  # fmt: skip
        daemon = daemon_for(
            live.base_url, token, tmp_path, evaluate=evaluate, load_data=DatasetCache().get,
            group=4, batch=8,
        )  # fmt: skip
        daemon.run()
        study = admin.study(sid)
        trials = list(admin.trials(sid))
    blends = [t for t in trials if t.source == "blend"]
    assert study.state == "finished" and len(blends) == 1, [(t.source, t.state) for t in trials]
    b = blends[0]
    assert b.state == "COMPLETE", b.reason
    by_id = {t.id: t for t in trials}
    members = [Architecture.from_dict(by_id[i].arch) for i in b.params["members"]]
    assert [by_id[i].value for i in b.params["members"]] == sorted(
        (t.value for t in trials if t.source != "final" and t.source != "blend"), reverse=True
    )[:2]
    ds = load_dataset("builtin:digits", color="gray", max_per_class=options["max_per_class"])
    expected = blend("screen", members, ds, seed=study.seed)
    assert b.value == pytest.approx(expected.value, abs=1e-12)
    assert b.test_value == pytest.approx(expected.test_value, abs=1e-12)
    assert b.metrics["member_values"] == pytest.approx(
        [by_id[i].value for i in b.params["members"]], abs=1e-12
    )  # each member alone scores what its own trial scored
    assert b.metrics["weights"] == [0.5, 0.5] and "group_size" not in b.metrics


def test_a_blend_over_memory_is_reported_infeasible_with_the_reason(coordinator, tmp_path):
    live, _, token = coordinator
    seen: list[tuple[str, int, str]] = []

    def blend(protocol, members, data, *, weights, **_):
        seen.append((protocol, len(members), weights))
        raise InfeasibleArchitecture("needs about 9000 MiB of memory for the blend of 2")

    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="b", max_trials=3, max_parallel=1, top_k=1, blend_k=2,
            blend_weights="validation", **FG11_STUDY,
        ).id  # fmt: skip
        config = WorkerConfig(
            coordinator=live.base_url, token=token, data_dir=tmp_path / "w", device="cpu",
            poll_seconds=0.1, idle_exit_seconds=1.0,
        )  # fmt: skip
        WorkerDaemon(config, evaluate=fake_evaluate(0.0), load_data=fake_load(), blend=blend).run()
        trials = [t for t in admin.trials(sid) if t.source == "blend"]
    assert seen == [("screen", 2, "validation")]
    assert len(trials) == 1 and trials[0].state == "INFEASIBLE"
    assert "needs about 9000 MiB" in (trials[0].reason or "")
