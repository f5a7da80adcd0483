"""Plugin evaluators (issue 16, part 1): the form the coordinator checks, the example
plugin of examples/ running a real study over HTTP with two workers, a worker without the
plugin giving the trial back and skipping the study, a plugin that raises or returns a
non-finite score ending FAILED with a clear reason.

Entry points are registered from a temporary ``.dist-info`` directory put on
``sys.path`` (what ``pip install`` would write), so the test environment is not changed.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from client import ApiError, Client
from protocol.options import check_evaluator_name
from protocol.wire import StudyCreate
from tests.helpers.archs import one_layer_space
from tests.helpers.coordinator import ADMIN_TOKEN
from tests.helpers.waiting import wait_finished, wait_for
from tests.helpers.worker import worker_config, worker_thread
from workers.daemon import WorkerDaemon
from workers.datasets import load_dataset
from workers.evaluators import evaluate
from workers.plugins import GROUP, PluginError, PluginMissing

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SRC = ROOT / "examples" / "archsearch-plugin-example" / "src"
ONE_LAYER = one_layer_space("one-layer", 28, {"type": "randint", "low": 8, "high": 17}, 5)
SUBSET = {"max_per_class": {"train": 40, "test": 20}}


# Plugins of this module, registered in tests only.
def raising(call: Any) -> float:
    raise RuntimeError("my plugin is broken on purpose")


def nan_score(call: Any) -> float:
    return math.nan


def not_a_number(call: Any) -> str:
    return "high"


CURVE_FILE = "ARCHSEARCH_TEST_CURVE"


def curve(call: Any) -> float:
    """Reports the next value of the JSON list in the file $ARCHSEARCH_TEST_CURVE at steps
    1 and 2 (a flat learning curve), one trial after another. A file, not a global: the
    entry point may import this module apart from pytest's copy of it."""
    path = Path(os.environ[CURVE_FILE])
    values = json.loads(path.read_text())
    value = values.pop(0)
    path.write_text(json.dumps(values))
    for step in (1, 2):
        call.report(step, value)  # raises Pruned when the coordinator answers prune
    return value


@pytest.fixture
def plugins(tmp_path, monkeypatch) -> Path:
    """Register the example plugin and this module's plugins as an installed package."""
    site = tmp_path / "site"
    info = site / "archsearch_test_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: archsearch-test-plugins\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\n"
        "example.linear_probe = archsearch_example_plugin:linear_probe\n"
        "tests.raising = tests.workers.test_plugins:raising\n"
        "tests.nan = tests.workers.test_plugins:nan_score\n"
        "tests.words = tests.workers.test_plugins:not_a_number\n"
        "tests.curve = tests.workers.test_plugins:curve\n"
        "tests.unimportable = no_such_module_anywhere:f\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    return site


# -- the form ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["screen", "plugin:mylab.cifar_finetune", "plugin:x", "plugin:_a.b2.c"]
)
def test_evaluator_names_of_the_right_form_are_accepted(name):
    assert check_evaluator_name(name) == name
    assert StudyCreate(name="s", dataset="builtin:digits", evaluator=name).evaluator == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("magic", "Input should be 'screen', 'train' or 'pairs', or 'plugin:NAME'"),
        ("plugin:", "plugin:NAME"),
        ("plugin:a..b", "dot-separated identifiers"),
        ("plugin:9lives", "dot-separated identifiers"),
        ("plugin:a b", "dot-separated identifiers"),
        ("plugin:" + "a" * 26, "at most 25 characters"),
    ],
)
def test_evaluator_names_of_another_form_are_refused(name, fragment):
    with pytest.raises(ValidationError, match=fragment):
        StudyCreate(name="s", dataset="builtin:digits", evaluator=name)


# -- in process -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("builtin:digits", color="gray", seed=0)


def _arch():  # type: ignore[no-untyped-def]
    from search_space.space import parse_space

    space = parse_space(ONE_LAYER)
    return space.to_arch(space.sample(0), input_channels=1)


