"""The results dashboard: pages, the /api/v1 results queries behind its charts, auth for
browsers, escaping. Studies are filled through the API (claim -> complete / fail), on
SQLite and PostgreSQL."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from markupsafe import escape

HOSTILE = "<script>alert(1)</script>"
# Scores handed out in claim order; every 4th claim fails (error), every 5th is infeasible.
SCORES = [0.31, 0.52, 0.47, 0.71, 0.66, 0.69, 0.93, 0.88, 0.12, 0.95, 0.5, 0.4]


@dataclass
class Filled:
    study_id: int
    worker_id: int
    running_number: int  # the trial left RUNNING at the end
    trials: list[dict]  # every trial, by number, as GET /trials lists them


def fill(
    api,
    *,
    name: str = "dash",
    reason: str = "worker error: CUDA <oom> & more",
    worker: str = "gpu01",
    max_trials: int = 20,
) -> Filled:
    """A study filled with real trials: COMPLETE with known scores, FAILED and INFEASIBLE
    with reasons, intermediate values on the first trial, and one trial left RUNNING."""
    sid = api.new_study(name=name, max_trials=max_trials, max_parallel=3)["id"]
    r = api.client.post(
        "/api/v1/workers",
        json={"name": worker, "device": "cuda:0", "host": "node1"},
        headers=api.worker,
    )
    wid = r.json()["id"]
    k = 0
    running = None
    while True:
        claim = api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
        if claim.status_code == 204:
            break
        trial = claim.json()["trial"]
        k += 1
        if k == 1:
            for step, value in [(1, 0.1), (2, 0.2), (3, 0.25)]:
                api.client.post(
                    f"/api/v1/trials/{trial['id']}/heartbeat",
                    json={"worker_id": wid, "step": step, "value": value},
                    headers=api.worker,
                )
        if k == 9:  # leave it RUNNING: the worker's current trial
            running = trial["number"]
            break
        if k % 4 == 0:
            body = {"worker_id": wid, "kind": "error", "reason": reason}
            done = api.client.post(
                f"/api/v1/trials/{trial['id']}/fail", json=body, headers=api.worker
            )
        elif k % 5 == 0:
            body = {"worker_id": wid, "kind": "infeasible", "reason": "too small: 2x2 map"}
            done = api.client.post(
                f"/api/v1/trials/{trial['id']}/fail", json=body, headers=api.worker
            )
        else:
            done = api.client.post(
                f"/api/v1/trials/{trial['id']}/complete",
                json={"worker_id": wid, "value": SCORES[k % len(SCORES)]},
                headers=api.worker,
            )
        assert done.status_code == 200, done.text
    assert running is not None, "the study ran out of trials before the 9th claim"
    trials = api.client.get(f"/api/v1/studies/{sid}/trials?limit=1000", headers=api.reader).json()[
        "trials"
    ]
    return Filled(sid, wid, running, trials)


def esc(text: str) -> str:
    """``text`` as the templates escape it (Jinja2 autoescape, markupsafe)."""
    return str(escape(text))


def get_json(api, path: str) -> dict:
    r = api.client.get(path, headers=api.reader)
    assert r.status_code == 200, r.text
    return r.json()


def varying_labels(params: list[dict]) -> set[str]:
    labels = {label for p in params for label in p}
    return {label for label in labels if len({p.get(label, "absent") for p in params}) > 1}


# -- JSON: the results queries -----------------------------------------------------------
def test_history_is_the_hand_computed_best_so_far(api):
    f = fill(api)
    got = get_json(api, f"/api/v1/studies/{f.study_id}/history")
    assert got["study_id"] == f.study_id
    best, expected = None, []
    for t in f.trials:
        if t["state"] == "COMPLETE" and (best is None or t["value"] > best):
            best = t["value"]
        expected.append(
            {"number": t["number"], "state": t["state"], "value": t["value"], "best_so_far": best}
        )
    assert got["points"] == expected
    curve = [p["best_so_far"] for p in got["points"] if p["best_so_far"] is not None]
    assert curve and curve == sorted(curve)  # non-decreasing
    assert curve[-1] == max(t["value"] for t in f.trials if t["state"] == "COMPLETE")


def test_importance_covers_every_varying_label_and_sums_to_one(api):
    f = fill(api)
    complete = [t for t in f.trials if t["state"] == "COMPLETE"]
    assert len(complete) >= 5
    got = get_json(api, f"/api/v1/studies/{f.study_id}/importance")
    assert got["n_complete"] == len(complete) and got["note"] is None
    labels = [i["label"] for i in got["importances"]]
    assert len(labels) == len(set(labels))
    assert set(labels) == varying_labels([t["params"] for t in complete])
    assert math.isclose(sum(i["importance"] for i in got["importances"]), 1.0, abs_tol=1e-9)
    assert all(i["importance"] >= 0 for i in got["importances"])
    values = [i["importance"] for i in got["importances"]]
    assert values == sorted(values, reverse=True)
    # Cached per COMPLETE count: the same answer until another trial completes.
    assert get_json(api, f"/api/v1/studies/{f.study_id}/importance") == got


def test_importance_explains_why_it_is_empty(api):
    sid = api.new_study()["id"]
    got = get_json(api, f"/api/v1/studies/{sid}/importance")
    assert got["importances"] == [] and "at least 5" in got["note"]


def test_parallel_lists_complete_trials_column_by_column(api):
    f = fill(api)
    complete = [t for t in f.trials if t["state"] == "COMPLETE"]
    got = get_json(api, f"/api/v1/studies/{f.study_id}/parallel")
    assert got["numbers"] == [t["number"] for t in complete]
    assert got["values"] == [t["value"] for t in complete]
    axes = {a["label"]: a for a in got["axes"]}
    assert set(axes) == varying_labels([t["params"] for t in complete])
    for label, axis in axes.items():
        assert axis["values"] == [t["params"].get(label) for t in complete]
    assert axes["depth"]["options"] == ["1 layers", "2 layers", "3 layers"]
    picked = list(axes)[:2][::-1]
    query = "&".join(f"labels={label}" for label in [*picked, "no-such-label"])
    few = get_json(api, f"/api/v1/studies/{f.study_id}/parallel?{query}")
    assert [a["label"] for a in few["axes"]] == picked


def test_summary_counts_leaderboard_and_failures(api):
    f = fill(api)
    got = get_json(api, f"/api/v1/studies/{f.study_id}/summary")
    expected = {}
    for t in f.trials:
        expected[t["state"]] = expected.get(t["state"], 0) + 1
    assert {k: v for k, v in got["counts"].items() if v} == expected
    assert got["done"] == sum(v for k, v in expected.items() if k not in ("WAITING", "RUNNING"))
    assert got["workers_busy"] == 1
    best = get_json(api, f"/api/v1/studies/{f.study_id}/best?k=10")["trials"]
    assert [(r["number"], r["value"], r["arch_summary"]) for r in got["leaderboard"]] == [
        (t["number"], t["value"], t["arch_summary"]) for t in best
    ]
    failed = [t for t in f.trials if t["state"] in ("FAILED", "INFEASIBLE")]
    assert got["failures_total"] == len(failed)
    assert [(r["number"], r["reason"]) for r in got["failures"]] == [
        (t["number"], t["reason"]) for t in sorted(failed, key=lambda t: -t["number"])
    ]
    assert {(r["state"], r["reason"]) for r in got["reasons"]} == {
        (t["state"], t["reason"]) for t in failed
    }
    assert sum(r["count"] for r in got["reasons"]) == len(failed)


def test_workers_status(api_factory):
    api = api_factory(lease_seconds=0.25)
    f = fill(api)
    idle = api.client.post("/api/v1/workers", json={"name": "idle"}, headers=api.worker)
    got = get_json(api, "/api/v1/workers/status")
    assert got["alive_within_seconds"] == 0.5
    by_id = {w["id"]: w for w in got["workers"]}
    me = by_id[f.worker_id]
    assert me["device"] == "cuda:0" and me["host"] == "node1" and me["alive"]
    assert me["current"]["study_id"] == f.study_id
    assert me["current"]["number"] == f.running_number
    ended = [
        t
        for t in f.trials
        if t["state"] not in ("WAITING", "RUNNING") and t["worker_id"] == f.worker_id
    ]
    assert me["trials_done"] == len(ended)
    other = by_id[idle.json()["id"]]
    assert other["current"] is None and other["trials_done"] == 0
    import time

    time.sleep(0.7)  # past 2 x the lease without a heartbeat: no longer alive
    later = {w["id"]: w for w in get_json(api, "/api/v1/workers/status")["workers"]}
    assert not later[f.worker_id]["alive"] and later[f.worker_id]["seconds_since_seen"] > 0.5


# -- pages --------------------------------------------------------------------------------
def test_pages_show_the_study(api):
    f = fill(api, name="mnist-tpe")
    summary = get_json(api, f"/api/v1/studies/{f.study_id}/summary")
    index = api.client.get("/", headers=api.reader)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "mnist-tpe" in index.text and f"{summary['done']}/20" in index.text
    assert f'href="/studies/{f.study_id}"' in index.text

    page = api.client.get(f"/studies/{f.study_id}", headers=api.reader)
    assert page.status_code == 200
    text = page.text
    for chart in ("chart-best", "chart-scores", "chart-parallel", "chart-importance"):
        assert f'id="{chart}"' in text
    assert "/static/plotly.min.js" in text and "/static/dashboard.js" in text
    top = summary["leaderboard"][0]
    assert esc(top["arch_summary"]) in text
    assert f"{top['value']:.4g}" in text
    assert esc("worker error: CUDA <oom> & more") in text
    assert "too small: 2x2 map" in text
    assert f"RUNNING {summary['counts']['RUNNING']}" in text

    partial = api.client.get(f"/studies/{f.study_id}?partial=1", headers=api.reader)
    assert partial.text.lstrip().startswith('<div id="live" data-version=')
    assert "<html" not in partial.text

    first = f.trials[0]
    trial = api.client.get(f"/studies/{f.study_id}/trials/{first['number']}", headers=api.reader)
    assert trial.status_code == 200
    assert esc(first["arch_summary"]) in trial.text
    assert '"layers": [' in trial.text  # the arch JSON, pretty
    assert "depth" in trial.text and "gpu01" in trial.text
    assert 'id="chart-intermediate"' in trial.text
    assert " layers</code>" in trial.text  # a choice shows the option it picks

    failed = next(t for t in f.trials if t["state"] == "FAILED")
    page = api.client.get(f"/studies/{f.study_id}/trials/{failed['number']}", headers=api.reader)
    assert page.status_code == 200 and esc(failed["reason"]) in page.text
    assert "Ran for" in page.text and "Attempt" in page.text

    workers = api.client.get("/workers", headers=api.reader)
    assert workers.status_code == 200
    assert "gpu01" in workers.text and "alive" in workers.text and "cuda:0" in workers.text
    assert f'href="/studies/{f.study_id}/trials/{f.running_number}"' in workers.text


def test_finished_study_shows_test_scores(api):
    sid = api.new_study(name="finals", max_trials=4, max_parallel=2, top_k=2)["id"]
    wid = api.new_worker()
    k = 0
    while (
        claim := api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
    ).status_code == 200:
        trial = claim.json()["trial"]
        k += 1
        value = 0.5 + k / 100
        api.client.post(
            f"/api/v1/trials/{trial['id']}/complete",
            json={"worker_id": wid, "value": value},
            headers=api.worker,
        )
    got = get_json(api, f"/api/v1/studies/{sid}/summary")
    rescored = min(2, got["counts"]["COMPLETE"])
    assert rescored >= 1
    assert got["state"] == "finished" and got["finals"]["COMPLETE"] == rescored
    assert got["done"] == got["max_trials"] == 4
    tests = [r["test_value"] is not None for r in got["leaderboard"]]
    assert tests == [True] * rescored + [False] * (len(tests) - rescored)
    history = get_json(api, f"/api/v1/studies/{sid}/history")["points"]
    assert len(history) == 4  # the final re-scores are not search history
    best = got["leaderboard"][0]
    page = api.client.get(f"/studies/{sid}", headers=api.reader).text
    assert f"{best['test_value']:.4g}" in page and "test re-scores" in page
    trial = api.client.get(f"/studies/{sid}/trials/{best['number']}", headers=api.reader).text
    assert "Test re-score" in trial


def test_unknown_study_or_trial_is_404(api):
    sid = api.new_study()["id"]
    for path in ("/studies/424242", f"/studies/{sid}/trials/99999", "/studies/424242/trials/1"):
        r = api.client.get(path, headers=api.reader)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")
    for path in ("history", "importance", "parallel", "summary"):
        r = api.client.get(f"/api/v1/studies/424242/{path}", headers=api.reader)
        assert r.status_code == 404 and r.json()["error"]["field"] == "study_id"


def test_hostile_strings_are_escaped(api):
    evil_reason = '<img src=x onerror="alert(2)">'
    f = fill(api, name=HOSTILE, reason=evil_reason, worker="<b>w</b>")
    failed = next(t for t in f.trials if t["state"] == "FAILED")
    pages = [
        "/",
        f"/studies/{f.study_id}",
        f"/studies/{f.study_id}?partial=1",
        f"/studies/{f.study_id}/trials/{failed['number']}",
        "/workers",
    ]
    for path in pages:
        text = api.client.get(path, headers=api.reader).text
        assert HOSTILE not in text and evil_reason not in text and "<b>w</b>" not in text, path
    assert esc(HOSTILE) in api.client.get("/", headers=api.reader).text
    study = api.client.get(f"/studies/{f.study_id}", headers=api.reader).text
    assert esc(evil_reason) in study
    assert "&lt;b&gt;w&lt;/b&gt;" in api.client.get("/workers", headers=api.reader).text


# -- auth ---------------------------------------------------------------------------------
def test_closed_reads_need_a_token_header_cookie_or_query(api):
    f = fill(api)
    paths = ["/", f"/studies/{f.study_id}", f"/studies/{f.study_id}/trials/1", "/workers"]
    json_paths = [
        f"/api/v1/studies/{f.study_id}/{p}"
        for p in ("history", "importance", "parallel", "summary")
    ]
    json_paths.append("/api/v1/workers/status")
    reader_token = api.reader["Authorization"].split()[1]
    for path in paths:
        r = api.client.get(path)
        assert r.status_code == 401 and "?token=" in r.text, path
        assert api.client.get(path, headers=api.reader).status_code == 200
    for path in json_paths:
        r = api.client.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
    assert api.client.get(paths[1], headers={"Authorization": "Bearer nope"}).status_code == 401

    # ?token= checks the token, sets the cookie and drops the token from the URL.
    bad = api.client.get(f"{paths[1]}?token=not-a-token", follow_redirects=False)
    assert bad.status_code == 401 and "archsearch_token" not in bad.headers.get("set-cookie", "")
    ok = api.client.get(f"{paths[1]}?partial=1&token={reader_token}", follow_redirects=False)
    assert ok.status_code == 303
    assert ok.headers["location"] == f"/studies/{f.study_id}?partial=1"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"archsearch_token={reader_token}")
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    api.client.cookies.set("archsearch_token", reader_token)
    for path in paths + json_paths:
        r = api.client.get(path)
        assert r.status_code == 200, path
    # The cookie is a reader credential only: it never authorises a write.
    api.client.cookies.set("archsearch_token", api.admin["Authorization"].split()[1])
    r = api.client.post("/api/v1/studies", json={"name": "x", "dataset": "builtin:digits"})
    assert r.status_code == 401
    api.client.cookies.clear()
    out = api.client.get("/logout", follow_redirects=False)
    assert out.status_code == 303 and 'archsearch_token=""' in out.headers["set-cookie"]


def test_open_reads_need_no_token(api_factory):
    api = api_factory(open_reads=True)
    sid = api.new_study()["id"]
    api.new_worker()
    for path in [
        "/",
        f"/studies/{sid}",
        f"/studies/{sid}/trials/1",
        "/workers",
        f"/api/v1/studies/{sid}/history",
        f"/api/v1/studies/{sid}/importance",
        f"/api/v1/studies/{sid}/parallel",
        "/api/v1/workers/status",
    ]:
        assert api.client.get(path).status_code == 200, path
    # A stale cookie does not lock anyone out of an open dashboard.
    api.client.cookies.set("archsearch_token", "revoked")
    assert api.client.get("/").status_code == 200


def test_worker_and_reader_roles_may_read_the_dashboard(api):
    api.new_study()
    for headers in (api.reader, api.worker, api.admin):
        assert api.client.get("/workers", headers=headers).status_code == 200


# -- static files and the OpenAPI contract --------------------------------------------------
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_static_files_and_plotly_are_served_locally(api):
    plain = api.client.get("/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "javascript" in plain.headers["content-type"]
    assert b"plotly.js" in plain.content[:400] and len(plain.content) > 1_000_000
    zipped = api.client.get("/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers.get("content-encoding") == "gzip"
    assert zipped.content == plain.content  # httpx decodes it
    etag = plain.headers["etag"]
    again = api.client.get("/static/plotly.min.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    for path, kind in (("/static/dashboard.js", "javascript"), ("/static/dashboard.css", "css")):
        r = api.client.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"], path


@SQLITE_ONLY
def test_openapi_documents_the_results_queries(api):
    doc = api.client.get("/openapi.json").json()
    expected = {
        "/api/v1/studies/{study_id}/history": "History",
        "/api/v1/studies/{study_id}/importance": "Importance",
        "/api/v1/studies/{study_id}/parallel": "Parallel",
        "/api/v1/studies/{study_id}/pareto": "ParetoOut",
        "/api/v1/studies/{study_id}/rungs": "Rungs",
        "/api/v1/studies/{study_id}/summary": "StudySummary",
        "/api/v1/workers/status": "WorkersStatus",
    }
    for path, model in expected.items():
        get = doc["paths"][path]["get"]
        schema = get["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(f"/{model}"), path
        assert "401" in get["responses"]
    assert "HistoryPoint" in doc["components"]["schemas"]
    assert "/studies/{study_id}" in doc["paths"]


@SQLITE_ONLY
def test_openapi_documents_the_model_pictures(api):
    """The trial page's pictures (tests/service/test_model_view.py tests them)."""
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in (
        "/studies/{study_id}/trials/{number}/filters.png",
        "/studies/{study_id}/trials/{number}/features/{stage}.png",
    ):
        responses = paths[path]["get"]["responses"]
        assert "image/png" in responses["200"]["content"], path
        assert {"401", "404", "422", "503"} <= set(responses), path


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "\u2013"),
        (0.25, "250 ms"),
        (12.34, "12.3 s"),
        (245, "4 min 05 s"),
        (7380, "2 h 03 min"),
    ],
)
def test_duration_format(seconds, text):
    from service.dashboard.routes import fmt_duration

    assert fmt_duration(seconds) == text


