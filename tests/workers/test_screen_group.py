"""workers.screen_group: several ``screen`` candidates screened together (issue 13).

Data: ``builtin:digits`` (1,797 8x8 digits, 10 classes) upsampled to 16 px, as in
test_evaluators.py, with 1-layer Pinto & Cox models of 8-24 random 3x3 filters (72-216
features) and ridge readouts. Every group result is compared with ``evaluate("screen",
...)`` of the same candidate alone. One evaluation is ~0.3 s on a shared 2-core CPU; a
test screens 3-4 candidates both ways (~1-3 s).

The CUDA variants skip without a CUDA device (bench/gpu_check.sh runs them on a GPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from search_space import model as model_mod
from search_space.arch import (
    Activation,
    Architecture,
    FBCorr,
    InfeasibleArchitecture,
    Layer,
    LNorm,
    LPool,
    Readout,
)
from workers import screen_group as sg
from workers.datasets import Dataset, load_dataset
from workers.evaluators import EvalResult, Pruned, Stopped, TimedOut, evaluate
from workers.screen_group import GroupCandidate, extract_features_group, screen_group

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
BATCH = 64


def arch(
    seed: int, n_filters: int = 16, l2: float | None = None, channels: int = 1
) -> Architecture:
    """16 -> lnorm0 3: 14 -> fbcorr 3: 12 -> pool 3 s2: 5 -> lnorm 3: 3; 3x3xF features."""
    return Architecture(
        input_size=16,
        input_channels=channels,
        lnorm0=LNorm(3, stretch=10.0, threshold=1.0),
        layers=(
            Layer(
                FBCorr(n_filters, 3),
                Activation(0.0, math.inf),
                LPool(3, 2.0, 2),
                LNorm(3, threshold=1.0),
            ),
        ),
        readout=Readout("ridge", l2=l2),
        seed=seed,
    )


# Four different candidates: seeds, filter counts (hence feature counts), l2 chosen or fixed.
ARCHS = [arch(1), arch(2, 8), arch(3, 24), arch(4, 12, l2=10.0)]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("builtin:digits", color="gray")


@pytest.fixture(scope="module")
def alone(digits: Dataset) -> dict[int, EvalResult]:
    """``evaluate("screen", ...)`` of each of :data:`ARCHS` alone on the CPU, by seed."""
    return {a.seed: evaluate("screen", a, digits, batch_size=BATCH) for a in ARCHS}


def _count_forwards(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[int]]:
    """Batch sizes of every FeatureExtractor forward, by the model's arch seed."""
    calls: dict[int, list[int]] = {}
    real = model_mod.FeatureExtractor.forward

    def forward(self: model_mod.FeatureExtractor, x: torch.Tensor) -> torch.Tensor:
        calls.setdefault(self.arch.seed, []).append(int(x.shape[0]))
        return real(self, x)

    monkeypatch.setattr(model_mod.FeatureExtractor, "forward", forward)
    return calls


def _same_as_alone(result: EvalResult | Exception, ref: EvalResult, exact: bool = True) -> None:
    assert isinstance(result, EvalResult), result
    m, r = result.metrics, ref.metrics
    for key in ("protocol", "split", "readout", "n_features", "n_fit", "n_scored", "l2_chosen"):
        assert m[key] == r[key], key
    if exact:
        assert result.value == ref.value
        assert m["l2"] == r["l2"] and m["train_accuracy"] == r["train_accuracy"]
    else:
        # CUDA: features agree within float32 rounding; a validation image on a decision
        # boundary could flip, so allow one image.
        assert abs(result.value - ref.value) <= 1.0 / m["n_scored"] + 1e-12
    json.dumps(m, allow_nan=False)