def test_the_example_plugin_scores_and_reports_every_epoch(plugins, digits):
    reports: list[tuple[int, float]] = []
    result = evaluate(
        "plugin:example.linear_probe",
        _arch(),
        digits,
        epochs=3,
        report=lambda s, v: reports.append((s, v)) or "continue",  # type: ignore[func-returns-value]
    )
    assert 0.5 < result.value <= 1.0  # digits: chance is 0.1
    assert [s for s, _ in reports] == [1, 2, 3] and reports[-1][1] == result.value
    assert result.metrics["epochs"] == 3 and result.metrics["protocol"].startswith("plugin:")
    assert result.metrics["split"] == "validation"


def test_the_plugin_reads_its_own_options(plugins, digits):
    result = evaluate(
        "plugin:example.linear_probe",
        _arch(),
        digits,
        epochs=1,
        plugin_options={"lr": 0.05, "steps_per_epoch": 3},
    )
    assert (result.metrics["lr"], result.metrics["steps_per_epoch"]) == (0.05, 3)
    default = evaluate("plugin:example.linear_probe", _arch(), digits, epochs=1)
    assert (default.metrics["lr"], default.metrics["steps_per_epoch"]) == (0.01, 25)
    with pytest.raises(ValueError, match=r"unknown plugin_options \['lrate'\]"):
        evaluate("plugin:example.linear_probe", _arch(), digits, plugin_options={"lrate": 1})
    with pytest.raises(ValueError, match=r"plugin_options.lr must be a number in \(0, 10\]"):
        evaluate("plugin:example.linear_probe", _arch(), digits, plugin_options={"lr": "x"})


@pytest.mark.parametrize(
    ("name", "error", "fragment"),
    [
        ("tests.nan", PluginError, "returned a non-finite score (nan)"),
        ("tests.words", PluginError, "must return a number or (number, metrics), got str"),
        ("tests.raising", RuntimeError, "broken on purpose"),
        ("tests.absent", PluginMissing, "'tests.absent' (archsearch.evaluators) is not installed"),
        ("tests.unimportable", PluginMissing, "cannot be loaded here: ModuleNotFoundError"),
    ],
)
def test_plugin_failures_are_named(plugins, digits, name, error, fragment):
    with pytest.raises(error) as info:
        evaluate(f"plugin:{name}", _arch(), digits)
    assert fragment in str(info.value)


# -- through the system -------------------------------------------------------------------
def _daemon(  # type: ignore[no-untyped-def]
    live, token: str, where: Path, loads: list[str] | None = None
) -> tuple[WorkerDaemon, threading.Thread]:
    """A worker daemon thread; ``loads`` (when given) collects every dataset URI it loads."""
    daemon = WorkerDaemon(worker_config(live.base_url, token, where, idle_exit_seconds=3.0))
    if loads is not None:
        load = daemon.load_data

        def recording(uri: str, **kwargs: Any) -> Any:
            loads.append(uri)
            return load(uri, **kwargs)

        daemon.load_data = recording  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    return daemon, thread