# -- cost, the Pareto front, the rungs and blends on the pages ---------------------------------
SCHEDULE = {"kind": "asha", "resource": "train_per_class", "min": 10, "max": 90, "eta": 3}


def add_blend(db_url: str, study_id: int, members: list[dict], weights: str = "validation") -> int:
    """A blend trial of ``members`` (trials as GET /trials lists them), queued through the
    trial store in the row format of docs/design.md; returns its number."""
    from service.db import make_engine, session_factory
    from service.models import TrialSource
    from service.trial_store import NewTrial, TrialStore

    ids = [m["id"] for m in members]
    engine = make_engine(db_url)
    try:
        store = TrialStore(session_factory(engine), lease_seconds=30, max_attempts=2)
        with store.transaction(lock_study=study_id) as s:
            rows = store.add_trials(
                s,
                study_id,
                [
                    NewTrial(
                        params={"members": ids, "weights": weights},
                        arch={"members": [m["arch"] for m in members]},
                        config_hash=f"blend:{weights}:{','.join(map(str, ids))}",
                        source=TrialSource.BLEND,
                        priority=0,
                    )
                ],
            )
            return rows[0].number
    finally:
        engine.dispose()


def test_blend_rows_show_their_scores_and_link_to_their_members(api):
    f = fill(api, max_trials=30)
    leaders = get_json(api, f"/api/v1/studies/{f.study_id}/summary")["leaderboard"][:3]
    by_number = {t["number"]: t for t in f.trials}
    members = [by_number[r["number"]] for r in leaders]
    number = add_blend(api.url, f.study_id, members)

    # Before it ran: listed with its state, no scores yet.
    waiting = get_json(api, f"/api/v1/studies/{f.study_id}/summary")["blends"]
    assert [(b["number"], b["state"], b["value"]) for b in waiting] == [(number, "WAITING", None)]

    wid = api.new_worker("blender")  # f.worker_id holds a RUNNING trial: it gets that back
    claim = api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
    blend = claim.json()["trial"]
    assert blend["source"] == "blend" and blend["number"] == number
    weights = [0.5, 0.3, 0.2]
    done = api.client.post(
        f"/api/v1/trials/{blend['id']}/complete",
        json={
            "worker_id": wid,
            "value": 0.97,
            "metrics": {"test_value": 0.91, "weights": weights, "members": 3},
        },
        headers=api.worker,
    )
    assert done.status_code == 200, done.text

    got = get_json(api, f"/api/v1/studies/{f.study_id}/summary")
    assert len(got["blends"]) == 1
    row = got["blends"][0]
    assert (row["number"], row["state"], row["value"], row["test_value"]) == (
        number,
        "COMPLETE",
        0.97,
        0.91,
    )
    assert row["weights"] == "validation"
    assert [(m["number"], m["value"], m["weight"]) for m in row["members"]] == [
        (t["number"], t["value"], w) for t, w in zip(members, weights, strict=True)
    ]
    # A blend is not a search trial: not ranked, not search history.
    assert number not in [r["number"] for r in got["leaderboard"]]
    history = get_json(api, f"/api/v1/studies/{f.study_id}/history")["points"]
    assert number not in [p["number"] for p in history]

    page = api.client.get(f"/studies/{f.study_id}", headers=api.reader).text
    blend_row = page[
        page.index(f'data-blend="{number}"') : page.index(
            "</tr>", page.index(f'data-blend="{number}"')
        )
    ]
    assert "blend of" in blend_row and "0.97" in blend_row and "0.91" in blend_row
    for t in members:
        assert f'href="/studies/{f.study_id}/trials/{t["number"]}">#{t["number"]}</a>' in blend_row

    trial = api.client.get(f"/studies/{f.study_id}/trials/{number}", headers=api.reader)
    assert trial.status_code == 200
    assert 'id="blend-members"' in trial.text and 'id="model"' not in trial.text
    for t in members:
        assert f'href="/studies/{f.study_id}/trials/{t["number"]}">{t["number"]}</a>' in trial.text
        assert esc(t["arch_summary"]) in trial.text
    # The model pictures of a blend: no single architecture to draw, a 404 page (no 500).
    png = api.client.get(f"/studies/{f.study_id}/trials/{number}/filters.png", headers=api.reader)
    assert png.status_code == 404


