"""The worker's feature cache (issue 14: a promoted ASHA rung extracts only the images it
adds): the scores and features equal a fresh evaluation's, what the key separates and
shares, the byte bound and LRU order, nothing kept from a failed or stopped extraction,
concurrent use from threads, and the daemon's sizing of it."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from search_space.arch import Readout
from search_space.model import build_model
from tests.helpers.archs import one_layer_arch
from workers import stages
from workers.daemon import WorkerConfig, WorkerDaemon
from workers.datasets import load_dataset
from workers.evaluators import Stopped, evaluate, extract_features
from workers.feature_cache import FeatureCache, FeatureKey
from workers.memory import MiB
from workers.screen_group import GroupCandidate, screen_group
from workers.stages import _splits

CPU = torch.device("cpu")
MAX_FEATURES = 100_000


@pytest.fixture(scope="module")
def digits():
    return load_dataset("builtin:digits", color="gray")


def key(arch, ds, max_features=MAX_FEATURES):
    return FeatureKey.of(arch, ds.fingerprint, max_features, CPU)


def test_rungs_read_the_rows_they_saw_and_score_as_a_fresh_evaluation(digits):
    """10 -> 20 -> 40 per class, then the final: each evaluation extracts only the images
    the cache lacks, and its value and readout equal those of an evaluation without it."""
    arch = one_layer_arch(8)
    cache = FeatureCache(64 * MiB)
    fit_by_rung, (_, scored, _) = {}, _splits(digits, False, 0.2, 3)
    seen: set[int] = set()
    for n in (10, 20, 40, None):
        final = n is None
        options = {"final": final, "seed": 3, "train_per_class": 40 if final else n}
        cached = evaluate("screen", arch, digits, feature_cache=cache, **options)
        fresh = evaluate("screen", arch, digits, **options)
        assert cached.value == fresh.value
        assert cached.metrics["l2"] == fresh.metrics["l2"]
        assert fresh.metrics["cached_images"] == 0
        fit, score, _ = _splits(digits, final, 0.2, 3, options["train_per_class"])
        wanted = set(fit) | set(score)
        assert cached.metrics["cached_images"] == len(wanted & seen)
        assert cached.metrics["n_images"] == len(wanted)
        seen |= wanted
        fit_by_rung[n] = fit
    # Rung 1 had the validation split and rung 0's fit images already.
    assert len(set(fit_by_rung[10]) | set(scored)) == len(set(fit_by_rung[10])) + len(scored)
    assert cache.hits > 0 and cache.nbytes > 0


def test_a_group_fills_the_cache_and_sends_its_promotions_alone_through_it(digits):
    """A GPU worker's path, on the CPU: rung 0 screened as a group stores each member's
    features; at rung 1 the members the cache knows are screened alone through it (only
    the added fit images extracted) and a new one in the group; every score equals the
    candidate's fresh evaluation."""
    archs = [one_layer_arch(f) for f in (4, 8, 12)]
    cache = FeatureCache(64 * MiB)
    options = {"seed": 3, "batch_size": 32, "max_features": MAX_FEATURES}
    first = screen_group(
        [GroupCandidate(a) for a in archs[:2]], digits, train_per_class=10,
        feature_cache=cache, **options,
    )  # fmt: skip
    assert all(r.metrics["group_size"] == 2 for r in first)
    _, scored, _ = _splits(digits, False, 0.2, 3)
    for a in archs[:2]:
        assert cache.holds(key(a, digits), scored) == len(scored)
    second = screen_group(
        [GroupCandidate(a) for a in archs], digits, train_per_class=20,
        feature_cache=cache, **options,
    )  # fmt: skip
    fit10 = _splits(digits, False, 0.2, 3, 10)[0]
    for a, r in zip(archs, second, strict=True):
        fresh = evaluate("screen", a, digits, train_per_class=20, **options)
        assert r.value == fresh.value, a
        if a is archs[2]:
            assert r.metrics["cached_images"] == 0 and r.metrics["group_size"] == 1
        else:
            assert r.metrics["cached_images"] == len(scored) + len(fit10)
            assert "group_size" not in r.metrics


def test_cached_rows_are_the_rows_a_fresh_extraction_gives(digits):
    arch = one_layer_arch(8)
    model = build_model(arch, device=CPU, max_features=MAX_FEATURES)
    index = np.arange(0, 300, 3)
    fresh, _, _ = extract_features(model, digits.x, index, device=CPU, batch_size=17)
    cache = FeatureCache(64 * MiB)
    cache.store(key(arch, digits), index[::-1], fresh.flip(0))  # any order in
    want = np.array([297, 3, 150, 5, 0])  # 5 was never extracted
    held, rows = cache.lookup(key(arch, digits), want)
    assert held.tolist() == [True, True, True, False, True]
    expect = fresh[torch.as_tensor([99, 1, 50, 0])]
    assert torch.equal(rows, expect)


def test_the_key_ignores_the_readout_and_separates_what_changes_the_features(digits):
    arch = one_layer_arch(8)
    ridge = key(arch, digits)
    other_readout = dataclasses.replace(arch, readout=Readout(kind="logistic", l2=0.5))
    assert key(other_readout, digits) == ridge
    assert key(dataclasses.replace(arch, seed=43), digits) != ridge
    assert key(one_layer_arch(12), digits) != ridge
    assert key(arch, digits, max_features=100) != ridge
    assert FeatureKey.of(arch, "another fingerprint", MAX_FEATURES, CPU) != ridge
    assert FeatureKey.of(arch, digits.fingerprint, MAX_FEATURES, torch.device("meta")) != ridge


