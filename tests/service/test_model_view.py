"""The trial page's model section (issue 16, "See the model"): the layer diagram against
``walk``, the first layer's filters against the built model, the feature maps, the render
thread's cache and queue, and the routes (``.../filters.png``, ``.../features/{k}.png``)
on a coordinator whose trials carry architectures written for the test."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update

from search_space.arch import (
    Activation,
    Architecture,
    FBCorr,
    Layer,
    LNorm,
    LPool,
    walk,
)
from service.dashboard import model_view as mv
from service.dashboard.render_thread import Renderer, RendererBusy
from service.db import make_engine, session_factory, session_scope
from service.models import Trial

SMALL = Architecture(
    input_size=32,
    input_channels=1,
    lnorm0=LNorm(3),
    layers=(
        Layer(FBCorr(16, 5), Activation(), LPool(3, 2.0, 2), LNorm(3)),
        Layer(FBCorr(32, 3), Activation(), LPool(3, 1.0, 1), LNorm(3, remove_mean=True)),
    ),
    seed=42,
)
# ~9.2 GFLOP per image: buildable, but above the dashboard's render cap.
BIG = Architecture(
    input_size=200,
    input_channels=3,
    lnorm0=None,
    layers=(Layer(FBCorr(512, 9), Activation(), LPool(5, 2.0, 2), LNorm(5)),),
    seed=3,
)


def png_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


# -- the diagram --------------------------------------------------------------------------
def test_diagram_shapes_and_costs_are_walks():
    d = mv.diagram(SMALL)
    report = walk(SMALL)
    assert [(r.name, r.h, r.w, r.c) for r in d.rows] == list(report.shapes)
    assert (d.flops, d.params, d.features) == (report.flops, report.n_params, report.n_features)
    groups = [r for r in d.rows if r.span]
    assert [r.name for r in groups] == ["L0 lnorm", "L1 fbcorr", "L2 fbcorr"]
    assert [r.span for r in groups] == [1, 3, 3]
    assert sum(r.flops for r in groups) == report.flops
    assert sum(r.params for r in groups) == report.n_params
    # By hand: L0 lnorm 3x3 on 32 -> 30: 4 * 30*30*1 * 9; L1 fbcorr 5x5x1 -> 26x26x16 ...
    assert groups[0].flops == 4 * 30 * 30 * 9 and groups[0].params == 0
    l1 = 2 * 26 * 26 * 16 * 25 * 1 + 2 * 26 * 26 * 16 * 9 // 4 + 4 * 10 * 10 * 16 * 9
    assert groups[1].flops == l1 and groups[1].params == 16 * 25
    assert groups[2].params == 32 * 9 * 16
    assert d.rows[3].values == 12 * 12 * 16
    assert d.feature_stages == (
        "input (preprocessed)",
        "after L0 lnorm",
        "after layer 1",
        "after layer 2",
    )
    assert d.refused is None
    assert "centred" in d.rows[-1].op and "32 filters 3x3x16" in d.rows[-3].op


def test_diagram_without_lnorm0_and_the_big_model_is_refused():
    d = mv.diagram(BIG)
    assert [r.name for r in d.rows] == ["input", "L1 fbcorr", "L1 lpool", "L1 lnorm"]
    assert d.rows[1].flops == walk(BIG).flops
    assert d.feature_stages == ("input (preprocessed)", "after layer 1")
    assert d.refused is not None and "GFLOP" in d.refused and "cap" in d.refused


def test_model_section_reports_an_infeasible_architecture():
    doc = SMALL.to_dict()
    doc["input_size"] = 8  # L1's 5x5 filters no longer fit after L0's 3x3
    section = mv.model_section(doc, "builtin:digits")
    assert section.diagram is None and section.error.startswith("infeasible:")
    assert section.filters.startswith("16 of 16 filters, 5x5x1, seed 42")
    assert mv.model_section(None, "builtin:digits") is None


# -- the filters --------------------------------------------------------------------------
def test_filters_png_draws_the_models_first_layer():
    from search_space.model import build_model

    weight = build_model(SMALL).layers[0].fbcorr.weight.detach().numpy()  # (k, depth, fs, fs)
    pixels = png_pixels(mv.filters_png(SMALL))
    scale = -(-mv.MIN_TILE_PX // 5)
    tile, gap = 5 * scale, mv.GAP_PX
    assert pixels.shape == (tile, 16 * (tile + gap) - gap)  # 16 filters in one grey row
    for k in range(16):
        f = weight[k, 0]
        expected = np.rint(127.5 + 127.5 * f / np.abs(f).max()).clip(0, 255).astype(np.uint8)
        left = k * (tile + gap)
        drawn = pixels[:tile:scale, left : left + tile : scale]
        assert np.array_equal(drawn, expected), f"filter {k}"
    assert mv.filters_png(SMALL) == mv.filters_png(SMALL)  # same bytes
    other = Architecture(**{**SMALL.__dict__, "seed": 43})
    assert mv.filters_png(other) != mv.filters_png(SMALL)


def test_a_cut_filter_bank_is_the_head_of_the_full_one():
    """filters_png draws MAX_FILTERS_SHOWN of a larger bank by generating only those."""
    from search_space.ops import make_filters

    assert np.array_equal(make_filters(300, 3, 3, 5)[:256], make_filters(256, 3, 3, 5))
    rgb = Architecture(
        **{**BIG.__dict__, "layers": (Layer(FBCorr(300, 3), Activation(), LPool(3), LNorm(3)),)}
    )
    pixels = png_pixels(mv.filters_png(rgb))
    assert pixels.ndim == 3 and pixels.shape[2] == 3  # 3-deep filters in colour
    tile = 3 * -(-mv.MIN_TILE_PX // 3)
    assert pixels.shape[0] == 16 * (tile + mv.GAP_PX) - mv.GAP_PX  # 256 = 16 rows of 16


# -- the feature maps ---------------------------------------------------------------------
def loader_validation_image(dataset: str, seed: int, fraction: float, caps=None):  # type: ignore[no-untyped-def]
    """The first validation image as a worker gets it: its loader, then ``search_split``."""
    from workers.datasets import load_dataset, search_split

    ds = load_dataset(dataset, color="gray", seed=seed, max_per_class=caps)
    _, val = search_split(ds, fraction, seed)
    return ds.x[val[0]].copy(), ds.is_test[val[0]]


def test_feature_maps_of_a_builtin_image_one_png_per_stage():
    image, what = mv.sample_image("builtin:digits", SMALL)
    expected, is_test = loader_validation_image("builtin:digits", 0, 0.2)
    assert what.startswith("the first validation image of builtin:digits (image ")
    assert np.array_equal(image, expected) and not is_test
    t0 = time.perf_counter()
    pngs = mv.feature_pngs(SMALL, image)
    elapsed = time.perf_counter() - t0
    assert len(pngs) == len(mv.feature_stage_names(SMALL)) == 4
    shapes = [png_pixels(p).shape for p in pngs]
    assert shapes[0] == (64, 64)  # the 32 px input enlarged x2
    assert shapes[2] == (50, 8 * 50 + 7 * mv.GAP_PX)  # 8 of the 16 10 px maps, x5
    assert mv.feature_pngs(SMALL, image) == pngs  # deterministic
    assert elapsed < 5, f"a small model took {elapsed:.2f} s"
    stage0 = png_pixels(pngs[0])
    assert stage0.min() == 0 and stage0.max() == 255  # the minmax input, stretched


@pytest.mark.parametrize(
    ("dataset", "seed", "options"),
    [
        ("builtin:digits", 7, {"validation_fraction": 0.5}),
        ("builtin:mnist5k", 3, {"max_per_class": {"train": 30, "test": 10}}),
        ("builtin:mnist5k", 11, {"max_per_class": 20, "validation_fraction": 0.3}),
    ],
)
def test_the_image_is_the_studys_first_validation_image(dataset, seed, options):
    """The coordinator picks what the worker's loader and search split give, for the
    study's seed, validation fraction and caps (search_space.splits on both sides)."""
    source = mv.ImageSource.for_study(dataset, seed, options)
    image, what = mv.sample_image(source, SMALL)
    fraction = options.get("validation_fraction", 0.2)
    expected, is_test = loader_validation_image(
        dataset, seed, fraction, options.get("max_per_class")
    )
    assert np.array_equal(image, expected) and not is_test, what
    assert "first validation image" in what
    # Another seed picks another image (the choice follows the study, not a constant).
    other, _ = mv.sample_image(mv.ImageSource.for_study(dataset, seed + 1, options), SMALL)
    assert not np.array_equal(other, image)


