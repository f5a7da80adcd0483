"""ASHA successive halving (issue 14 item 1) through the real trial store, on a SQLite file
and on PostgreSQL: the promotion rule on a synthetic objective (order, the ``n // eta``
quota, late good results, nothing past the top rung), the top-k taken from the top rung,
``max_trials`` counting configurations, the study's end, paused / stopped studies, and the
suggester's history (one point per configuration, at its highest COMPLETE rung).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from archsearch.cli import app
from protocol.options import ScheduleOptions
from search_space import EncodedHistory, get_space
from service import lifecycle
from service.models import Study, StudyState, Trial, TrialSource, TrialState
from service.schedule import promoted_hash
from service.suggester_process import read_history
from service.trial_store import NewTrial, TrialStore
from tests.helpers.archs import one_layer_space
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY, five_finished_peers
from tests.helpers.store import add_study, add_worker, study_state, study_trials

# Rungs 10, 30, 90 (eta 3): three rungs, the top one is 2.
THREE_RUNGS = {"kind": "asha", "resource": "train_per_class", "min": 10, "max": 90, "eta": 3}


def schedule_study(
    store: TrialStore,
    n: int,
    schedule: dict,
    *,
    top_k: int = 0,
    max_trials: int | None = None,
    source: TrialSource = TrialSource.SUGGESTED,
) -> int:
    """A running study with a schedule and ``n`` queued rung-0 trials (params ``{"i": i}``)."""
    new = [NewTrial(params={"i": i}, config_hash=f"h{i}", seed=7, source=source) for i in range(n)]
    return add_study(
        store,
        n,
        top_k=top_k,
        trials=new,
        name="asha",
        max_trials=n if max_trials is None else max_trials,
        schedule=schedule,
    )


def at_rung(store: TrialStore, sid: int, rung: int) -> list[int]:
    """The configurations (``params["i"]``) with a search trial at ``rung``, by number."""
    return [
        t.params["i"]
        for t in study_trials(store, sid)
        if t.rung == rung and t.source in TrialSource.search()
    ]


def by_config(store: TrialStore, sid: int) -> dict[tuple[int, int], Trial]:
    """Search trials keyed by (configuration, rung); fails on a duplicate."""
    out: dict[tuple[int, int], Trial] = {}
    for t in study_trials(store, sid):
        if t.source in TrialSource.search():
            key = (t.params["i"], t.rung)
            assert key not in out, f"configuration {key[0]} has two trials at rung {key[1]}"
            out[key] = t
    return out


def test_promotions_follow_the_rule_and_the_top_k_comes_from_the_top_rung(store):
    """A hand-checked run (eta 3, rungs 10/30/90, 9 configurations): promotions happen as
    soon as a result is in the top n // 3 of its rung, a late good result is promoted
    after worse ones were, promotions are claimed first, and the finals re-score the
    top rung's configuration before lower rungs' better-looking ones."""
    sid = schedule_study(store, 9, THREE_RUNGS, top_k=2)
    w = add_worker(store)
    running = {t.params["i"]: t.id for t in store.claim_many(w, 9, [sid]).trials}
    assert sorted(running) == list(range(9))

    def rung0(i: int, value: float) -> None:
        store.complete(running[i], w, value, {})

    rung0(0, 0.50)
    rung0(1, 0.30)
    assert at_rung(store, sid, 1) == []  # 2 results: quota 2 // 3 = 0
    rung0(2, 0.60)
    assert at_rung(store, sid, 1) == [2]  # 3 results: the best one goes up at once
    rung0(3, 0.40)
    rung0(4, 0.55)
    assert at_rung(store, sid, 1) == [2]  # 5 results: quota 1, already promoted
    rung0(5, 0.90)
    assert at_rung(store, sid, 1) == [2, 5]  # 6: quota 2; the late good result goes up
    rung0(6, 0.20)
    rung0(7, 0.58)
    assert at_rung(store, sid, 1) == [2, 5]
    rung0(8, 0.70)
    assert at_rung(store, sid, 1) == [2, 5, 8]  # 9: quota 3 = {5, 8, 2}

    rows = by_config(store, sid)
    for i in (2, 5, 8):
        root, promoted = rows[(i, 0)], rows[(i, 1)]
        assert promoted.state == TrialState.WAITING and promoted.priority == 0
        assert promoted.rung_of_id == root.id and promoted.seed == root.seed == 7
        assert promoted.params == root.params and promoted.source == root.source
        assert promoted.config_hash == promoted_hash(root.config_hash)
    assert study_state(store, sid) == StudyState.RUNNING

    # Rung 1: promotions are claimed in the order they were made.
    rung1 = {2: 0.65, 5: 0.95, 8: 0.75}
    for i in (2, 5, 8):
        got = store.claim(w, [sid])
        assert (got.params["i"], got.rung) == (i, 1)
        store.complete(got.id, w, rung1[i], {})
        # The third result of rung 1 promotes its best to the top rung (rung 2).
        assert at_rung(store, sid, 2) == ([5] if i == 8 else [])
    got = store.claim(w, [sid])
    assert (got.params["i"], got.rung) == (5, 2)
    assert by_config(store, sid)[(5, 2)].rung_of_id == by_config(store, sid)[(5, 0)].id
    store.complete(got.id, w, 0.97, {})

    # max_trials (9) counts configurations: 9 rung-0 trials + 4 promotions, search over.
    assert len([t for t in study_trials(store, sid) if not t.is_final]) == 13
    assert study_state(store, sid) == StudyState.FINISHING
    rows = by_config(store, sid)
    with store.sessions() as s:
        top = list(s.scalars(lifecycle.top_trials(sid, 20)))
    # Each configuration once, at its highest COMPLETE rung; higher rungs first.
    assert [(t.params["i"], t.rung) for t in top] == [
        (5, 2), (8, 1), (2, 1), (7, 0), (4, 0), (0, 0), (3, 0), (1, 0), (6, 0)
    ]  # fmt: skip
    final_of = sorted(t.final_of_id for t in study_trials(store, sid) if t.is_final)
    assert final_of == sorted([rows[(5, 2)].id, rows[(8, 1)].id])
    while (t := store.claim(w, [sid])) is not None:
        assert t.is_final
        store.complete(t.id, w, 0.9, {})
    assert study_state(store, sid) == StudyState.FINISHED


def test_nothing_is_promoted_past_the_top_rung(store):
    """Two rungs (eta 2, 10 -> 20): the top rung's results stay where they are."""
    sid = schedule_study(store, 4, {"resource": "train_per_class", "min": 10, "max": 20, "eta": 2})
    w = add_worker(store)
    while (t := store.claim(w, [sid])) is not None:
        store.complete(t.id, w, 0.1 + t.params["i"] / 10 + t.rung / 100, {})
    # One trial at a time, promotions first: 2 results promote 1 (the best so far), 3
    # promote 2, 4 promote 3 (ASHA decides on what it has; nobody waits).
    assert at_rung(store, sid, 1) == [1, 2, 3]
    assert at_rung(store, sid, 2) == []  # 3 top-rung results: rung 1 is the last
    assert study_state(store, sid) == StudyState.FINISHED