def rows(n: int, width: int = 10, fill: float = 1.0) -> torch.Tensor:
    return torch.full((n, width), fill)


def entry_bytes(n: int, width: int = 10) -> int:
    return n * (4 * width + 8)


def test_the_byte_bound_evicts_the_least_recently_used(digits):
    a, b, c = (FeatureKey.of(one_layer_arch(f), "d", 1, CPU) for f in (4, 8, 12))
    cache = FeatureCache(3 * entry_bytes(10))
    cache.store(a, np.arange(10), rows(10, fill=1))
    cache.store(b, np.arange(10), rows(10, fill=2))
    cache.lookup(a, np.arange(1))  # a is now more recent than b
    cache.store(c, np.arange(10), rows(10, fill=3))
    assert cache.nbytes == 3 * entry_bytes(10)
    cache.store(c, np.arange(10, 15), rows(5, fill=3))  # grows c past the bound: b goes
    assert cache.lookup(b, np.arange(10))[0].sum() == 0
    assert cache.lookup(a, np.arange(10))[0].all()
    assert cache.lookup(c, np.arange(15))[0].all()
    assert cache.nbytes == entry_bytes(25) <= cache.capacity
    cache.store(b, np.arange(100), rows(100))  # alone over the bound: not kept
    assert cache.lookup(b, np.arange(100))[0].sum() == 0
    cache.resize(entry_bytes(15))  # keeps the most recent that fit
    assert cache.lookup(c, np.arange(15))[0].all() and cache.nbytes == entry_bytes(15)
    cache.clear()
    assert cache.nbytes == 0 and cache.lookup(c, np.arange(15))[0].sum() == 0


def test_stored_rows_are_not_replaced_and_a_disabled_cache_keeps_nothing():
    k = FeatureKey.of(one_layer_arch(4), "d", 1, CPU)
    cache = FeatureCache(1 * MiB)
    cache.store(k, np.array([1, 2]), rows(2, fill=1))
    cache.store(k, np.array([2, 3]), rows(2, fill=9))
    held, got = cache.lookup(k, np.array([1, 2, 3]))
    assert held.all() and got[:, 0].tolist() == [1, 1, 9]
    off = FeatureCache(0)
    off.store(k, np.array([1]), rows(1))
    assert off.nbytes == 0 and not off.lookup(k, np.array([1]))[0].any()
    with pytest.raises(ValueError, match="must be >= 0"):
        FeatureCache(-1)
    with pytest.raises(ValueError, match="3 indices for 2 feature rows"):
        cache.store(k, np.array([1, 2, 3]), rows(2))


def test_a_failed_or_stopped_extraction_keeps_nothing(digits, monkeypatch):
    arch = one_layer_arch(8)
    cache = FeatureCache(64 * MiB)

    def not_finite(feats, device):
        raise stages.InfeasibleArchitecture("the features are not finite")

    with monkeypatch.context() as m:
        m.setattr(stages, "check_finite", not_finite)
        with pytest.raises(stages.InfeasibleArchitecture):
            evaluate("screen", arch, digits, train_per_class=10, feature_cache=cache)
    assert cache.nbytes == 0

    def stop() -> str:
        return "stop"

    with pytest.raises(Stopped):
        evaluate("screen", arch, digits, train_per_class=10, feature_cache=cache, tick=stop)
    assert cache.nbytes == 0


def test_threads_storing_and_reading_see_whole_consistent_rows():
    """Eight threads store overlapping ranges of one key and read them back: every row
    read is a row some thread stored for that index, and none is lost."""
    k = FeatureKey.of(one_layer_arch(4), "d", 1, CPU)
    cache = FeatureCache(64 * MiB)
    errors: list[str] = []

    def work(t: int) -> None:
        for start in range(0, 400, 40):
            index = np.arange(start + t, start + t + 50)
            cache.store(k, index, torch.as_tensor(index, dtype=torch.float32)[:, None].repeat(1, 6))
            held, got = cache.lookup(k, index)
            want = torch.as_tensor(index[held], dtype=torch.float32)
            if not held.all() or not torch.equal(got, want[:, None].repeat(1, 6)):
                errors.append(f"thread {t} at {start}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    held, got = cache.lookup(k, np.arange(407))
    assert held.all() and torch.equal(got[:, 0], torch.arange(407, dtype=torch.float32))


def test_the_daemon_sizes_its_cache_from_its_options(tmp_path):
    def daemon(**options):
        config = WorkerConfig("http://127.0.0.1:9", None, tmp_path, device="cpu", **options)
        return WorkerDaemon(config, evaluate=lambda *a, **k: None, load_data=lambda *a: None)

    assert daemon().features.capacity == 2 << 30
    assert daemon(feature_cache=0).features.capacity == 0
    assert daemon(max_memory=8 << 30).features.capacity == 2 << 30
    assert daemon(max_memory=4 << 30).features.capacity == 1 << 30
    with pytest.raises(ValueError, match="--feature-cache must be >= 0"):
        WorkerConfig("http://127.0.0.1:9", None, tmp_path, feature_cache=-1)
