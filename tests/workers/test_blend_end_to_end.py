"""A study with a blend stage through the real system (issue 17): a coordinator process
(uvicorn on a loopback port), a real worker daemon scoring real convnets on the built-in
digits, the automatic blend of the best three after the finals, then a blend asked for by
hand with the CLI on the finished study and shown by ``archsearch study best``."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from archsearch.cli import app
from client import Client
from tests.helpers.coordinator import ADMIN_TOKEN
from tests.helpers.waiting import wait_finished
from tests.helpers.worker import worker_config
from workers.daemon import WorkerDaemon

# Six one-layer convnets at 32 px (the grid of n_filters x filter_size): a few seconds
# each on the capped digits, and different enough to blend.
SPACE = {
    "name": "blend-e2e",
    "input_size": 32,
    "layers": [
        {
            "n_filters": {"type": "choice", "options": [8, 16, 32]},
            "filter_size": {"type": "choice", "options": [3, 5]},
            "pool_size": 2,
            "norm_size": 3,
        }
    ],
}


def work(base_url: str, token: str, tmp_path) -> int:
    """Run a real worker daemon until it finds nothing to do for a few seconds."""
    config = worker_config(base_url, token, tmp_path / "w", poll_seconds=0.2, idle_exit_seconds=4.0)
    return WorkerDaemon(config).run()


@pytest.mark.e2e
@pytest.mark.slow  # about 80 s on 2 shared cores: nine real trials and two blends
@pytest.mark.timeout(600)
def test_a_study_blends_its_best_three_and_a_blend_by_hand_follows(system, tmp_path, monkeypatch):
    live, token = system
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        sid = admin.create_study(
            name="blend",
            dataset="builtin:digits",
            space=SPACE,
            algorithm="grid",
            max_trials=6,
            max_parallel=6,
            top_k=2,
            blend_k=3,
            evaluator_options={"max_per_class": {"train": 40, "test": 15}},
        ).id
        assert work(live.base_url, token, tmp_path) >= 6 + 2 + 1
        study = wait_finished(admin, sid, timeout=30)
        trials = list(admin.trials(sid))
        search = [t for t in trials if t.source == "suggested"]
        assert len(search) == 6 and {t.state for t in search} == {"COMPLETE"}
        (blend,) = [t for t in trials if t.source == "blend"]
        assert blend.state == "COMPLETE", blend.reason
        top = admin.best(sid, k=3)
        assert blend.params["members"] == [t.id for t in top]
        assert blend.params["weights"] == "uniform"
        assert blend.arch == {"members": [t.arch for t in top]}
        # Accuracy on 10 digit classes: chance is 0.1; the members score far above it.
        assert 0.0 <= blend.value <= 1.0 and blend.test_value is not None
        assert blend.value > 0.5 and blend.test_value > 0.5, blend
        assert blend.metrics["test_value"] == blend.test_value
        assert blend.gflops_per_image == pytest.approx(sum(t.gflops_per_image for t in top))
        assert study.finals_done == 3  # two finals and the blend

    monkeypatch.setenv("ARCHSEARCH_COORDINATOR", live.base_url)
    monkeypatch.setenv("ARCHSEARCH_TOKEN", ADMIN_TOKEN)
    runner = CliRunner()
    queued = runner.invoke(app, ["study", "blend", str(sid), "--k", "5", "--weights", "validation"])
    assert queued.exit_code == 0, queued.output
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        numbers = " ".join(f"#{t.number}" for t in admin.best(sid, k=5))
    assert f"the best 5 ({numbers}), validation weights" in queued.output
    again = runner.invoke(app, ["study", "blend", str(sid), "--k", "5", "--weights", "validation"])
    assert again.exit_code != 0 and "field: state" in again.output  # finishing now

    assert work(live.base_url, token, tmp_path) == 1
    with Client(live.base_url, ADMIN_TOKEN) as admin:
        assert wait_finished(admin, sid, timeout=30).state == "finished"
        blends = admin.best_out(sid, k=5).blends
    assert len(blends) == 2 and {b.state for b in blends} == {"COMPLETE"}
    by_k = {len(b.member_numbers): b for b in blends}
    # Validation weights include every member alone: at least the best member's score.
    assert by_k[5].value >= max(t.value for t in search) - 1e-9
    shown = runner.invoke(app, ["study", "best", str(sid), "--k", "3"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    blend_lines = [line for line in lines if "blend of" in line]
    assert len(blend_lines) == 2 and any("blend of 5:" in line for line in blend_lines)
    assert f"{by_k[5].test_value:.4f}" in shown.output
    too_many = runner.invoke(app, ["study", "blend", str(sid), "--k", "7"])
    assert too_many.exit_code != 0 and "has 6" in too_many.output
