"""The suggester fails only per study: a space that breaks it pauses that study (with the
reason in ``error``), never the process pool, never another study, never a 500.

Where the finding is about the process pool the tests run a real one
(``suggest_processes=1``, spawned processes), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest

from protocol.options import EvaluatorOptions
from search_space import get_space
from search_space.arch import InfeasibleArchitecture
from search_space.dataset_uri import CheckBudgetExceeded, DatasetURIError
from search_space.space_schema import SpaceError
from service.app import maintenance_pass
from service.errors import Unavailable
from service.suggester_process import SuggestJob
from service.suggestion_queue import SuggesterFailed, SuggestionQueue, run_suggester
from tests.helpers.coordinator import FG11_STUDY, db_trials


def overflowing_space() -> dict:
    """fg11 with one ``lognormal`` whose ``mu`` is so large that exp() overflows to inf
    on every draw: the suggester raises ``SpaceError("l1_norm_stretch", "must be
    finite, got inf")``."""
    doc = copy.deepcopy(get_space("fg11").to_dict())
    doc["name"] = "overflow"
    doc["layers"][0]["norm_stretch"] = {"type": "lognormal", "mu": 1000.0, "sigma": 1.0}
    return doc


def bad_study(api) -> dict:
    body = {**FG11_STUDY, "name": "bad", "space": overflowing_space(), "max_trials": 10}
    r = api.client.post("/api/v1/studies", json=body, headers=api.admin)
    assert r.status_code == 201, r.text
    return r.json()


def good_study(api, name: str = "good", max_parallel: int = 2) -> dict:
    body = {**FG11_STUDY, "name": name, "max_trials": 10, "max_parallel": max_parallel}
    r = api.client.post("/api/v1/studies", json=body, headers=api.admin)
    assert r.status_code == 201, r.text
    return r.json()


def waiting(api, study_id: int) -> int:
    return sum(1 for t in db_trials(api.url, study_id) if t.state == "WAITING")


def healthz(api) -> dict:
    r = api.client.get("/healthz")
    assert r.status_code == 200, r.text
    return r.json()


def pool_pids(api) -> list[int]:
    return list(api.client.app.state.queue.executor._processes)


# -- unit: what crosses the process boundary pickles --------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        SpaceError("layers[0].n_filters.low", "must be < high, got 64 >= 32"),
        SpaceError("", "document must be a JSON object, got list"),
        InfeasibleArchitecture("the output is 0x0 pixels"),
        DatasetURIError("unknown scheme 'ftp'"),
        CheckBudgetExceeded("looking took longer than 2 s"),
        SuggesterFailed("SpaceError: l1_norm_stretch must be finite, got inf"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_project_exceptions_pickle(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert back.args == exc.args and str(back) == str(exc)
    assert vars(back) == vars(exc)


def test_run_suggester_raises_only_a_picklable_one_line_error():
    with pytest.raises(SuggesterFailed) as info:
        run_suggester(overflowing_space(), "random", {}, [], 2, 1)
    reason = info.value.reason
    assert reason.startswith("SpaceError: ") and "l1_norm_stretch" in reason
    assert "must be finite" in reason and "\n" not in reason
    assert pickle.loads(pickle.dumps(info.value)).reason == reason


# -- unit: a broken pool is replaced and the round retried once ---------------------------
class FakePool:
    """An executor whose futures fail with BrokenProcessPool ``breaks`` times."""

    def __init__(self, breaks: int) -> None:
        self.breaks = breaks
        self.shut = False

    def submit(self, fn, *args):
        future: Future = Future()
        if self.breaks:
            self.breaks -= 1
            future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
        else:
            future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        self.shut = True


# A round over an inline (empty) history: no database behind these fake pools.
JOB = SuggestJob(
    study_id=1,
    study_key="fake",
    database_url="sqlite://",
    space=get_space("fg11").to_dict(),
    algorithm="random",
    options={},
    evaluator_options=EvaluatorOptions().model_dump(),
    n=2,
    seed=7,
    history=(),
)


def test_broken_pool_is_replaced_and_the_round_retried_once():
    pools = [FakePool(breaks=1), FakePool(breaks=0)]
    made = iter(pools)
    queue = SuggestionQueue(None, executor_factory=lambda: next(made))  # type: ignore[arg-type]
    raws = queue._suggest(JOB)
    assert len(raws) == 2
    assert queue.executor is pools[1] and pools[0].shut
    assert queue.suggester_health() is None


def test_pool_that_breaks_again_blames_the_study_and_is_replaced_for_the_others():
    pools = [FakePool(breaks=1), FakePool(breaks=1), FakePool(breaks=0)]
    made = iter(pools)
    queue = SuggestionQueue(None, executor_factory=lambda: next(made))  # type: ignore[arg-type]
    # (the probe of each fresh pool uses one submit; FakePool(breaks=1) fails the job)
    pools[1].breaks = 0
    pools[1].submit = _fail_jobs_not_probes(pools[1])  # type: ignore[method-assign]
    with pytest.raises(SuggesterFailed, match="died twice"):
        queue._suggest(JOB)
    assert queue.executor is pools[2] and queue.suggester_health() is None


def _fail_jobs_not_probes(pool: FakePool):
    original = pool.submit

    def submit(fn, *args):
        if fn is os.getpid:
            return original(fn, *args)
        future: Future = Future()
        future.set_exception(BrokenProcessPool("killed again"))
        return future

    return submit


def test_pool_that_cannot_be_made_is_unavailable_not_the_studys_fault():
    def factory():
        if calls:
            raise OSError("[Errno 11] Resource temporarily unavailable")
        calls.append(1)
        return FakePool(breaks=1)

    calls: list[int] = []
    queue = SuggestionQueue(None, executor_factory=factory)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="cannot be created"):
        queue._suggest(JOB)
    assert "Resource temporarily unavailable" in (queue.suggester_health() or "")


# -- the coordinator, with a real process pool -------------------------------------------
def test_overflowing_space_pauses_only_its_study(api_factory):
    api = api_factory(suggest_processes=1)
    bad = bad_study(api)
    assert bad["state"] == "paused"
    assert "must be finite" in bad["error"] and "l1_norm_stretch" in bad["error"]
    assert "\n" not in bad["error"]
    assert db_trials(api.url, bad["id"]) == []
    assert healthz(api)["suggester"] == "ok"

    # Every other study goes on: created with WAITING trials that a worker claims.
    good = good_study(api)
    assert good["state"] == "running" and good["error"] is None
    assert waiting(api, good["id"]) == 2
    w = api.new_worker()
    r = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    assert r.status_code == 200, r.text
    assert r.json()["trial"]["study_id"] == good["id"]

    # The maintenance pass (what broke the pool again after a restart) leaves it alone.
    maintenance_pass(api.client.app.state.store, api.client.app.state.queue)
    assert waiting(api, good["id"]) == 2
    got = api.client.get(f"/api/v1/studies/{bad['id']}", headers=api.reader).json()
    assert got["state"] == "paused" and got["error"] == bad["error"]
    assert healthz(api) | {"version": None} == {
        "status": "ok",
        "db": "ok",
        "version": None,
        "suggester": "ok",
    }

    # A resume clears the error; the next refill fails again and pauses it again.
    r = api.client.patch(
        f"/api/v1/studies/{bad['id']}", json={"state": "running"}, headers=api.admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["error"] is None
    got = api.client.get(f"/api/v1/studies/{bad['id']}", headers=api.reader).json()
    assert got["state"] == "paused" and "must be finite" in got["error"]
    good_study(api, "good-2")  # still no harm done


def test_overflowing_space_in_process_suggester(api_factory):
    api = api_factory(suggest_processes=0)
    bad = bad_study(api)
    assert bad["state"] == "paused" and "must be finite" in bad["error"]
    assert waiting(api, good_study(api)["id"]) == 2


def _kill_pool_processes(api) -> None:
    pids = pool_pids(api)
    assert pids, "the pool has no process yet"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    executor = api.client.app.state.queue.executor
    while not executor._broken and time.monotonic() < deadline:  # the pool notices
        time.sleep(0.05)


def test_killed_pool_process_next_refill_still_works(api_factory):
    api = api_factory(suggest_processes=1)
    first = good_study(api, "first")
    assert waiting(api, first["id"]) == 2
    old = api.client.app.state.queue.executor
    _kill_pool_processes(api)

    # The next refill replaces the pool and retries: a study created now gets its trials.
    second = good_study(api, "second")
    assert second["state"] == "running" and second["error"] is None
    assert waiting(api, second["id"]) == 2
    assert api.client.app.state.queue.executor is not old
    assert healthz(api)["suggester"] == "ok"

    # Killed again: a claim's refill of its study (in the background) heals it too.
    _kill_pool_processes(api)
    w = api.new_worker()
    r = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker)
    assert r.status_code == 200, r.text
    assert waiting(api, r.json()["trial"]["study_id"]) == 2
    maintenance_pass(api.client.app.state.store, api.client.app.state.queue)
    assert waiting(api, first["id"]) + waiting(api, second["id"]) == 4
    for sid in (first["id"], second["id"]):
        got = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
        assert got["state"] == "running" and got["error"] is None


def test_healthz_heals_a_broken_pool(api_factory):
    api = api_factory(suggest_processes=1)
    good_study(api)
    old = api.client.app.state.queue.executor
    _kill_pool_processes(api)
    assert old._broken
    assert healthz(api)["suggester"] == "ok"
    assert api.client.app.state.queue.executor is not old


def test_pool_that_cannot_be_recreated_is_503_on_healthz_never_500(api_factory):
    api = api_factory(suggest_processes=1)
    queue = api.client.app.state.queue
    good_study(api, "before")
    factory = queue._factory

    def no_pool():
        raise OSError("[Errno 11] Resource temporarily unavailable")

    queue._factory = no_pool
    _kill_pool_processes(api)
    r = api.client.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and body["db"] == "ok"
    assert "cannot be created" in body["suggester"]

    # Creation still answers 201: the study exists, running; its queue fills later.
    r = api.client.post("/api/v1/studies", json={**FG11_STUDY, "name": "during"}, headers=api.admin)
    assert r.status_code == 201, r.text
    during = r.json()
    assert during["state"] == "running" and during["error"] is None

    queue._factory = factory  # the machine recovers
    assert healthz(api)["suggester"] == "ok"
    queue.refill(during["id"])
    assert waiting(api, during["id"]) > 0


# -- /metrics needs the reader role --------------------------------------------------------
def test_metrics_requires_reader(api_factory):
    api = api_factory()
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers=api.worker).status_code == 200
    r = api.client.get("/metrics", headers=api.reader)
    assert r.status_code == 200 and "archsearch_trials" in r.text
    opened = api_factory(open_reads=True)
    assert opened.client.get("/metrics").status_code == 200


# -- a coordinator killed without its shutdown leaves no suggester process behind ---------
def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_suggester_process_ends_with_a_killed_coordinator(sqlite_url):
    from archsearch.launch import start_coordinator
    from tests.helpers.coordinator import ADMIN_TOKEN, migrate
    from tests.helpers.waiting import wait_for

    migrate(sqlite_url)
    live = start_coordinator(sqlite_url, admin_token=ADMIN_TOKEN)
    try:
        import httpx

        body = {**FG11_STUDY, "name": "k", "max_trials": 4, "max_parallel": 2}
        r = httpx.post(
            f"{live.base_url}/api/v1/studies",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        )
        assert r.status_code == 201, r.text  # its queue was filled by the suggester process
        pool = [p for p in _children(live.process.pid) if _alive(p)]
        assert pool, "the coordinator runs no child process"
    finally:
        live.process.kill()
        live.process.wait(10)
    wait_for(
        lambda: not any(_alive(p) for p in pool),
        timeout=15,
        what="the suggester process to end with its coordinator",
    )