# -- equality with one-by-one evaluate ----------------------------------------------------
def test_group_equals_one_by_one_evaluate(digits: Dataset, alone: dict[int, EvalResult]) -> None:
    reports: dict[int, list[tuple[int, float]]] = {a.seed: [] for a in ARCHS}
    ticks: dict[int, int] = {a.seed: 0 for a in ARCHS}

    def tick_of(seed: int) -> Callable[[], str]:
        def tick() -> str:
            ticks[seed] += 1
            return "continue"

        return tick

    def report_of(seed: int) -> Callable[[int, float], str]:
        return lambda step, value: reports[seed].append((step, value)) or "continue"

    cands = [GroupCandidate(a, tick=tick_of(a.seed), report=report_of(a.seed)) for a in ARCHS]
    results = screen_group(cands, digits, batch_size=BATCH)
    assert len(results) == len(ARCHS)
    n_images = int((~digits.is_test).sum())
    for a, result in zip(ARCHS, results, strict=True):
        _same_as_alone(result, alone[a.seed])
        assert isinstance(result, EvalResult)
        assert reports[a.seed] == [(0, result.value)]
        assert ticks[a.seed] >= math.ceil(n_images / BATCH)  # one per batch at least
        m = result.metrics
        assert m["group_size"] == len(ARCHS) and m["batch_size"] == BATCH
        assert m["n_images"] == n_images and m["oom_halvings"] == 0
        assert m["images_per_s"] > 0 and m["group_images_per_s"] > 0
        assert m["group_streams"] is False and m["device"] == "cpu"
        assert result.value >= 0.85  # measured 0.93-0.95; chance is 0.1


def test_each_batch_is_copied_once_and_every_model_sees_it(digits: Dataset, monkeypatch) -> None:
    calls = _count_forwards(monkeypatch)
    seen: list[torch.Tensor] = []  # the device batch each preprocess call got, in order
    real_preprocess = sg.preprocess

    def preprocess(x: torch.Tensor, a: Architecture) -> torch.Tensor:
        seen.append(x)
        return real_preprocess(x, a)

    monkeypatch.setattr(sg, "preprocess", preprocess)
    index = np.arange(200)
    models = [model_mod.build_model(a) for a in ARCHS[:3]]
    ext = extract_features_group(
        models, digits.x, index, device="cpu", batch_size=BATCH, batch_seconds=None
    )
    # Interleaved: the same batch sizes for every model, in the group's order ...
    assert all(calls[a.seed] == [64, 64, 64, 8] for a in ARCHS[:3])
    # ... and one uint8 device batch per group batch, shared by the three models.
    assert len(seen) == 12 and all(x.dtype == torch.uint8 for x in seen)
    for b in range(4):
        assert seen[3 * b] is seen[3 * b + 1] is seen[3 * b + 2]
        assert b == 0 or seen[3 * b] is not seen[3 * b - 1]
    assert ext.batch_size == BATCH and ext.oom_halvings == 0 and ext.seconds > 0
    assert all(s > 0 for s in ext.model_seconds)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("streams", [None, False])
def test_group_features_match_extract_features(digits: Dataset, device: str, streams) -> None:
    """Bitwise equal on the CPU at the same batch size; within float32 rounding at another
    batch size (oneDNN's summation order: measured <= 1.1e-7 absolute at batch 7) and on
    CUDA."""
    from workers.stages import extract_features

    index = np.random.default_rng(0).permutation(len(digits.x))[:300]
    models = [model_mod.build_model(a, device=device) for a in ARCHS]
    ext = extract_features_group(
        models, digits.x, index, device=device, batch_size=BATCH, streams=streams
    )
    assert ext.streams == (device == "cuda" and streams is None)
    for model, feats in zip(models, ext.features, strict=True):
        assert isinstance(feats, torch.Tensor) and feats.device.type == device
        for bs in (BATCH, 30):
            ref, _, _ = extract_features(model, digits.x, index, device=device, batch_size=bs)
            if device == "cpu" and bs == BATCH:
                assert torch.equal(feats, ref)
            else:
                torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("streams", [None, False])
@CUDA
def test_group_equals_one_by_one_evaluate_on_cuda(digits: Dataset, streams) -> None:
    cands = [GroupCandidate(a) for a in ARCHS]
    results = screen_group(cands, digits, device="cuda", batch_size=BATCH, streams=streams)
    for a, result in zip(ARCHS, results, strict=True):
        ref = evaluate("screen", a, digits, device="cuda", batch_size=BATCH)
        _same_as_alone(result, ref, exact=False)
        assert isinstance(result, EvalResult)
        assert result.metrics["device"].startswith("cuda")
        assert result.metrics["group_streams"] is (streams is None)


