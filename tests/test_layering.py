"""The packages import each other in one direction only (docs/design.md section 1).

    archsearch (CLI, demo)          may import everything below
    service (coordinator)           search_space, protocol          never workers, archsearch
    workers (daemon, evaluators)    search_space, protocol, client   never service, archsearch
    client                          protocol
    search_space                    protocol
    protocol                        nothing of ours

Checked on the source (every ``import`` and ``from ... import``, at any depth, lazy ones
included), so an import hidden inside a function fails the test as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "search_space", "client", "workers", "service", "archsearch")
ALLOWED = {
    "protocol": set(),
    "search_space": {"protocol"},
    "client": {"protocol"},
    "workers": {"protocol", "search_space", "client"},
    "service": {"protocol", "search_space", "migrations"},
    "archsearch": {"protocol", "search_space", "client", "workers", "service"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package of ours, line) for every absolute import in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in (*PACKAGES, "migrations", "tests", "bench"):
                found.add((top, node.lineno))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_its_layer_allows(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for path in files
        for top, line in sorted(imported_packages(path))
        if top != package and top not in ALLOWED[package]
    ]
    assert not broken, "layering broken:\n" + "\n".join(broken)


def test_the_checker_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from workers.daemon import WorkerDaemon\n    import service.app\n"
    )
    assert imported_packages(probe) == {("workers", 2), ("service", 3)}


def test_protocol_loads_without_the_server_or_torch():
    """A client or a worker imports the protocol without pulling in the coordinator."""
    import subprocess
    import sys

    code = (
        "import sys, protocol, client\n"
        "heavy = sorted(m for m in ('service', 'workers', 'torch', 'fastapi', 'sqlalchemy') "
        "if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_dashboard_does_not_import_the_api_package():
    """service.api serves the dashboard's data as JSON, so it imports service.dashboard;
    the other direction would be a cycle (shared code lives in service.views/deps)."""
    broken = []
    for path in sorted((ROOT / "service" / "dashboard").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                absolute = node.level == 0 and (node.module or "").startswith("service.api")
                relative = node.level == 2 and (node.module or "").split(".")[0] == "api"
                if absolute or relative:
                    broken.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not broken, broken