def _objective(i: int, rung: int, quality: list[float]) -> float:
    """A synthetic score: the configuration's quality, a little better at higher rungs."""
    return round(quality[i] * (0.7 + 0.1 * rung), 6)


@pytest.mark.parametrize("seed", [0, 1])
def test_promotions_match_a_reference_under_shuffled_reports(store, seed):
    """Several workers hold batches and report in a shuffled order; after every report
    the promoted set of each rung equals an independent reference: the union, over the
    reports so far, of the top ``n // eta`` of the rung below at that moment."""
    rng = random.Random(seed)
    n = 30
    quality = [rng.random() for _ in range(n)]
    schedule = {"resource": "train_per_class", "min": 5, "max": 45, "eta": 3}  # 5, 15, 45
    sid = schedule_study(store, n, schedule, top_k=3)
    workers = [add_worker(store, f"w{k}") for k in range(3)]
    results: dict[int, dict[int, float]] = defaultdict(dict)  # rung -> config -> value
    expected: dict[int, set[int]] = defaultdict(set)  # rung -> configs promoted to it
    held: dict[int, tuple[int, int, int]] = {}  # trial id -> (worker, config, rung)
    reports = 0
    while True:
        for w in workers:
            # A claim hands a worker back what it holds first: ask for more than that.
            own = sum(1 for hw, _, _ in held.values() if hw == w)
            for t in store.claim_many(w, own + rng.randint(1, 3), [sid]).trials:
                if t.is_final:
                    store.complete(t.id, w, 0.5, {})
                elif t.id not in held:
                    held[t.id] = (w, t.params["i"], t.rung)
        if not held:
            break
        tid = rng.choice(sorted(held))
        w, i, rung = held.pop(tid)
        value = _objective(i, rung, quality)
        store.complete(tid, w, value, {})
        reports += 1
        results[rung][i] = value
        quota = len(results[rung]) // 3
        if rung < 2:
            ranked = sorted(results[rung], key=lambda c: -results[rung][c])
            expected[rung + 1] |= set(ranked[:quota])
        rows = by_config(store, sid)  # also: at most one trial per configuration and rung
        for k in (1, 2):
            assert {i for (i, r) in rows if r == k} == expected[k], (reports, k)
        assert not any(r > 2 for (_, r) in rows)
    assert len(results[0]) == n and len(results[1]) == len(expected[1]) >= n // 3
    assert len(expected[2]) >= len(expected[1]) // 3 >= 1
    assert study_state(store, sid) == StudyState.FINISHED
    # Each promoted configuration's chain points at its rung-0 trial.
    rows = by_config(store, sid)
    for (i, r), t in rows.items():
        assert t.rung_of_id == (None if r == 0 else rows[(i, 0)].id)