def test_study_page_shows_cost_columns_and_the_new_charts(api):
    f = fill(api)
    page = api.client.get(f"/studies/{f.study_id}", headers=api.reader).text
    assert 'id="chart-pareto"' in page and 'id="chart-rungs"' not in page
    summary = get_json(api, f"/api/v1/studies/{f.study_id}/summary")
    by_number = {t["number"]: t for t in f.trials}
    assert summary["schedule"] is None
    for r in summary["leaderboard"]:
        t = by_number[r["number"]]
        assert r["gflops_per_image"] == t["gflops_per_image"] and r["n_params"] == t["n_params"]
        assert r["rung"] == 0 and r["seconds_per_image"] is None
    top = summary["leaderboard"][0]
    leaderboard = page[page.index('id="leaderboard"') :]
    assert "GFLOPs" in leaderboard and "Params" in leaderboard
    assert f"{top['gflops_per_image']:.3g}" in leaderboard and f"{top['n_params']:,}" in leaderboard

    sid = api.new_study(name="asha", max_trials=9, max_parallel=3, schedule=SCHEDULE)["id"]
    page = api.client.get(f"/studies/{sid}", headers=api.reader).text
    assert 'id="chart-pareto"' in page and 'id="chart-rungs"' in page
    assert "ASHA over train_per_class, eta 3" in page


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "\u2013"), (2.5, "2.5 s"), (0.00123, "1.23 ms"), (4.2e-5, "42 \u00b5s")],
)
def test_per_image_format(seconds, text):
    from service.dashboard.routes import fmt_per_image

    assert fmt_per_image(seconds) == text
