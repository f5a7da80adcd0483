"""Cost on every trial, the cost ceiling, the Pareto front and the rung view over the API
(SQLite and PostgreSQL), and ``archsearch study best --pareto`` against a live
coordinator. Studies are run through the worker API (claim -> complete)."""

from __future__ import annotations

import math
import time

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from archsearch.cli import app
from search_space import Architecture, InfeasibleArchitecture, walk
from service.db import make_engine
from service.models import Trial
from tests.helpers.coordinator import ADMIN_TOKEN, FG11_STUDY

SCHEDULE = {"kind": "asha", "resource": "train_per_class", "min": 10, "max": 90, "eta": 3}


def value_of(trial: dict) -> float:
    """A score that varies with the configuration and grows with the rung (more data)."""
    spread = int(trial["config_hash"][:8], 16) % 997 / 997
    return round(0.2 + 0.6 * spread + 0.05 * trial["rung"], 6)


def run(api, sid: int, wid: int, scores: dict[int, float]) -> None:
    """Claim and complete every trial the study hands out (promotions included); every
    other trial reports its seconds per image. ``scores``: trial id -> value given."""
    k = 0
    while (
        claim := api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
    ).status_code == 200:
        trial = claim.json()["trial"]
        assert trial["source"] in ("suggested", "user"), trial
        k += 1
        value = value_of(trial)
        scores[trial["id"]] = value
        metrics = {"seconds_per_image": 0.001 * k} if k % 2 else {}
        done = api.client.post(
            f"/api/v1/trials/{trial['id']}/complete",
            json={"worker_id": wid, "value": value, "metrics": metrics},
            headers=api.worker,
        )
        assert done.status_code == 200, done.text
    assert claim.status_code == 204, claim.text


def trials_of(api, sid: int) -> list[dict]:
    r = api.client.get(f"/api/v1/studies/{sid}/trials?limit=1000", headers=api.reader)
    assert r.status_code == 200, r.text
    return r.json()["trials"]


def pareto_of(api, sid: int, dominated: bool = True) -> dict:
    path = f"/api/v1/studies/{sid}/pareto" + ("?include_dominated=true" if dominated else "")
    r = api.client.get(path, headers=api.reader)
    assert r.status_code == 200, r.text
    return r.json()


def configurations(trials: list[dict]) -> list[dict]:
    """Each COMPLETE search configuration once, at its highest COMPLETE rung."""
    best: dict[int, dict] = {}
    for t in trials:
        if t["source"] not in ("suggested", "user") or t["state"] != "COMPLETE":
            continue
        root = t["rung_of_id"] or t["id"]
        if root not in best or t["rung"] > best[root]["rung"]:
            best[root] = t
    return list(best.values())


def brute_front(configs: list[dict]) -> set[int]:
    """Trial numbers that no other configuration dominates (the definition, O(n^2))."""

    def dominates(a: dict, b: dict) -> bool:
        ca, cb = a["gflops_per_image"], b["gflops_per_image"]
        return ca <= cb and a["value"] >= b["value"] and (ca < cb or a["value"] > b["value"])

    return {b["number"] for b in configs if not any(dominates(a, b) for a in configs if a is not b)}


def check_points(got: dict, trials: list[dict]) -> None:
    """The answer is the hand-computed front of ``trials``, each point as its trial says."""
    configs = configurations(trials)
    by_number = {t["number"]: t for t in trials}
    front = [p["number"] for p in got["front"]]
    assert set(front) == brute_front(configs) and len(front) == len(set(front))
    assert {p["number"] for p in got["front"] + got["dominated"]} == {t["number"] for t in configs}
    assert got["n_configurations"] == len(configs) and got["n_unknown_cost"] == 0
    for name in ("front", "dominated"):
        points = got[name]
        costs = [p["gflops_per_image"] for p in points]
        assert costs == sorted(costs), f"{name} is not in GFLOP order"
        for p in points:
            t = by_number[p["number"]]
            assert p["on_front"] is (name == "front")
            assert p["id"] == t["id"] and p["rung"] == t["rung"]
            assert p["value"] == t["value"] and p["test_value"] == t["test_value"]
            assert p["gflops_per_image"] == t["gflops_per_image"]
            assert p["n_params"] == t["n_params"] and p["n_features"] == t["n_features"]
            assert p["arch_summary"] == t["arch_summary"]
            assert p["seconds_per_image"] == t["metrics"].get("seconds_per_image")
    # Along the front the score strictly rises with the cost (no exact ties here).
    values = [p["value"] for p in got["front"]]
    assert values == sorted(values)


# -- cost columns and the Pareto front -----------------------------------------------------
def test_every_trial_carries_its_cost_from_the_walk(api):
    sid = api.new_study(max_trials=6, max_parallel=3)["id"]
    wid = api.new_worker()
    run(api, sid, wid, {})
    trials = trials_of(api, sid)
    assert len(trials) == 6
    walked = 0
    for t in trials:
        try:
            report = walk(Architecture.from_dict(t["arch"]))
        except InfeasibleArchitecture as exc:  # a map vanishes: no cost, refused with why
            assert t["state"] == "INFEASIBLE" and t["reason"] == exc.reason
            assert t["gflops_per_image"] is t["n_params"] is t["n_features"] is None
            continue
        walked += 1
        assert t["gflops_per_image"] == report.gflops > 0
        assert t["n_params"] == report.n_params and t["n_features"] == report.n_features
    assert walked >= 3


