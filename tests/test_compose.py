"""docker-compose.yml and the Dockerfile, checked without a Docker engine (none runs here):
the YAML parses, every command exists in the CLI, every ARCHSEARCH_* variable is one the
code reads, ports and health checks agree with the settings, COPY sources exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

from archsearch.cli import app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Variables the CLI reads besides the Settings fields (typer envvar=...).
CLI_ENV = {"ARCHSEARCH_COORDINATOR", "ARCHSEARCH_TOKEN", "ARCHSEARCH_WORKER_DATA_DIR"}
SETTINGS_ENV = {f"ARCHSEARCH_{name.upper()}" for name in Settings.model_fields}


def cli_commands() -> set[tuple[str, ...]]:
    """Every command path of the typer app, e.g. ("db", "upgrade")."""
    click_app = typer.main.get_command(app)
    paths: set[tuple[str, ...]] = set()

    def walk(cmd, prefix: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.add((*prefix, name))
            walk(sub, (*prefix, name))

    walk(click_app, ())
    return paths


def test_services_and_dependencies():
    services = COMPOSE["services"]
    assert {"db", "coordinator", "worker", "worker-cpu"} <= set(services)
    assert services["coordinator"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["coordinator"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert "pgdata:/var/lib/postgresql/data" in services["db"]["volumes"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert "deploy" not in services["worker-cpu"]


@pytest.mark.parametrize("service", ["coordinator", "worker", "worker-cpu"])
def test_commands_exist_in_the_cli(service):
    spec = COMPOSE["services"][service]
    command = spec["command"]
    text = " ".join(command)
    # Each `archsearch ...` in a shell string, or the argv after the image's entrypoint.
    invocations = re.findall(r"archsearch ((?:[a-z-]+ ?)+)", text)
    if spec.get("entrypoint") is None:
        invocations.append(" ".join(command))
    assert invocations, f"{service} runs no archsearch command"
    known = cli_commands()
    for inv in invocations:
        words = tuple(w for w in inv.split() if not w.startswith("-"))
        assert any(words[: len(path)] == path for path in known), f"{inv!r} is not a command"
        for flag in re.findall(r"--[a-z-]+", inv):
            sub = typer.main.get_command(app)
            for w in words:
                sub = sub.commands[w] if hasattr(sub, "commands") and w in sub.commands else sub
            opts = {o for p in sub.params for o in p.opts}
            assert flag in opts, f"{flag} is not an option of {' '.join(words)}"


def test_environment_names_are_read_by_the_code():
    for name, spec in COMPOSE["services"].items():
        env = spec.get("environment") or {}
        for key in env:
            if key.startswith("ARCHSEARCH_"):
                assert key in SETTINGS_ENV | CLI_ENV, f"{name}: {key} is read by nothing"
    for key in re.findall(r"ENV ((?:\s*ARCHSEARCH_\w+=\S+\s*\\?)+)", DOCKERFILE):
        for var in re.findall(r"(ARCHSEARCH_\w+)=", key):
            assert var in SETTINGS_ENV | CLI_ENV, f"Dockerfile: {var} is read by nothing"


def test_ports_and_healthcheck_match_the_settings():
    coord = COMPOSE["services"]["coordinator"]
    port = int(coord["environment"]["ARCHSEARCH_PORT"])
    assert coord["ports"] == [f"{port}:{port}"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(coord["healthcheck"]["test"])
    assert f"EXPOSE {port}" in DOCKERFILE
    assert Settings.model_fields["port"].default == port
    worker_env = COMPOSE["services"]["worker"]["environment"]
    assert worker_env["ARCHSEARCH_COORDINATOR"] == f"http://coordinator:{port}"
    assert coord["environment"]["ARCHSEARCH_DATABASE_URL"].startswith(
        "postgresql+psycopg://archsearch:"
    )


def test_dockerfile_copies_what_exists_and_installs_the_pinned_torch():
    for src in re.findall(r"^COPY (.+?) \S+$", DOCKERFILE, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    assert 'ENTRYPOINT ["archsearch"]' in DOCKERFILE
    pinned = re.search(r'TORCH_SPEC="torch==([\d.]+)"', DOCKERFILE).group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"TORCH_VERSION \?= {re.escape(pinned)}\b", makefile)


def _runs_a_worker(spec: dict) -> bool:
    return bool(re.search(r"(^|archsearch )worker\b", " ".join(spec.get("command") or [])))


def test_workers_get_a_worker_token_never_the_admin_token():
    """The admin token stays with the coordinator; workers get ARCHSEARCH_TOKEN from
    ARCHSEARCH_WORKER_TOKEN (a token made with `archsearch token create --role worker`)."""
    workers = {n: s for n, s in COMPOSE["services"].items() if _runs_a_worker(s)}
    assert {"worker", "worker-cpu"} <= set(workers)
    for name, spec in workers.items():
        assert "ADMIN_TOKEN" not in yaml.safe_dump(spec), f"{name} can see the admin token"
        env = spec["environment"]
        assert "ARCHSEARCH_ADMIN_TOKEN" not in env
        assert env["ARCHSEARCH_TOKEN"] == "${ARCHSEARCH_WORKER_TOKEN:-}"
        # No token on a command line (ps shows it), and no start without one.
        command = " ".join(spec["command"])
        assert "--token" not in command and "TOKEN}" not in command
        assert 'test -n "$$ARCHSEARCH_TOKEN"' in command
    # Only the coordinator reads the admin token.
    for name, spec in COMPOSE["services"].items():
        if "ADMIN_TOKEN" in yaml.safe_dump(spec):
            assert name == "coordinator", f"{name} can see the admin token"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "token create --role worker" in text