def test_other_datasets_use_the_synthetic_pattern_with_the_models_channels():
    rgb = Architecture(**{**SMALL.__dict__, "input_channels": 3})
    image, what = mv.sample_image("npz:/data/x.npz", rgb)
    assert what == "a synthetic test pattern" and image.shape == (3, 32, 32)
    assert np.array_equal(image, mv.synthetic_image(32, 3))
    assert "synthetic" in mv.input_caption("npz:/data/x.npz")
    digits, _ = mv.sample_image("builtin:mnist5k", rgb)  # gray data, rgb model: repeated
    assert digits.shape == (3, 28, 28) and np.array_equal(digits[0], digits[2])
    assert digits.max() > 200  # a real digit, not an empty read
    pngs = mv.feature_pngs(rgb, image)
    assert png_pixels(pngs[0]).shape == (64, 64, 3)


# -- the render thread --------------------------------------------------------------------
def test_renderer_caches_runs_each_key_once_and_bounds_its_queue():
    gate = threading.Event()
    calls = []

    def slow(tag: str) -> bytes:
        calls.append(tag)
        assert gate.wait(10)
        return tag.encode() * 10

    async def scenario() -> None:
        r = Renderer(max_pending=2, cache_bytes=25)
        a1 = asyncio.ensure_future(r.get("a", lambda: slow("a")))
        a2 = asyncio.ensure_future(r.get("a", lambda: slow("a")))  # waits for the same run
        b = asyncio.ensure_future(r.get("b", lambda: slow("b")))
        await asyncio.sleep(0.05)
        with pytest.raises(RendererBusy):
            await r.get("c", lambda: slow("c"))  # a and b are pending: the queue is full
        gate.set()
        assert await a1 == await a2 == b"a" * 10 and await b == b"b" * 10
        assert calls == ["a", "b"] and r.renders == 2
        assert await r.get("b", lambda: slow("x")) == b"b" * 10 and r.hits == 1
        await r.get("c", lambda: slow("c"))  # 30 bytes in a 25-byte cache: the least
        assert r.cached("a") is None  # recently used (a: b was read since) goes
        assert r.cached("b") == b"b" * 10 and r.cached("c") == b"c" * 10
        await r.get("big", lambda: b"x" * 26)  # larger than the cache: never kept
        assert r.cached("big") is None and r.cached("c") is not None
        with pytest.raises(ZeroDivisionError):
            await r.get("d", lambda: 1 / 0)
        assert r.cached("d") is None
        r.close()

    asyncio.run(scenario())