def _create(
    admin: Client,
    evaluator: str,
    max_trials: int,
    top_k: int = 0,
    dataset: str = "builtin:mnist5k",
    plugin_options: dict[str, Any] | None = None,
) -> int:
    options: dict[str, Any] = dict(SUBSET)
    if plugin_options is not None:
        options["plugin_options"] = plugin_options
    return admin.create_study(
        name=evaluator,
        dataset=dataset,
        space=ONE_LAYER,
        evaluator=evaluator,
        algorithm="random",
        max_trials=max_trials,
        max_parallel=2,
        top_k=top_k,
        evaluator_options=options,
    ).id


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_example_plugin_runs_a_study_end_to_end_with_two_workers(plugins, system, tmp_path):
    live, token = system
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = _create(
            admin,
            "plugin:example.linear_probe",
            max_trials=4,
            top_k=1,
            plugin_options={"lr": 0.05, "steps_per_epoch": 10},  # the plugin's own options
        )
        workers = [_daemon(live, token, tmp_path / f"w{i}") for i in range(2)]
        try:
            wait_finished(admin, sid, timeout=240)
        finally:
            for daemon, thread in workers:
                daemon.stop_event.set()
                thread.join(timeout=60)
        trials = list(admin.trials(sid))
    search = [t for t in trials if not t.is_final]
    assert len(search) == 4 and all(t.state == "COMPLETE" for t in search), [
        (t.state, t.reason) for t in trials
    ]
    assert all(0.3 < t.value <= 1.0 for t in search)  # 10 classes: chance is 0.1
    assert all(len(t.intermediate) == 2 for t in search)  # epochs 2: one report each
    assert len({t.worker_id for t in search}) == 2  # both workers took trials
    final = next(t for t in trials if t.is_final)
    assert final.state == "COMPLETE" and final.metrics["split"] == "test"
    # The plugin read the study's plugin_options (it reports what it used).
    for t in [*search, final]:
        assert (t.metrics["lr"], t.metrics["steps_per_epoch"]) == (0.05, 10), t.metrics


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(200)
def test_plugin_failures_through_the_system(plugins, system, tmp_path):
    live, token = system
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        # The missing plugin's study alone uses digits: the worker must not load them.
        missing = _create(admin, "plugin:nobody.has_this", max_trials=1, dataset="builtin:digits")
        raising_id = _create(admin, "plugin:tests.raising", max_trials=1)
        nan_id = _create(admin, "plugin:tests.nan", max_trials=1)
        loads: list[str] = []
        daemon, thread = _daemon(live, token, tmp_path / "w", loads)
        try:
            for sid in (raising_id, nan_id):
                wait_finished(admin, sid, timeout=120)
            wait_for(lambda: missing in daemon._excluded, timeout=60, what="the exclusion")
        finally:
            daemon.stop_event.set()
            thread.join(timeout=60)
        (raised,) = admin.trials(raising_id)
        (nan,) = admin.trials(nan_id)
        (waiting,) = admin.trials(missing)
    assert raised.state == "FAILED" and "RuntimeError: my plugin is broken on purpose" in (
        raised.reason or ""
    )
    assert nan.state == "FAILED" and "returned a non-finite score (nan)" in (nan.reason or "")
    # Given back, not failed: a worker that has the plugin can still run it.
    assert waiting.state == "WAITING" and waiting.value is None
    # Found out before the data load (and no prefetch either), not after it.
    assert "builtin:mnist5k" in loads and "builtin:digits" not in loads, loads


@pytest.mark.slow
@pytest.mark.e2e
def test_the_coordinator_checks_only_the_form(system):
    live, _ = system
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        study = admin.create_study(
            name="p", dataset="builtin:digits", evaluator="plugin:not.installed.anywhere"
        )
        assert study.evaluator == "plugin:not.installed.anywhere"
        with pytest.raises(ApiError) as info:
            admin.create_study(name="p", dataset="builtin:digits", evaluator="plugin:no way")
    assert info.value.status == 422 and info.value.field == "evaluator"


@pytest.mark.e2e
@pytest.mark.timeout(200)
def test_a_plugin_below_the_median_curve_is_pruned_over_http(
    plugins, system, tmp_path, monkeypatch
):
    """The median stopping rule answers plugin studies (their reports are a learning
    curve): after five finished peers, a trial reporting below their median at step 1 is
    told prune, and the worker ends it PRUNED with that value."""
    live, token = system
    values = tmp_path / "curve.json"
    values.write_text(json.dumps([0.5, 0.6, 0.7, 0.8, 0.9, 0.1, 0.95]))
    monkeypatch.setenv(CURVE_FILE, str(values))
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="curve",
            dataset="builtin:digits",
            space=ONE_LAYER,
            evaluator="plugin:tests.curve",
            algorithm="random",
            max_trials=7,
            max_parallel=1,  # one after another: each trial's peers have finished
            top_k=0,
        ).id
        # batch 1: each report is delivered before the next claim.
        with worker_thread(live.base_url, token, tmp_path / "w", idle_exit_seconds=3.0, batch=1):
            wait_finished(admin, sid, timeout=150)
        trials = sorted(admin.trials(sid), key=lambda t: t.number)
    states = [(t.state, t.value) for t in trials]
    assert states == [
        ("COMPLETE", 0.5),
        ("COMPLETE", 0.6),
        ("COMPLETE", 0.7),
        ("COMPLETE", 0.8),
        ("COMPLETE", 0.9),
        ("PRUNED", 0.1),  # below the median 0.7 of five finished peers at step 1
        ("COMPLETE", 0.95),  # above it: runs to the end
    ], [(t.state, t.value, t.reason) for t in trials]
    pruned = trials[5]
    assert pruned.intermediate == [[1, 0.1]]  # told at its first report: step 2 never came
    assert "pruned by the coordinator" in (pruned.reason or "")