# -- one candidate's failure leaves the others alone -----------------------------------
def test_infeasible_and_bad_candidates_do_not_enter_the_group(
    digits: Dataset, alone: dict[int, EvalResult], monkeypatch
) -> None:
    built: list[int] = []
    real_build = sg.build_model

    def build(a: Architecture, **kw):
        built.append(a.seed)
        return real_build(a, **kw)

    monkeypatch.setattr(sg, "build_model", build)
    tiny = dataclasses.replace(arch(10), input_size=6)  # 6 -> 4 -> 2 -> pool 3: vanishes
    wide = arch(11, n_filters=64)  # 576 features, above the cap below
    rgb = arch(12, channels=3)  # digits are loaded gray: a bad request
    cands = [GroupCandidate(a) for a in (ARCHS[0], tiny, wide, ARCHS[1], rgb)]
    results = screen_group(cands, digits, batch_size=BATCH, max_features=500)
    _same_as_alone(results[0], alone[ARCHS[0].seed])
    _same_as_alone(results[3], alone[ARCHS[1].seed])
    assert isinstance(results[1], InfeasibleArchitecture) and "does not fit" in str(results[1])
    assert isinstance(results[2], InfeasibleArchitecture) and "exceed the cap" in str(results[2])
    assert isinstance(results[4], ValueError) and "channel" in str(results[4])
    assert sorted(built) == [ARCHS[0].seed, ARCHS[1].seed]
    assert results[0].metrics["group_size"] == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(("action", "exc"), [("stop", Stopped), ("prune", Pruned)])
@pytest.mark.parametrize("device", DEVICES)
def test_a_candidate_stopped_mid_extraction_is_dropped(
    digits: Dataset, alone: dict[int, EvalResult], monkeypatch, action: str, exc, device: str
) -> None:
    calls = _count_forwards(monkeypatch)
    victim = ARCHS[1]

    def tick() -> str:
        # By its own forward passes, not by calls: _Control.check also asks the tick
        # (every 0.25 s), more or less often with the machine's load.
        return action if len(calls.get(victim.seed, [])) >= 2 else "continue"

    cands = [GroupCandidate(a, tick=tick if a is victim else None) for a in ARCHS]
    results = screen_group(cands, digits, device=device, batch_size=32)
    assert isinstance(results[1], exc)
    assert len(calls[victim.seed]) == 2  # two batches, then dropped at the third tick
    n_batches = math.ceil(int((~digits.is_test).sum()) / 32)
    for pos in (0, 2, 3):
        a = ARCHS[pos]
        assert len(calls[a.seed]) >= n_batches
        if device == "cpu":
            _same_as_alone(results[pos], alone[a.seed])
        else:
            ref = evaluate("screen", a, digits, device=device, batch_size=32)
            _same_as_alone(results[pos], ref, exact=False)


def test_a_stop_from_report_ends_only_that_candidate(
    digits: Dataset, alone: dict[int, EvalResult]
) -> None:
    cands = [
        GroupCandidate(a, report=(lambda s, v: "prune") if i == 2 else None)
        for i, a in enumerate(ARCHS)
    ]
    results = screen_group(cands, digits, batch_size=BATCH)
    assert isinstance(results[2], Pruned)
    assert results[2].value == alone[ARCHS[2].seed].value  # the score it reported
    for pos in (0, 1, 3):
        _same_as_alone(results[pos], alone[ARCHS[pos].seed])


def test_a_candidate_past_its_deadline_times_out_alone(
    digits: Dataset, alone: dict[int, EvalResult], monkeypatch
) -> None:
    """Its tick is slow (50 ms a batch), so its deadline (0.4 s) passes mid-extraction."""
    calls = _count_forwards(monkeypatch)
    t0 = time.monotonic()
    slow = GroupCandidate(ARCHS[0], tick=lambda: time.sleep(0.05) or "continue", deadline=t0 + 0.4)
    cands = [slow] + [GroupCandidate(a) for a in ARCHS[1:3]]
    results = screen_group(cands, digits, batch_size=16)
    assert isinstance(results[0], TimedOut)
    n_batches = math.ceil(int((~digits.is_test).sum()) / 16)
    assert 1 <= len(calls[ARCHS[0].seed]) < n_batches
    for pos in (1, 2):
        _same_as_alone(results[pos], alone[ARCHS[pos].seed])


def test_a_deadline_already_past_fails_only_its_candidate(
    digits: Dataset, alone: dict[int, EvalResult]
) -> None:
    cands = [GroupCandidate(ARCHS[0]), GroupCandidate(ARCHS[1], deadline=time.monotonic() - 1)]
    results = screen_group(cands, digits, batch_size=BATCH)
    _same_as_alone(results[0], alone[ARCHS[0].seed])
    assert isinstance(results[1], TimedOut)