def test_max_trials_counts_configurations_through_the_suggestion_queue(api):
    """Over HTTP, with the real suggestion queue: promotions take queue slots but never
    use up ``max_trials``, which counts configurations (rung-0 trials); the study ends once
    it has them all and every promotion has run; then a user's configuration is refused."""
    sid = api.new_study(
        **FG11_STUDY,
        max_trials=8,
        max_parallel=4,
        schedule={"resource": "train_per_class", "min": 10, "max": 20, "eta": 2},
    )["id"]
    w = api.new_worker()
    c, h = api.client, api.worker
    for _ in range(50):
        r = c.post(f"/api/v1/workers/{w}/claims", json={"max_trials": 4, "study": [sid]}, headers=h)
        assert r.status_code == 200, r.text
        got = [g["trial"] for g in r.json()["claims"]]
        if not got:
            break
        for t in got:
            value = int(t["config_hash"][:6], 16) / 2**24 / 2 + t["rung"] / 10
            r = c.post(
                f"/api/v1/trials/{t['id']}/complete",
                json={"worker_id": w, "value": value},
                headers=h,
            )
            assert r.status_code == 200, r.text
    study = c.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    assert study["state"] == "finished", study
    listed = c.get(f"/api/v1/studies/{sid}/trials?limit=100", headers=api.reader).json()["trials"]
    search = [t for t in listed if t["source"] in ("suggested", "user")]
    assert len([t for t in search if t["rung"] == 0]) == 8
    assert len([t for t in search if t["rung"] == 1]) >= 8 // 2  # promotions too
    r = c.post(
        f"/api/v1/studies/{sid}/trials", json={"params": search[0]["params"]}, headers=api.admin
    )
    assert r.status_code in (409, 422), r.text


