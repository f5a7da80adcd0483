"""A hostile user's smaller holes, on both backends: forged pagination cursors (422 naming
``after``, never a 500), formula injection through the CSV export, the dashboard's
``?token=`` in uvicorn's access log, and out-of-range ids on the read routes."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import random
import time

import httpx
import pytest

from archsearch.launch import start_coordinator, stop_coordinator
from service.api.studies import csv_cell
from service.dashboard.redact import (
    RedactTokens,
    install_access_log_redaction,
    redact_query,
)
from service.models import Role
from tests.helpers.coordinator import ADMIN_TOKEN, make_token, migrate


def error_of(response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def forged_cursors() -> list[str]:
    """Everything but a cursor the route issued."""
    rng = random.Random(20240611)
    as_json = [
        "null",
        "1",
        "1.5",
        '"x"',
        "true",
        "[]",
        "[1]",
        "[1, 2, 3]",
        '{"a": 1, "b": 2}',
        '{"k": 1.0, "n": 2}',
        '["a", "b"]',
        '["1.0", 2]',
        "[1.0, 2.5]",
        "[1.0, true]",
        "[true, 1]",
        "[null, 1]",
        "[1.0, null]",
        "[[1], [2]]",
        "[[[[[[[[1]]]]]]], 1]",
        "[{}, 1]",
        "[1e400, 1]",
        "[-1e400, 1]",
        "[1.0, 1e400]",
        "[NaN, 1]",
        "[Infinity, 1]",
        "[-Infinity, 1]",
        "[1.0, NaN]",
        f"[1.0, {10**30}]",
        f"[{10**400}, 1]",
        f"[1.0, {-(10**30)}]",
        "[1.0, -1]",
        f"[1.0, {2**31}]",
        f"[1.0, {2**63}]",
        "[1.0, 9223372036854775808]",
        '["\u00e9\u4e2d", 1]',
        "[1.0, 1]  ",  # a real cursor's values, spelled differently
        "[1.0,1]",
        "[2.0, 1]",  # number order: the key must be the number
    ]
    cursors = [b64(j.encode()) for j in as_json]
    cursors += [
        "%%%",
        "",
        "=",
        "====",
        "a",
        "abc",
        "not base64 at all!",
        "\u00e9\u00e8\u4e2d\u6587",
        "\U0001f600",
        "x" * 199,
        "A" * 200,
        "A" * 201,
        "A" * 5000,
        "W10",  # "[]" without padding
        b64(b"\xff\xfe\xfd\x00binary"),
        b64(b"not json"),
        b64("[1.0, 1]".encode("utf-16")),
        b64(b"[" * 140 + b"]" * 0),
        b64(b"[" * 100 + b"]" * 100),
        b64(b"[1.0, 1]").rstrip("="),
        b64(b"[1.0, 1]").replace("=", "%3D"),
        b64(b"[1.0, 1]") + "==",
        " " + b64(b"[1.0, 1]"),
        b64(b"[1.0, 1]") + "\n",
        b64(b"[1.0, 1]") + "\x00",
        "0" * 100,
        "9" * 200,
        "NaN",
        "-1",
        "1e999",
    ]
    for _ in range(60):
        n = rng.randint(1, 150)
        cursors.append(b64(bytes(rng.randrange(256) for _ in range(n))))
    for _ in range(20):
        cursors.append("".join(chr(rng.randint(33, 0x2FFF)) for _ in range(rng.randint(1, 60))))
    return cursors


# -- 1. forged cursors -----------------------------------------------------------------------
def test_forged_cursors_are_422_naming_after(api):
    sid = api.new_study(max_trials=6, max_parallel=6)["id"]
    issued = api.client.get(
        f"/api/v1/studies/{sid}/trials", params={"limit": 2}, headers=api.reader
    ).json()["next"]
    assert issued is not None
    for order in ("number", "-number", "value", "-value"):
        for after in forged_cursors():
            if order.endswith("value") and after in (b64(b"[2.0, 1]"),):
                continue  # a well-formed value-order cursor: any (finite key, number) is fine
            r = api.client.get(
                f"/api/v1/studies/{sid}/trials",
                params={"after": after, "order": order},
                headers=api.reader,
            )
            assert r.status_code == 422, (order, after, r.status_code, r.text)
            assert error_of(r)["field"].split(".")[-1] == "after", (after, r.text)
    # The issued cursor still works, in its own order.
    ok = api.client.get(
        f"/api/v1/studies/{sid}/trials", params={"limit": 2, "after": issued}, headers=api.reader
    )
    assert ok.status_code == 200 and [t["number"] for t in ok.json()["trials"]] == [3, 4]


def test_issued_value_cursors_page_through_every_trial(api):
    sid = api.new_study(max_trials=5, max_parallel=5)["id"]
    w = api.new_worker()
    for v in (0.0, 0.25, 1.0):
        t = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()["trial"]
        r = api.client.post(
            f"/api/v1/trials/{t['id']}/complete",
            json={"worker_id": w, "value": v},
            headers=api.worker,
        )
        assert r.status_code == 200, r.text
    for order in ("number", "-number", "value", "-value"):
        seen, after = [], None
        while True:
            params = {"limit": 1, "order": order, **({"after": after} if after else {})}
            r = api.client.get(f"/api/v1/studies/{sid}/trials", params=params, headers=api.reader)
            assert r.status_code == 200, (order, r.text)
            seen += [t["number"] for t in r.json()["trials"]]
            after = r.json()["next"]
            if after is None:
                break
        assert sorted(seen) == [1, 2, 3, 4, 5], order


BAD_TRIALS_PARAMS = [
    {"limit": "0"},
    {"limit": "1001"},
    {"limit": "-1"},
    {"limit": "1e3"},
    {"limit": "99999999999999999999999999"},
    {"limit": "NaN"},
    {"limit": "\u0661"},  # an Arabic-Indic digit
    {"order": "bogus"},
    {"order": "-"},
    {"order": "value;drop"},
    {"state": "NOPE"},
    {"state": "complete\u00e9"},
    {"state": "x" * 5000},
]
BAD_K = ["0", "-1", "1001", "1.5", "NaN", "inf", "9" * 40, "", "\u00e9"]


def test_other_trials_params_and_best_k_are_422_not_500(api):
    sid = api.new_study(max_trials=2, max_parallel=2)["id"]
    for params in BAD_TRIALS_PARAMS:
        r = api.client.get(f"/api/v1/studies/{sid}/trials", params=params, headers=api.reader)
        assert r.status_code == 422, (params, r.text)
        assert error_of(r)["field"].split(".")[-1] == next(iter(params))
    for k in BAD_K:
        r = api.client.get(f"/api/v1/studies/{sid}/best", params={"k": k}, headers=api.reader)
        assert r.status_code == 422, (k, r.text)
        assert error_of(r)["field"].split(".")[-1] == "k"


def test_out_of_range_ids_are_4xx_not_500(api):
    for study_id in ["0", "-1", str(2**63), "9" * 40, "1e3", "NaN"]:
        for suffix in [
            "",
            "/trials",
            "/best",
            "/export",
            "/history",
            "/importance",
            "/parallel",
            "/summary",
            "/trials/1",
        ]:
            r = api.client.get(f"/api/v1/studies/{study_id}{suffix}", headers=api.reader)
            assert r.status_code in (404, 422), (study_id, suffix, r.status_code, r.text)
            error_of(r)
    for path in [f"/studies/{2**63}", f"/studies/1/trials/{2**63}", f"/studies/{10**30}/trials/1"]:
        r = api.client.get(path, headers=api.reader)
        assert r.status_code in (404, 422), (path, r.status_code, r.text)


# -- 2. CSV formula injection ----------------------------------------------------------------
FORMULA_STARTS = ["=", "+", "-", "@", "\t", "\r"]


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("=1+2", "'=1+2"),
        ("+1+2", "'+1+2"),
        ("-1+2", "'-1+2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("-inf", "'-inf"),
        ("-Infinity", "'-Infinity"),
        ("-0.5", "-0.5"),
        ("+1e-3", "+1e-3"),
        ("-12", "-12"),
        ("-.5", "-.5"),
        ("-1E+300", "-1E+300"),
        ("plain", "plain"),
        ("", ""),
        (-0.5, -0.5),
        (None, None),
        (3, 3),
    ],
)
def test_csv_cell(cell, safe):
    assert csv_cell(cell) == safe


def test_csv_export_neutralises_formulas_and_keeps_numbers(api):
    sid = api.new_study(name='=HYPERLINK("http://evil")', max_trials=8, max_parallel=8)["id"]
    w = api.new_worker()
    reasons = {}
    for start in FORMULA_STARTS:
        t = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()["trial"]
        reason = f"{start}cmd|' /C calc'!A0"
        r = api.client.post(
            f"/api/v1/trials/{t['id']}/fail",
            json={"worker_id": w, "kind": "error", "reason": reason},
            headers=api.worker,
        )
        assert r.status_code == 200, r.text
        reasons[t["number"]] = reason
    t = api.client.post(f"/api/v1/workers/{w}/claim", headers=api.worker).json()["trial"]
    r = api.client.post(
        f"/api/v1/trials/{t['id']}/complete",
        json={"worker_id": w, "value": 0.5},
        headers=api.worker,
    )
    assert r.status_code == 200, r.text
    export = api.client.get(f"/api/v1/studies/{sid}/export", headers=api.reader)
    assert export.status_code == 200
    rows = list(csv.reader(io.StringIO(export.text, newline="")))
    header, body = rows[0], rows[1:]
    by_number = {int(row[0]): dict(zip(header, row, strict=True)) for row in body}
    for number, reason in reasons.items():
        assert by_number[number]["reason"] == "'" + reason
    assert by_number[t["number"]]["value"] == "0.5"  # (scores are in [0, 1]: csv_cell
    # keeps negative numbers, see test_csv_cell)
    for row in body:
        for cell in row:
            if cell.startswith(tuple(FORMULA_STARTS)):
                float(cell)  # only plain numbers may start so
    # Params stay JSON numbers (a negative one too, were there any), never quoted.
    for row in body:
        for name, cell in zip(header, row, strict=True):
            if name.startswith("param:") and cell:
                json.loads(cell)


# -- 3. the dashboard's ?token= in the access log ---------------------------------------------
def test_redact_query():
    assert redact_query("/?token=abc") == "/?token=[redacted]"
    assert redact_query("/studies/1?partial=1&token=abc&x=2") == (
        "/studies/1?partial=1&token=[redacted]&x=2"
    )
    assert redact_query("/?%74oken=abc&TOKEN=def") == "/?%74oken=[redacted]&TOKEN=[redacted]"
    assert redact_query('1.2.3.4 - "GET /?token=abc HTTP/1.1" 303') == (
        '1.2.3.4 - "GET /?token=[redacted] HTTP/1.1" 303'
    )
    assert redact_query("/?tokens=1&mytoken=2") == "/?tokens=1&mytoken=2"
    assert redact_query("/plain") == "/plain"


def test_access_log_filter_rewrites_records():
    install_access_log_redaction()
    install_access_log_redaction()
    logger = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, RedactTokens) for f in logger.filters) == 1
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/?token=s3cret", "1.1", 303),
        None,
    )
    assert RedactTokens().filter(record)
    assert "s3cret" not in record.getMessage()


def test_live_access_log_never_shows_the_token(db_url, capfd):
    migrate(db_url)
    reader = make_token(db_url, Role.READER)
    bad = "wrong-token-0123456789-SECRET"
    # uvicorn writes its access log to stdout at level info: let the child inherit ours.
    live = start_coordinator(
        db_url, admin_token=ADMIN_TOKEN, env={"ARCHSEARCH_LOG_LEVEL": "info"}, quiet=False
    )
    try:
        with httpx.Client(base_url=live.base_url, timeout=10) as client:
            r = client.get("/", params={"token": reader})
            assert r.status_code == 303 and "token" not in r.headers["location"]
            assert f"archsearch_token={reader}" in r.headers["set-cookie"]
            assert "httponly" in r.headers["set-cookie"].lower()
            r = client.get(f"/workers?partial=1&token={reader}")
            assert r.status_code == 303 and r.headers["location"] == "/workers?partial=1"
            assert client.get(f"/?%74oken={reader}").status_code == 303
            assert client.get("/", params={"token": bad}).status_code == 401
        deadline = time.monotonic() + 10
        out = ""
        while time.monotonic() < deadline:
            out += capfd.readouterr().out
            if out.count("token=[redacted]") >= 3 and "oken=[redacted]" in out:
                break
            time.sleep(0.1)
    finally:
        stop_coordinator(live)
    out += capfd.readouterr().out
    text = out + live.log()
    assert '"GET /?token=[redacted] HTTP/1.1" 303' in text, text[-3000:]
    assert '"GET /?%74oken=[redacted] HTTP/1.1" 303' in text, text[-3000:]
    assert reader not in text and bad not in text


def test_a_cursor_of_the_previous_version_still_pages(api):
    """Before 0.2 a number-order cursor was spelled [5, 5]; clients paging across the
    upgrade keep going."""
    sid = api.new_study(max_trials=4, max_parallel=4)["id"]
    old = b64(b"[1, 1]")
    r = api.client.get(
        f"/api/v1/studies/{sid}/trials", params={"after": old, "limit": 10}, headers=api.reader
    )
    assert r.status_code == 200, r.text
    assert [t["number"] for t in r.json()["trials"]] == [2, 3, 4]