def test_renderer_times_out_without_cancelling_the_render():
    async def scenario() -> None:
        r = Renderer(timeout=0.05)
        with pytest.raises(TimeoutError):
            await r.get("k", lambda: time.sleep(0.3) or b"done")
        await asyncio.sleep(0.5)
        assert r.cached("k") == b"done"  # finished and cached for the next request
        r.close()

    asyncio.run(scenario())


# -- the routes ---------------------------------------------------------------------------
def set_arch(url: str, study_id: int, number: int, arch: Architecture) -> None:
    engine = make_engine(url)
    try:
        with session_scope(session_factory(engine)) as s:
            s.execute(
                update(Trial)
                .where(Trial.study_id == study_id, Trial.number == number)
                .values(arch=arch.to_dict())
            )
    finally:
        engine.dispose()


@pytest.fixture
def trial(api):
    """A study on builtin:digits with trial 1 (SMALL) COMPLETE and trial 2 (BIG) RUNNING."""
    sid = api.new_study(max_trials=5)["id"]
    wid, other = api.new_worker("w1"), api.new_worker("w2")  # one trial each at a time
    numbers = []
    for arch, worker in ((SMALL, wid), (BIG, other)):
        got = api.client.post(f"/api/v1/workers/{worker}/claim", headers=api.worker).json()
        numbers.append(got["trial"]["number"])
        set_arch(api.url, sid, numbers[-1], arch)
    first = api.client.get(f"/api/v1/studies/{sid}/trials/{numbers[0]}", headers=api.reader)
    r = api.client.post(
        f"/api/v1/trials/{first.json()['id']}/complete",
        json={"worker_id": wid, "value": 0.5},
        headers=api.worker,
    )
    assert r.status_code == 200, r.text
    assert numbers == [1, 2]
    return sid, numbers[0], numbers[1], wid