def test_a_user_trial_is_promoted_as_a_user_trial(store):
    sid = schedule_study(
        store,
        2,
        {"resource": "train_per_class", "min": 10, "max": 20, "eta": 2},
        source=TrialSource.USER,
    )
    w = add_worker(store)
    for t, value in zip(store.claim_many(w, 2, [sid]).trials, (0.2, 0.4), strict=True):
        store.complete(t.id, w, value, {})
    promoted = by_config(store, sid)[(1, 1)]
    assert promoted.source == TrialSource.USER and promoted.priority == 0


def test_a_paused_study_queues_promotions_and_a_stopped_one_does_not(store):
    schedule = {"resource": "train_per_class", "min": 10, "max": 20, "eta": 2}
    paused = schedule_study(store, 2, schedule)
    stopped = schedule_study(store, 2, schedule)
    w = add_worker(store)
    held = {sid: store.claim_many(w, 2, [sid]).trials for sid in (paused, stopped)}
    for sid, target in ((paused, "paused"), (stopped, "stopped")):
        with store.transaction() as s:
            lifecycle.set_state(store, s, sid, target)
        for t, value in zip(held[sid], (0.2, 0.4), strict=True):
            store.complete(t.id, w, value, {})
    # Paused: the promotion waits, unclaimable, and runs once the study resumes.
    assert at_rung(store, paused, 1) == [1]
    assert store.claim(w, [paused]) is None
    with store.transaction() as s:
        lifecycle.set_state(store, s, paused, "running")
    got = store.claim(w, [paused])
    assert (got.params["i"], got.rung) == (1, 1)
    # Stopped: the search is over, nothing is promoted.
    assert at_rung(store, stopped, 1) == []
    assert study_state(store, stopped) == StudyState.STOPPED


def test_a_failed_promotion_leaves_the_configuration_at_its_lower_rung(store):
    """A promoted trial that fails (or is still running) does not count: the top-k and the
    suggester's history keep the configuration's highest COMPLETE rung."""
    sid = schedule_study(store, 4, {"resource": "epochs", "min": 1, "max": 4, "eta": 2}, top_k=4)
    w = add_worker(store)
    held = store.claim_many(w, 4, [sid]).trials
    for t in reversed(held):  # configuration i scores (i + 1) / 10; the best come first
        store.complete(t.id, w, (t.params["i"] + 1) / 10, {})
    first, second = store.claim_many(w, 2, [sid]).trials
    # Promoted in order of value, claimed in the order promoted: 3, then 2.
    assert [(t.params["i"], t.rung) for t in (first, second)] == [(3, 1), (2, 1)]
    store.fail(first.id, w, "error", "out of memory at rung 1")
    with store.sessions() as s:
        top = [(t.params["i"], t.rung) for t in s.scalars(lifecycle.top_trials(sid, 4))]
    assert top == [(3, 0), (2, 0), (1, 0), (0, 0)]  # nothing COMPLETE above rung 0 yet
    store.complete(second.id, w, 0.05, {})  # worse than its rung-0 score, but higher rung
    with store.sessions() as s:
        top = [(t.params["i"], t.rung) for t in s.scalars(lifecycle.top_trials(sid, 4))]
    assert top == [(2, 1), (3, 0), (1, 0), (0, 0)]