def test_pareto_is_the_front_of_the_complete_configurations(api):
    sid = api.new_study(max_trials=16, max_parallel=4)["id"]
    wid = api.new_worker()
    run(api, sid, wid, {})
    trials = trials_of(api, sid)
    got = pareto_of(api, sid)
    assert got["study_id"] == sid and got["scheduled"] is False
    assert len(got["front"]) >= 1 and len(got["front"]) + len(got["dominated"]) >= 10
    check_points(got, trials)
    assert any(p["seconds_per_image"] is not None for p in got["front"] + got["dominated"])
    # Without include_dominated: the same front, nothing else.
    plain = pareto_of(api, sid, dominated=False)
    assert plain["front"] == got["front"] and plain["dominated"] == []

    # Rows from before migration 0005 have no cost columns: the walk of the arch fills in.
    engine = make_engine(api.url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(Trial)
                .where(Trial.study_id == sid)
                .values(gflops_per_image=None, n_params=None, n_features=None)
            )
    finally:
        engine.dispose()
    assert pareto_of(api, sid) == got


def test_pareto_of_a_schedule_takes_each_configuration_at_its_highest_rung(api):
    # fg11 at 200 px: every draw can be built, so all 9 configurations score at rung 0.
    sid = api.new_study(**FG11_STUDY, max_trials=9, max_parallel=3, schedule=SCHEDULE)["id"]
    wid = api.new_worker()
    run(api, sid, wid, {})
    trials = trials_of(api, sid)
    rungs = {t["rung"] for t in trials}
    assert rungs == {0, 1, 2}, "9 configurations with eta 3: 3 reach rung 1, 1 rung 2"
    got = pareto_of(api, sid)
    assert got["scheduled"] is True
    check_points(got, trials)
    top = next(t for t in trials if t["rung"] == 2)
    shown = {p["number"]: p for p in got["front"] + got["dominated"]}
    assert top["number"] in shown and shown[top["number"]]["rung"] == 2
    root = next(t for t in trials if t["id"] == top["rung_of_id"])
    assert root["number"] not in shown  # its rung-0 score is superseded

    # The rung view: per rung, the configurations that reached it and their scores.
    r = api.client.get(f"/api/v1/studies/{sid}/rungs", headers=api.reader)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["resource"] == "train_per_class" and view["note"] is None
    assert [g["resource"] for g in view["rungs"]] == [10, 30, 90]
    for g in view["rungs"]:
        at = [t for t in trials if t["rung"] == g["rung"]]
        done = sorted((t for t in at if t["state"] == "COMPLETE"), key=lambda t: t["number"])
        assert g["reached"] == len(at)
        assert g["complete"] == len(done)
        assert g["numbers"] == [t["number"] for t in done]
        assert g["values"] == [t["value"] for t in done]
    assert [g["reached"] for g in view["rungs"]] == [9, 3, 1]
    # The parallel chart and the importance forest see each configuration once too.
    parallel = api.client.get(f"/api/v1/studies/{sid}/parallel", headers=api.reader).json()
    assert parallel["numbers"] == sorted(t["number"] for t in configurations(trials))
    by_number = {t["number"]: t for t in trials}
    assert parallel["values"] == [by_number[n]["value"] for n in parallel["numbers"]]
    # The progress counts configurations, as max_trials does (not the promotions).
    summary = api.client.get(f"/api/v1/studies/{sid}/summary", headers=api.reader).json()
    assert summary["done"] == 9 and summary["counts"]["COMPLETE"] == 13


