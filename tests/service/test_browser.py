"""The dashboard in a real browser: headless Chromium (Debian packages ``chromium`` and
``chromium-driver``) driven by selenium against a live coordinator (uvicorn on a loopback
port, ``ARCHSEARCH_OPEN_READS=true``) whose study was filled through the API.

Every page is opened; the charts must have drawn (plotly's SVG in each chart div), the
trial page's model section must show its layer diagram and load its pictures (filters,
feature maps: ``naturalWidth > 0``), the browser console must hold no SEVERE entry, the
live refresh must pick up a new best score, and a hostile study name must show as text
(no script runs). Screenshots go to ``$ARCHSEARCH_SCREENSHOT_DIR`` when set (e.g.
``bench/out/screenshots``), else to the test's temporary directory; the folder is written
to stderr.

Without ``/usr/bin/chromium`` the test is SKIPPED with the reason, unless
``ARCHSEARCH_REQUIRE_BROWSER=1`` (CI, ``.ci/run``), where it FAILS.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from archsearch.launch import LiveCoordinator, start_coordinator, stop_coordinator
from client import Client
from protocol import TrialOut
from search_space.arch import walk
from service.dashboard.model_view import feature_pngs
from tests.helpers.coordinator import ADMIN_TOKEN, migrate
from tests.service.test_model_view import SMALL, loader_validation_image, set_arch

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE = os.environ.get("ARCHSEARCH_REQUIRE_BROWSER", "") not in ("", "0", "false")
HOSTILE = "<script>alert(1)</script> cifar"
CHARTS = {
    "study": ["chart-best", "chart-scores", "chart-parallel", "chart-importance"],
    "trial": ["chart-intermediate"],
}
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # parcoords draws with WebGL: let it use the software renderer without a GPU.
    "--enable-unsafe-swiftshader",
    "--window-size=1400,1000",
]


def _missing_browser() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def driver(tmp_path) -> Iterator[object]:
    reason = _missing_browser()
    if reason is not None:
        if REQUIRE:
            pytest.fail(f"ARCHSEARCH_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"browser test skipped: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def coordinator(sqlite_url) -> Iterator[LiveCoordinator]:
    migrate(sqlite_url)
    live = start_coordinator(
        sqlite_url, admin_token=ADMIN_TOKEN, env={"ARCHSEARCH_OPEN_READS": "true"}
    )
    try:
        yield live
    finally:
        stop_coordinator(live)


def claim_or_wait(c: Client, wid: int, studies: list[int] | None = None, seconds: float = 15):
    """A claim, asked again for up to ``seconds`` while there is none: the suggestion
    queue refills after each report in the background of the request, so a claim right
    after one may find the queue empty for a moment (the slower, the busier the host)."""
    deadline = time.monotonic() + seconds
    while (got := c.claim(wid, studies=studies)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def fill(c: Client) -> tuple[int, int, int, TrialOut]:
    """A study with COMPLETE, FAILED and INFEASIBLE trials and intermediate values;
    returns ``(study id, worker id, number of a trial with intermediate values, the
    trial left RUNNING)``."""
    study = c.create_study(
        name=HOSTILE,
        dataset="builtin:digits",
        space="pinto-cox",
        algorithm="random",
        max_trials=40,
        max_parallel=4,
        top_k=0,
    )
    wid = c.register_worker("gpu01", host="node1", device="cuda:0").id
    scored = None
    for k in range(1, 100):
        got = claim_or_wait(c, wid)
        assert got is not None, "the study ran out of trials"
        trial = got.trial
        if k == 20:
            return study.id, wid, scored, trial
        value = 0.3 + 0.5 * ((k * 37) % 17) / 17
        for step in (1, 2, 3):
            c.heartbeat(trial.id, wid, step=step, value=value * step / 3)
        if k % 6 == 0:
            c.fail(trial.id, wid, "error", "CUDA out of memory <b>really</b>")
        elif k % 7 == 0:
            c.fail(trial.id, wid, "infeasible", "L2 lnorm: a 9x9 window does not fit")
        else:
            c.complete(trial.id, wid, value)
            scored = scored or trial.number
    raise AssertionError("unreachable")


def test_every_page_renders_in_chromium(driver, coordinator, sqlite_url, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("ARCHSEARCH_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"\ndashboard screenshots: {shots.resolve()}\n")
    base = coordinator.base_url
    with Client(base, ADMIN_TOKEN) as c:
        sid, wid, scored, running = fill(c)
        # A known small model on the trial page: its pictures are rendered (below the cap).
        set_arch(sqlite_url, sid, scored, SMALL)

        def visit(name: str, path: str, charts: list[str], ready=None) -> None:
            driver.get(base + path)
            if charts:
                WebDriverWait(driver, 30).until(
                    lambda d: d.execute_script("return document.body.dataset.chartsDrawn")
                )
            if ready is not None:
                ready()
            for chart in charts:
                drawn = driver.find_elements(By.CSS_SELECTOR, f"#{chart}.js-plotly-plot .main-svg")
                assert drawn, f"{name}: chart #{chart} did not draw"
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1400, min(max(height + 160, 800), 4000))
            time.sleep(0.3)  # let plotly's responsive resize settle before the picture
            driver.save_screenshot(str(shots / f"{name}.png"))
            driver.set_window_size(1400, 1000)
            severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not severe, f"{name}: console errors {severe}"

        visit("studies", "/", [])
        assert HOSTILE in driver.find_element(By.CSS_SELECTOR, "table.grid").text
        visit("study", f"/studies/{sid}", CHARTS["study"])
        assert driver.find_element(By.TAG_NAME, "h1").text == HOSTILE  # text, not markup
        parcoords = driver.find_elements(By.CSS_SELECTOR, "#chart-parallel .parcoords")
        assert parcoords, "the parallel-coordinates trace did not draw"
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-importance .bars .point")
        assert bars, "the importance bars did not draw"

        # The live refresh: a new best score shows up without a reload. The refresh
        # replaces the element, so one found just before it may be stale when read.
        c.complete(running.id, wid, 0.999)
        WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: d.find_element(By.ID, "best-value").text == "0.999"
        )
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]

        def pictures_loaded() -> None:
            images = driver.find_elements(By.CSS_SELECTOR, "#model img.model-img")
            assert len(images) == 5, "filters + 4 feature-map stages"  # input, L0, L1, L2
            for img in images:  # lazy images load once scrolled to
                driver.execute_script("arguments[0].scrollIntoView()", img)
                WebDriverWait(driver, 60).until(
                    lambda d, img=img: d.execute_script(
                        "return arguments[0].complete && arguments[0].naturalWidth > 0", img
                    ),
                    message=f"{img.get_attribute('src')} did not load",
                )
            driver.execute_script("window.scrollTo(0, 0)")

        visit("trial", f"/studies/{sid}/trials/{scored}", CHARTS["trial"], pictures_loaded)
        report = walk(SMALL)
        rows = driver.find_elements(By.CSS_SELECTOR, "#model-diagram tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == [
            name for name, *_ in report.shapes
        ]
        assert f"{report.flops:,}" in driver.find_element(By.ID, "model-flops").text
        assert f"{report.n_params:,}" == driver.find_element(By.ID, "model-params").text
        # The feature maps are of the study's first validation image, as a worker's loader
        # and search split give it, and the page says so.
        assert "the first validation image of builtin:digits" in (
            driver.find_element(By.ID, "model").text
        )
        drawn = httpx.get(f"{base}/studies/{sid}/trials/{scored}/features/0.png").content
        image, _ = loader_validation_image("builtin:digits", c.study(sid).seed, 0.2)
        assert drawn == feature_pngs(SMALL, image)[0]
        lines = driver.find_elements(By.CSS_SELECTOR, "#chart-intermediate .scatterlayer .trace")
        assert lines, "no intermediate values drawn"
        visit("workers", "/workers", [])
        assert "gpu01" in driver.find_element(By.ID, "workers").text
    for name in ("studies", "study", "trial", "workers"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name


def test_pareto_rungs_and_blend_draw_in_chromium(driver, coordinator, sqlite_url, tmp_path):
    """The study page's accuracy-against-GFLOPs chart (its Pareto front) and rung view
    draw one marker per configuration, and a blend row links to its members' pages."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.helpers.coordinator import FG11_STUDY
    from tests.service.test_dashboard import SCHEDULE, add_blend
    from tests.service.test_pareto import value_of

    shots = Path(os.environ.get("ARCHSEARCH_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    base = coordinator.base_url
    with Client(base, ADMIN_TOKEN) as c:
        study = c.create_study(
            **FG11_STUDY, name="asha", max_trials=12, max_parallel=3, top_k=0, schedule=SCHEDULE
        )
        wid = c.register_worker("gpu02").id
        while (got := claim_or_wait(c, wid, [study.id], seconds=5)) is not None:
            t = got.trial
            c.complete(t.id, wid, value_of(t.model_dump()), {"seconds_per_image": 0.001})
        assert c.study(study.id).state == "finished"
        pareto = c.pareto(study.id, include_dominated=True)
        trials = {t.number: t.model_dump(mode="json") for t in c.trials(study.id)}
        complete = [t for t in trials.values() if t["state"] == "COMPLETE"]
        # Scores per rung: what the rung view draws, one box per rung that has any.
        per_rung = [sum(t["rung"] == k for t in complete) for k in range(3)]
        assert len(pareto.front) >= 1 and per_rung[0] == 12 and per_rung[2] >= 1, per_rung
        members = (pareto.front + pareto.dominated)[:3]
        blend_number = add_blend(sqlite_url, study.id, [trials[p.number] for p in members])
        assert c.trial(study.id, blend_number).source == "blend"

    driver.get(f"{base}/studies/{study.id}")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body.dataset.chartsDrawn")
    )
    traces = driver.find_elements(By.CSS_SELECTOR, "#chart-pareto .scatterlayer .trace")
    assert len(traces) == 2, "dominated points, then the front"
    dominated, front = (len(t.find_elements(By.CSS_SELECTOR, ".point")) for t in traces)
    assert (dominated, front) == (len(pareto.dominated), len(pareto.front))
    assert driver.find_elements(By.CSS_SELECTOR, "#chart-pareto .scatterlayer .trace .js-line")
    assert "log scale" in driver.find_element(By.ID, "chart-pareto").text

    boxes = driver.find_elements(By.CSS_SELECTOR, "#chart-rungs .boxlayer .trace")
    assert [len(b.find_elements(By.CSS_SELECTOR, ".point")) for b in boxes] == per_rung
    bars = driver.find_elements(By.CSS_SELECTOR, "#chart-rungs .barlayer .point")
    assert len(bars) == 3, "one bar per rung: the configurations that reached it"
    labels = driver.find_element(By.ID, "chart-rungs").text
    assert "rung 0 \u00b7 10 per class" in labels and "rung 2 \u00b7 90 per class" in labels

    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-blend="{blend_number}"]')
    assert "blend of" in row.text
    links = row.find_elements(By.CSS_SELECTOR, "a.member")
    assert [a.text for a in links] == [f"#{p.number}" for p in members]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 160, 800), 5000))
    time.sleep(0.3)  # plotly's responsive resize
    driver.save_screenshot(str(shots / "study-pareto.png"))
    driver.set_window_size(1400, 1000)
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, f"console errors {severe}"
    links[0].click()
    # The old page's h1 goes stale while the member's page loads.
    WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.TAG_NAME, "h1").text == f"Trial {members[0].number}"
    )
    driver.get(f"{base}/studies/{study.id}/trials/{blend_number}")
    shown = driver.find_elements(By.CSS_SELECTOR, "#blend-members a.member")
    assert [a.text for a in shown] == [str(p.number) for p in members]
    assert not driver.find_elements(By.ID, "model")