def test_history_has_one_point_per_configuration_at_its_highest_complete_rung(db_url, store):
    """read_history (what TPE learns from): rung-0 trials only, each valued at its
    configuration's highest COMPLETE rung; a running or failed promotion leaves the lower
    score; finals are not history."""
    space = get_space("pinto-cox")
    raws = [space.sample(k) for k in range(4)]
    schedule = {"resource": "epochs", "min": 1, "max": 9, "eta": 3}  # 1, 3, 9
    with store.transaction() as s:
        study = Study(
            name="h", state=StudyState.RUNNING, space={}, dataset="builtin:digits",
            evaluator="train", evaluator_options={}, algorithm="tpe", algorithm_options={},
            max_trials=4, max_parallel=4, top_k=1, seed=0, schedule=schedule,
        )  # fmt: skip
        s.add(study)
        s.flush()
        sid = study.id
        store.add_trials(
            s, sid, [NewTrial(params=raw, config_hash=f"c{k}") for k, raw in enumerate(raws)]
        )
    w = add_worker(store)
    held = store.claim_many(w, 4, [sid]).trials
    for t, value in zip(held, (0.3, 0.6, 0.5, 0.1), strict=True):
        store.complete(t.id, w, value, {})
    # 4 results, eta 3: configuration 1 (0.6) goes to rung 1.
    up = store.claim(w, [sid])
    assert up.rung == 1 and up.rung_of_id == held[1].id
    encoded = EncodedHistory(space)
    read_history(store.sessions.kw["bind"], sid, encoded)
    assert list(encoded.ids) == [t.id for t in held]
    assert list(encoded.values) == [0.3, 0.6, 0.5, 0.1]  # the promotion is still running
    store.complete(up.id, w, 0.8, {})
    read_history(store.sessions.kw["bind"], sid, encoded)
    assert list(encoded.ids) == [t.id for t in held]
    assert list(encoded.values) == [0.3, 0.8, 0.5, 0.1]  # rung 1's score replaces rung 0's
    # The search is over (max_trials 4): a final exists and is not history either.
    assert any(t.is_final for t in study_trials(store, sid))
    read_history(store.sessions.kw["bind"], sid, encoded)
    assert len(encoded) == 4 and list(encoded.values) == [0.3, 0.8, 0.5, 0.1]


ASHA = {"kind": "asha", "resource": "train_per_class", "min": 50, "max": 800, "eta": 3}
# Request validation does not touch the database: these run on the SQLite file only.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
EPOCHS = {"kind": "asha", "resource": "epochs", "min": 1, "max": 9, "eta": 3}


@pytest.mark.parametrize(
    ("evaluator", "schedule", "field", "words"),
    [
        ("screen", {**ASHA, "max": 50}, "schedule.max", "max must be > min"),
        ("screen", {**ASHA, "min": 900}, "schedule.max", "max must be > min"),
        ("screen", {**ASHA, "eta": 1}, "schedule.eta", "greater than or equal to 2"),
        ("screen", {**ASHA, "kind": "hyperband"}, "schedule.kind", "asha"),
        ("screen", {**ASHA, "resource": "images"}, "schedule.resource", "train_per_class"),
        ("screen", {"kind": "asha", "resource": "epochs", "max": 8}, "schedule.min", "required"),
        ("screen", {**ASHA, "resource": "epochs"}, "schedule.resource", "only train_per_class"),
        ("train", ASHA, "schedule.resource", "only epochs"),
        ("pairs", ASHA, "schedule.resource", "no resource"),
        ("plugin:mylab.finetune", ASHA, "schedule.resource", "no resource"),
        (
            "screen",
            {**ASHA, "min": 1, "max": 1_000_000, "eta": 2},
            "schedule",
            "more than 16 rungs",
        ),
    ],
)
@SQLITE_ONLY
def test_bad_schedules_get_a_422_naming_the_field(api, evaluator, schedule, field, words):
    body = {
        "name": "bad",
        "dataset": "builtin:digits",
        "space": "pinto-cox",
        "evaluator": evaluator,
        "max_trials": 4,
        "schedule": schedule,
    }
    r = api.client.post("/api/v1/studies", json=body, headers=api.admin)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and words in error["message"], error