def test_rungs_without_a_schedule_and_unknown_studies(api):
    sid = api.new_study(max_trials=2)["id"]
    r = api.client.get(f"/api/v1/studies/{sid}/rungs", headers=api.reader)
    assert r.status_code == 200 and r.json()["rungs"] == [] and "no schedule" in r.json()["note"]
    empty = pareto_of(api, sid)
    assert empty["front"] == [] and empty["n_configurations"] == 0
    for path in ("pareto", "rungs"):
        r = api.client.get(f"/api/v1/studies/424242/{path}", headers=api.reader)
        assert r.status_code == 404 and r.json()["error"]["field"] == "study_id", path
        assert api.client.get(f"/api/v1/studies/{sid}/{path}").status_code == 401
    bad = api.client.get(
        f"/api/v1/studies/{sid}/pareto?include_dominated=maybe", headers=api.reader
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "query.include_dominated"


# -- the cost ceiling ----------------------------------------------------------------------
def test_cost_ceiling_refuses_candidates_before_any_worker(api):
    # A probe study tells the GFLOP per image of some fg11 points; the ceiling sits
    # between the cheapest and the dearest.
    probe = api.new_study(**{**FG11_STUDY, "name": "probe", "max_trials": 8, "max_parallel": 8})
    seen = sorted(
        (t for t in trials_of(api, probe["id"]) if t["gflops_per_image"] is not None),
        key=lambda t: t["gflops_per_image"],
    )
    assert len(seen) >= 2 and seen[0]["gflops_per_image"] < seen[-1]["gflops_per_image"]
    cheap, dear = seen[0], seen[-1]
    cap = math.sqrt(cheap["gflops_per_image"] * dear["gflops_per_image"])
    options = {**FG11_STUDY["evaluator_options"], "max_gflops_per_image": cap}
    sid = api.new_study(
        **{**FG11_STUDY, "evaluator_options": options},
        name="capped",
        max_trials=8,
        max_parallel=4,
    )["id"]

    # A user's configuration goes through the same check.
    for t, over in ((dear, True), (cheap, False)):
        r = api.client.post(
            f"/api/v1/studies/{sid}/trials", json={"params": t["params"]}, headers=api.admin
        )
        assert r.status_code == 201, r.text
        got = r.json()
        assert got["source"] == "user" and got["gflops_per_image"] == t["gflops_per_image"]
        if over:
            assert got["state"] == "INFEASIBLE"
            assert f"max_gflops_per_image={cap:g}" in got["reason"]
            assert f"{t['gflops_per_image']:.4g} GFLOP per image" in got["reason"]
        else:
            assert got["state"] == "WAITING" and got["reason"] is None

    wid = api.new_worker()
    claimed: list[dict] = []
    while (
        c := api.client.post(f"/api/v1/workers/{wid}/claim?study={sid}", headers=api.worker)
    ).status_code == 200:
        trial = c.json()["trial"]
        claimed.append(trial)
        api.client.post(
            f"/api/v1/trials/{trial['id']}/complete",
            json={"worker_id": wid, "value": 0.5},
            headers=api.worker,
        )
    trials = trials_of(api, sid)
    over = [t for t in trials if t["gflops_per_image"] > cap]
    assert over, "no candidate over the ceiling: the test proves nothing"
    for t in over:
        assert t["state"] == "INFEASIBLE" and t["worker_id"] is None and t["attempt"] <= 1
        assert "max_gflops_per_image" in t["reason"] or "cap" in t["reason"], t["reason"]
    assert claimed and all(t["gflops_per_image"] <= cap for t in claimed)
    assert not {t["id"] for t in over} & {t["id"] for t in claimed}


# -- the CLI ---------------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_study_best_pareto_prints_the_front(live, monkeypatch):
    from client import Client

    monkeypatch.setenv("ARCHSEARCH_COORDINATOR", live.base_url)
    monkeypatch.setenv("ARCHSEARCH_TOKEN", ADMIN_TOKEN)
    with Client(live.base_url, ADMIN_TOKEN) as c:
        study = c.create_study(
            name="cli pareto",
            dataset="builtin:digits",
            space="pinto-cox",
            algorithm="random",
            max_trials=10,
            max_parallel=4,
            top_k=0,
        )
        wid = c.register_worker("cli").id
        k = 0
        # The live coordinator refills its queue in the background after each report: a
        # claim may briefly find nothing, so run until the study says it is finished.
        deadline = time.monotonic() + 120
        while c.study(study.id).state != "finished":
            assert time.monotonic() < deadline, "the study did not finish"
            if (got := c.claim(wid)) is None:
                time.sleep(0.1)
                continue
            k += 1
            # Odd claims score higher the dearer they are (all on the front), even ones
            # score below all of those (dominated, unless the cheapest).
            g = got.trial.gflops_per_image or 0.0
            value = 0.3 + 0.5 * g / (g + 1) if k % 2 else 0.1 + k / 1000
            c.complete(got.trial.id, wid, value, {"seconds_per_image": 0.002})
        front = c.pareto(study.id)
        assert len(front.front) >= 3 and not front.dominated
        everything = c.pareto(study.id, include_dominated=True)
        assert everything.front == front.front and everything.dominated
    result = CliRunner().invoke(app, ["study", "best", str(study.id), "--pareto"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "#",
        "value",
        "test",
        "GFLOPs",
        "params",
        "features",
        "s/img",
        "rung",
        "architecture",
    ]
    rows = [line for line in lines[1:] if "configurations on the front" not in line]
    assert [int(r.split()[0]) for r in rows] == [p.number for p in front.front]
    for row, p in zip(rows, front.front, strict=True):
        cells = row.split()
        assert cells[1] == f"{p.value:.4f}" and cells[2] == "-"
        assert cells[3] == f"{p.gflops_per_image:.4g}" and cells[4] == f"{p.n_params:,}"
        assert cells[6] == "0.002" and cells[7] == "0"
        assert row.endswith(p.arch_summary)
    assert f"{len(front.front)} of {front.n_configurations} COMPLETE configurations" in (
        result.output
    )
