"""deploy/k8s/, checked without a Kubernetes cluster (none runs here): every overlay
renders (tests/cluster/kustomize.py, and kubectl's kustomize where kubectl is on PATH,
which must agree), every object validates against the schema of a current Kubernetes
release (kubernetes-validate, strict: unknown fields fail), and every command, option and
ARCHSEARCH_* variable the containers use exists in the code; probes, ports, Secrets and
GPU limits agree with each other and with the settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from archsearch.cli import app
from service.config import Settings
from tests.cluster.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("gpu", "cpu", "try")
# The newest Kubernetes release whose schemas the installed kubernetes-validate carries.
KUBERNETES_VERSION = kubernetes_validate.latest_version()
SETTINGS_ENV = {f"ARCHSEARCH_{name.upper()}" for name in Settings.model_fields}


def click_commands() -> dict[tuple[str, ...], Any]:
    """Every command of the CLI by its path, e.g. ("db", "upgrade")."""
    found: dict[tuple[str, ...], Any] = {}

    def walk(cmd: Any, prefix: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            found[(*prefix, name)] = sub
            walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return found


def cli_env() -> set[str]:
    """Every environment variable a CLI option reads (typer ``envvar=``)."""
    names: set[str] = set()
    for cmd in click_commands().values():
        for param in getattr(cmd, "params", []):
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def by_kind(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / request.param)


def test_every_object_validates_against_a_current_kubernetes_schema(overlay):
    name, objects = overlay
    assert tuple(int(x) for x in KUBERNETES_VERSION.split(".")[:2]) >= (1, 33)
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")
        assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == "archsearch"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "archsearch"


def test_what_each_overlay_holds(overlay):
    name, objects = overlay
    kinds = set(by_kind(objects))
    assert {
        ("Namespace", "archsearch"),
        ("Deployment", "archsearch-coordinator"),
        ("Service", "archsearch-coordinator"),
        ("Deployment", "archsearch-worker"),
    } <= kinds
    has_postgres = ("StatefulSet", "archsearch-postgres") in kinds
    assert has_postgres == (name == "try")
    worker = containers(by_kind(objects)[("Deployment", "archsearch-worker")])[0]
    gpus = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
    if name == "gpu":
        assert gpus == 1 and worker["image"] == "archsearch:cuda"
        assert worker["args"] == ["worker", "--device", "cuda"]
    else:
        assert gpus is None and worker["image"] == "archsearch:cpu"
        assert worker["args"] == ["worker", "--device", "cpu"]


def test_commands_options_and_variables_exist_in_the_code(overlay):
    _, objects = overlay
    commands = click_commands()
    known_env = SETTINGS_ENV | cli_env()
    seen = 0
    for obj in objects:
        for c in containers(obj):
            if not c["image"].startswith("archsearch"):
                continue
            seen += 1
            args = c["args"]  # the image's entrypoint is `archsearch`
            words = tuple(a for a in args if not a.startswith("-"))
            path = max((p for p in commands if words[: len(p)] == p), key=len, default=None)
            assert path and not getattr(commands[path], "commands", None), f"{args}: no command"
            options = {o for p in commands[path].params for o in p.opts}
            for flag in (a for a in args if a.startswith("--")):
                assert flag in options, f"{flag} is not an option of archsearch {' '.join(path)}"
            for var in env_of(c):
                assert var in known_env, f"{obj['metadata']['name']}: {var} is read by nothing"
    assert seen >= 3  # migrate, coordinator, worker


def test_probes_ports_secrets_and_the_workers_url_agree(overlay):
    _, objects = overlay
    kinds = by_kind(objects)
    deployment = kinds[("Deployment", "archsearch-coordinator")]
    migrate, serve = containers(deployment)
    assert migrate["args"] == ["db", "upgrade"]
    assert deployment["spec"]["template"]["spec"]["initContainers"] == [migrate]
    env = env_of(serve)
    port = int(env["ARCHSEARCH_PORT"])
    assert port == Settings.model_fields["port"].default and env["ARCHSEARCH_HOST"] == "0.0.0.0"
    assert serve["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert serve[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = kinds[("Service", "archsearch-coordinator")]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    worker = containers(kinds[("Deployment", "archsearch-worker")])[0]
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert env_of(worker)["ARCHSEARCH_COORDINATOR"] == url
    # Secrets: the database URL and admin token only for the coordinator, a worker token
    # (ARCHSEARCH_TOKEN) for the workers; each key is the variable it becomes.
    for c in (migrate, serve, worker):
        for var, source in env_of(c).items():
            if isinstance(source, dict) and "resourceFieldRef" in source:
                # The worker's threads follow its CPU request (workers/threads.py).
                assert var == "ARCHSEARCH_WORKER_THREADS" and c is worker
                assert source["resourceFieldRef"]["resource"] == "requests.cpu"
                assert source["resourceFieldRef"]["containerName"] == worker["name"]
            elif isinstance(source, dict):
                ref = source["secretKeyRef"]
                assert ref["key"] == var
                expected = "archsearch-worker" if c is worker else "archsearch-coordinator"
                assert ref["name"] == expected
    # The memory budget sits below the pod's limit: INFEASIBLE with a reason, not OOM-killed.
    from workers.memory import parse_size

    limit = worker["resources"]["limits"]["memory"]
    budget = parse_size(env_of(worker)["ARCHSEARCH_WORKER_MAX_MEMORY"])
    assert budget < parse_size(limit.removesuffix("i") + "iB" if limit.endswith("i") else limit)
    assert set(env_of(worker)) & {"ARCHSEARCH_ADMIN_TOKEN", "ARCHSEARCH_DATABASE_URL"} == set()
    assert "ADMIN_TOKEN" not in yaml.safe_dump(kinds[("Deployment", "archsearch-worker")])
    assert isinstance(env_of(serve)["ARCHSEARCH_ADMIN_TOKEN"], dict)
    # A pod's SIGTERM gives the trial back at once; the grace period leaves room for it.
    grace = kinds[("Deployment", "archsearch-worker")]["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] >= 30


def test_images_can_be_pointed_at_a_registry(tmp_path):
    overlay = tmp_path / "mine"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [str(K8S / "gpu")],
                "images": [{"name": "archsearch", "newName": "registry.example.com/lab/as"}],
            }
        )
    )
    images = {c["image"] for o in render(overlay) for c in containers(o)}
    assert images == {"registry.example.com/lab/as:cpu", "registry.example.com/lab/as:cuda"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
@pytest.mark.parametrize("name", OVERLAYS)
def test_kubectl_kustomize_renders_the_same(name):
    """The Python renderer is kustomize for this subset: kubectl's agrees, object for
    object (kustomize orders by kind; the comparison does not depend on order)."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    theirs = [d for d in yaml.safe_load_all(done.stdout) if d]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return (o["kind"], o["metadata"]["name"])

    assert sorted(theirs, key=key) == sorted(render(K8S / name), key=key)


def test_the_readme_shows_kubectl_apply_and_the_secrets():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running on Kubernetes") :]
    for name in OVERLAYS:
        assert f"deploy/k8s/{name}" in section
    assert "kubectl apply -k deploy/k8s/" in section
    for secret in ("archsearch-coordinator", "archsearch-worker", "archsearch-postgres"):
        assert secret in section
    assert re.search(r"token create --role worker", section)