# -- memory ----------------------------------------------------------------------------
def _oom(monkeypatch, limit_by_seed: dict[int, int | None]) -> None:
    """FeatureExtractor.forward raises CUDA OOM above a batch size (None: always), for
    the seeds listed."""
    real = model_mod.FeatureExtractor.forward

    def forward(self: model_mod.FeatureExtractor, x: torch.Tensor) -> torch.Tensor:
        if self.arch.seed in limit_by_seed:
            limit = limit_by_seed[self.arch.seed]
            if limit is None or x.shape[0] > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(self, x)

    monkeypatch.setattr(model_mod.FeatureExtractor, "forward", forward)


def test_oom_halves_the_group_batch(
    digits: Dataset, alone: dict[int, EvalResult], monkeypatch
) -> None:
    _oom(monkeypatch, {ARCHS[1].seed: 16})
    results = screen_group([GroupCandidate(a) for a in ARCHS[:3]], digits, batch_size=BATCH)
    for a, result in zip(ARCHS[:3], results, strict=True):
        _same_as_alone(result, alone[a.seed])
        assert isinstance(result, EvalResult)
        assert result.metrics["batch_size"] == 16 and result.metrics["oom_halvings"] == 2


def test_persistent_oom_is_infeasible_for_that_candidate_only(
    digits: Dataset, alone: dict[int, EvalResult], monkeypatch
) -> None:
    _oom(monkeypatch, {ARCHS[1].seed: None})
    results = screen_group([GroupCandidate(a) for a in ARCHS[:3]], digits, batch_size=8)
    assert isinstance(results[1], InfeasibleArchitecture)
    assert "out of memory at batch size 1" in str(results[1])
    for pos in (0, 2):
        _same_as_alone(results[pos], alone[ARCHS[pos].seed])


def test_feature_budget_splits_the_group(digits: Dataset, alone: dict[int, EvalResult]) -> None:
    n = int((~digits.is_test).sum())
    sizes = [4 * n * 9 * a.layers[0].fbcorr.n_filters for a in ARCHS]
    # Room for the first two together, then the third (largest) alone, then the fourth.
    budget = sizes[0] + sizes[1]
    results = screen_group(
        [GroupCandidate(a) for a in ARCHS], digits, batch_size=BATCH, feature_budget=budget
    )
    assert [r.metrics["group_size"] for r in results] == [2, 2, 1, 1]  # type: ignore[union-attr]
    for a, result in zip(ARCHS, results, strict=True):
        _same_as_alone(result, alone[a.seed])


def test_group_batch_size_sums_the_working_sets_on_cuda_only(monkeypatch) -> None:
    from search_space.arch import walk
    from workers.stages import default_batch_size

    reports = [walk(arch(1, n_filters=64)), walk(arch(2, n_filters=8)), walk(arch(3))]
    # CPU: the candidates run one after the other: every one's own batch must fit.
    assert sg.group_batch_size(reports, "cpu") == min(default_batch_size(r, "cpu") for r in reports)
    # CUDA (no device needed): default_batch_size sees the summed largest maps.
    seen: list[tuple[int, str]] = []

    def fake(report, device) -> int:
        seen.append((report.activation_bytes, torch.device(device).type))
        return 7

    monkeypatch.setattr(sg, "default_batch_size", fake)
    assert sg.group_batch_size(reports, "cuda") == 7
    assert seen == [(sum(r.activation_bytes for r in reports), "cuda")]
    assert sg._partition([3, 3, 5, 1, 9], 6) == [[0, 1], [2, 3], [4]]


def test_a_split_error_is_every_candidates_result(digits: Dataset) -> None:
    no_test = dataclasses.replace(digits, is_test=np.zeros(len(digits.x), dtype=bool))
    results = screen_group([GroupCandidate(a) for a in ARCHS[:2]], no_test, final=True)
    assert all(isinstance(r, ValueError) and "no test images" in str(r) for r in results)


def test_an_error_no_candidate_owns_is_the_result_of_those_without_one(
    digits: Dataset, monkeypatch
) -> None:
    def broken(*a, **k):
        raise RuntimeError("the device went away")

    monkeypatch.setattr(sg, "group_batch_size", broken)
    tiny = dataclasses.replace(arch(10), input_size=6)
    results = screen_group([GroupCandidate(a) for a in (ARCHS[0], tiny, ARCHS[1])], digits)
    assert isinstance(results[1], InfeasibleArchitecture)  # its own, from validate
    assert all(
        isinstance(results[p], RuntimeError) and "went away" in str(results[p]) for p in (0, 2)
    )
