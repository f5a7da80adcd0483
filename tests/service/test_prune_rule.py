"""Which studies the median stopping rule answers (issue 16: plugin studies get prune).

``train`` and ``plugin:NAME`` studies report learning curves and may be pruned; ``screen``
(and ``pairs``) report their one score at step 0, which pruning would only throw away.
"""

from __future__ import annotations

import pytest

from service.api.trials import prunable
from tests.helpers.coordinator import five_finished_peers


@pytest.mark.parametrize(
    ("evaluator", "expected"),
    [("train", True), ("plugin:mylab.finetune", True), ("screen", False), ("pairs", False)],
)
def test_prunable_protocols(evaluator, expected):
    assert prunable(evaluator) is expected


@pytest.mark.parametrize(
    ("evaluator", "low_answer"), [("plugin:mylab.finetune", "prune"), ("screen", "continue")]
)
def test_the_rule_over_http_by_protocol(api, evaluator, low_answer):
    """Five finished peers at step 0, then a trial reporting below their median: a plugin
    study is told prune, a screen study continue."""
    api.new_study(evaluator=evaluator, max_trials=8, max_parallel=8)
    w = api.new_worker()
    tid = five_finished_peers(api, w, step=0)
    assert api.heartbeat(w, tid, 0, 0.8) == "continue"  # above the median (0.7)
    assert api.heartbeat(w, tid, 0, 0.2) == low_answer