def test_trial_page_shows_the_diagram_and_lazy_pictures(api, trial):
    sid, small, big, _ = trial
    page = api.client.get(f"/studies/{sid}/trials/{small}", headers=api.reader)
    assert page.status_code == 200
    html = page.text
    report = walk(SMALL)
    assert 'id="model-diagram"' in html
    assert f"{report.flops:,}" in html and f"{report.n_params:,}" in html
    assert f"{report.n_features:,} features" in html
    for name, h, w, c in report.shapes:
        assert f"<td>{name}</td>" in html and f"{h} \u00d7 {w} \u00d7 {c}" in html
    assert f'src="/studies/{sid}/trials/{small}/filters.png"' in html
    for k in range(4):
        assert f'src="/studies/{sid}/trials/{small}/features/{k}.png"' in html
    assert 'loading="lazy"' in html and "the first validation image of builtin:digits" in html
    assert api.client.app.state.model_renderer.renders == 0  # the page renders no picture
    assert (
        "model"
        not in api.client.get(f"/studies/{sid}/trials/{small}?partial=1", headers=api.reader)
        .text.lower()
        .split("data-version")[0]
    )
    big_page = api.client.get(f"/studies/{sid}/trials/{big}", headers=api.reader).text
    assert 'id="model-features-refused"' in big_page and "/features/" not in big_page


def test_filters_route_is_deterministic_cached_and_404s(api, trial):
    sid, small, big, _ = trial
    url = f"/studies/{sid}/trials/{small}/filters.png"
    first = api.client.get(url, headers=api.reader)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == mv.filters_png(SMALL)
    renderer = api.client.app.state.model_renderer
    renders, hits = renderer.renders, renderer.hits
    again = api.client.get(url, headers=api.reader)
    assert again.content == first.content
    assert (renderer.renders, renderer.hits) == (renders, hits + 1)  # a cache hit
    assert api.client.get(
        f"/studies/{sid}/trials/{big}/filters.png", headers=api.reader
    ).content == mv.filters_png(BIG)
    for missing in (
        f"/studies/{sid}/trials/99/filters.png",
        "/studies/999/trials/1/filters.png",
        f"/studies/{sid}/trials/0/filters.png",
    ):
        r = api.client.get(missing, headers=api.reader)
        assert r.status_code == 404, missing
    assert api.client.get(url).status_code == 401  # no token: no picture


def test_features_route_small_model_200_big_model_422(api, trial):
    sid, small, big, _ = trial
    base = f"/studies/{sid}/trials/{small}/features"
    got = [api.client.get(f"{base}/{k}.png", headers=api.reader) for k in range(4)]
    assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in got)
    study = api.client.get(f"/api/v1/studies/{sid}", headers=api.reader).json()
    expected, _ = loader_validation_image("builtin:digits", study["seed"], 0.2)
    assert tuple(r.content for r in got) == mv.feature_pngs(SMALL, expected)
    assert api.client.app.state.model_renderer.renders == 1  # four stages, one render
    assert api.client.get(f"{base}/4.png", headers=api.reader).status_code == 404
    refused = api.client.get(f"/studies/{sid}/trials/{big}/features/0.png", headers=api.reader)
    assert refused.status_code == 422
    assert "GFLOP" in refused.json()["detail"] and "cap" in refused.json()["detail"]


def test_a_render_never_blocks_claims_and_a_full_queue_answers_503(api, trial, monkeypatch):
    sid, small, _, wid = trial
    gate, started = threading.Event(), threading.Event()

    def blocked(arch, dataset):
        started.set()
        assert gate.wait(20)
        return (b"png",) * 4

    monkeypatch.setattr(mv, "render_features", blocked)
    api.client.app.state.model_renderer.max_pending = 1
    url = f"/studies/{sid}/trials/{small}/features/0.png"
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(api.client.get, url, headers=api.reader) for _ in range(3)]
        assert started.wait(10)
        t0 = time.perf_counter()
        claim = api.client.post(f"/api/v1/workers/{wid}/claim", headers=api.worker)
        health = api.client.get("/healthz")
        page = api.client.get(f"/studies/{sid}/trials/{small}", headers=api.reader)
        elapsed = time.perf_counter() - t0
        assert claim.status_code in (200, 204) and health.status_code == 200
        assert page.status_code == 200
        assert elapsed < 5, f"claims waited {elapsed:.1f} s behind a render"
        # Another model while one render is pending: the queue (max_pending=1) is full.
        busy = api.client.get(f"/studies/{sid}/trials/{small}/filters.png", headers=api.reader)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert "busy" in busy.json()["detail"]
        gate.set()
        assert [f.result(timeout=20).content for f in waiting] == [b"png"] * 3
