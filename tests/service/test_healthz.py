"""GET /healthz checks the database: 200 ok, or 503 with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version

import httpx
from fastapi.testclient import TestClient

from archsearch.launch import free_port
from service import __version__
from service.app import create_app
from service.config import Settings


def test_healthz_ok(db_url):
    with TestClient(create_app(Settings(database_url=db_url))) as client:
        r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "db": "ok",
        "version": __version__,
        "suggester": "ok",
    }


def test_service_version_is_the_package_version() -> None:
    """service.__version__ (what /healthz and `archsearch --version` say) is the version of
    the archsearch distribution pip installed from pyproject.toml: the two cannot drift."""
    assert __version__ == version("archsearch")


def test_healthz_503_when_postgres_unreachable():
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    settings = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
    with TestClient(create_app(settings)) as client:
        r = client.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert "OperationalError" in body["db"] and "127.0.0.1" in body["db"]


def test_healthz_503_when_sqlite_file_cannot_be_opened(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    (tmp_path / "missing").write_text("file, so x.db cannot be created under it")
    with TestClient(create_app(settings)) as client:
        r = client.get("/healthz")
    assert r.status_code == 503
    assert "unable to open database file" in r.json()["db"]


def _serve(env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "archsearch", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_serve_after_db_upgrade_answers_healthz_over_http(db_url):
    env = {**os.environ, "ARCHSEARCH_DATABASE_URL": db_url}
    subprocess.run([sys.executable, "-m", "archsearch", "db", "upgrade"], env=env, check=True)
    port = free_port()
    proc = _serve(env, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "coordinator did not start in 30 s"
                time.sleep(0.2)
        assert r.status_code == 200
        assert r.json() == {
            "status": "ok",
            "db": "ok",
            "version": __version__,
            "suggester": "ok",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_serve_refuses_unmigrated_database(sqlite_url):
    env = {**os.environ, "ARCHSEARCH_DATABASE_URL": sqlite_url}
    proc = _serve(env, free_port())
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "run `archsearch db upgrade`" in out