@SQLITE_ONLY
def test_a_good_schedule_is_stored_and_shown(api):
    study = api.new_study(schedule={"resource": "train_per_class", "min": 50, "max": 800})
    assert study["schedule"] == ASHA  # kind and eta filled in with their defaults
    r = api.client.get(f"/api/v1/studies/{study['id']}", headers=api.reader)
    assert r.json()["schedule"] == ASHA
    assert ScheduleOptions.model_validate(ASHA).resources() == [50, 150, 450, 800]


@SQLITE_ONLY
@pytest.mark.parametrize(("schedule", "low_answer"), [(None, "prune"), (EPOCHS, "continue")])
def test_the_median_rule_leaves_a_scheduled_study_alone(api, schedule, low_answer):
    """A train study is median-pruned, unless it has a schedule: its rungs are its early
    stopping (and its peers ran other budgets)."""
    sid = api.new_study(evaluator="train", max_trials=12, max_parallel=12, schedule=schedule)["id"]
    w = api.new_worker()
    tid = five_finished_peers(api, w, step=1, study=sid)
    assert api.heartbeat(w, tid, 1, 0.8) == "continue"  # above the median (0.7)
    assert api.heartbeat(w, tid, 1, 0.2) == low_answer


@SQLITE_ONLY
def test_the_cli_creates_a_study_with_a_schedule(live, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_COORDINATOR", live.base_url)
    monkeypatch.setenv("ARCHSEARCH_TOKEN", ADMIN_TOKEN)
    base = ["study", "create", "--name", "asha", "--dataset", "builtin:digits", "--schedule"]
    runner = CliRunner()
    made = runner.invoke(app, [*base, '{"resource": "train_per_class", "min": 50, "max": 800}'])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["schedule"] == ASHA
    bad = runner.invoke(app, [*base, '{"resource": "train_per_class", "min": 50, "max": 50}'])
    assert bad.exit_code == 1 and "[field: schedule.max]" in bad.output, bad.output
    broken = runner.invoke(app, [*base, "{resource: epochs"])
    assert broken.exit_code == 1 and "--schedule is not JSON" in broken.output, broken.output


GRID_OF_4 = one_layer_space("grid-of-4", 16, {"type": "choice", "options": [4, 8, 12, 16]}, 3)


def test_an_exhausted_grid_ends_the_search_only_after_its_promotions(api):
    """A grid of 4 points under max_trials 10: the suggester runs dry after 4, while
    promotions are due. The search goes on until they have run, then ends by itself."""
    sid = api.new_study(
        space=GRID_OF_4,
        algorithm="grid",
        max_trials=10,
        max_parallel=4,
        top_k=1,
        schedule={"resource": "train_per_class", "min": 10, "max": 40, "eta": 2},
    )["id"]
    w = api.new_worker()
    c, h = api.client, api.worker

    def run(n: int) -> list[dict]:
        r = c.post(f"/api/v1/workers/{w}/claims", json={"max_trials": n, "study": [sid]}, headers=h)
        got = [g["trial"] for g in r.json()["claims"]]
        for t in got:
            value = 0.1 * (1 + t["params"]["l1_n_filters"]) + t["rung"] / 10  # a choice index
            body = {"worker_id": w, "value": value}
            r = c.post(f"/api/v1/trials/{t['id']}/complete", json=body, headers=h)
            assert r.status_code == 200, r.text
        return got

    def study() -> dict:
        return c.get(f"/api/v1/studies/{sid}", headers=api.reader).json()

    assert [t["rung"] for t in run(4)] == [0, 0, 0, 0]
    # The grid is used up (the refill after each report found nothing new), but two
    # promotions wait: the search is not over.
    assert study()["state"] == "running" and study()["counts"] == {"COMPLETE": 4, "WAITING": 2}
    assert [t["rung"] for t in run(4)] == [1, 1]
    assert [t["rung"] for t in run(4)] == [2]  # the better of the two goes to the top
    assert study()["state"] == "finishing"  # the final of the top rung's configuration
    (final,) = run(4)
    assert final["source"] == "final"
    assert study()["state"] == "finished"
