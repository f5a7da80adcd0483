/* archsearch dashboard: draws the charts from the /api/v1 results queries and refreshes
 * the page's live section every few seconds.
 *
 * Contract with the templates: <body data-root data-refresh>, one element #live whose
 * data-version changes when its data does (the page URL with ?partial=1 answers it alone),
 * #study-charts[data-study] or #trial-charts[data-study][data-number] for the charts, and
 * .chart[data-chart] divs; img[data-retry] pictures are asked again when refused. After
 * each draw, body[data-charts-drawn] counts the draws.
 * Everything shown from the server's data is set through textContent or plotly, never as
 * HTML, except the server-rendered (escaped) #live fragment.
 */
(function () {
  "use strict";

  const body = document.body;
  const root = body.dataset.root || "";
  const refreshMs = 1000 * (Number(body.dataset.refresh) || 5);
  const COLORS = {
    COMPLETE: "#2e9d5b", RUNNING: "#2f6fdb", WAITING: "#8a94a6",
    PRUNED: "#d88b1c", FAILED: "#d23f3f", INFEASIBLE: "#7d5bbf",
  };
  const CONFIG = { displaylogo: false, responsive: true };
  const MAX_PARALLEL_AXES = 8;
  const MAX_IMPORTANCE_BARS = 20;

  function layout(extra) {
    return Object.assign({
      margin: { l: 56, r: 16, t: 32, b: 44 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { size: 11, color: "#1d2330" },
      showlegend: false,
    }, extra || {});
  }

  function emptyLayout(text, extra) {
    return layout(Object.assign({
      xaxis: { visible: false }, yaxis: { visible: false },
      annotations: [{ text: text, showarrow: false, xref: "paper", yref: "paper",
                      x: 0.5, y: 0.5, font: { size: 13, color: "#6b7385" } }],
    }, extra || {}));
  }

  async function getJSON(path) {
    const response = await fetch(root + path, {
      credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (!response.ok) {
      throw new Error(path + ": HTTP " + response.status);
    }
    return response.json();
  }

  function draw(div, data, lay) {
    if (!div) { return Promise.resolve(); }
    return Plotly.react(div, data, lay, CONFIG);
  }

  function failed(div, error) {
    if (!div) { return; }
    return draw(div, [], emptyLayout("could not load: " + error.message));
  }

  // -- the study page ---------------------------------------------------------------------
  function drawBest(div, history) {
    const best = history.points.filter((p) => p.best_so_far !== null);
    if (!best.length) {
      return draw(div, [], emptyLayout("no COMPLETE trial yet"));
    }
    const complete = history.points.filter((p) => p.state === "COMPLETE" && p.value !== null);
    return draw(div, [
      { type: "scatter", mode: "markers", name: "COMPLETE score",
        x: complete.map((p) => p.number), y: complete.map((p) => p.value),
        marker: { size: 5, color: "rgba(46,157,91,0.45)" },
        hovertemplate: "trial %{x}<br>score %{y:.4g}<extra></extra>" },
      { type: "scatter", mode: "lines", name: "best so far", line: { shape: "hv", width: 2.5,
        color: "#2f6fdb" }, x: best.map((p) => p.number), y: best.map((p) => p.best_so_far),
        hovertemplate: "trial %{x}<br>best %{y:.4g}<extra></extra>" },
    ], layout({ xaxis: { title: { text: "trial" } }, yaxis: { title: { text: "score" } } }));
  }

  function drawScores(div, history) {
    const scored = history.points.filter((p) => p.value !== null);
    const unscored = history.points.filter(
      (p) => p.value === null && (p.state === "FAILED" || p.state === "INFEASIBLE"));
    if (!scored.length && !unscored.length) {
      return draw(div, [], emptyLayout("no trial has ended yet"));
    }
    const floor = scored.length ? Math.min.apply(null, scored.map((p) => p.value)) : 0;
    const traces = [];
    for (const state of Object.keys(COLORS)) {
      const pts = scored.filter((p) => p.state === state);
      if (pts.length) {
        traces.push({ type: "scatter", mode: "markers", name: state,
          x: pts.map((p) => p.number), y: pts.map((p) => p.value),
          marker: { size: 6, color: COLORS[state], opacity: 0.8 },
          hovertemplate: "trial %{x}<br>" + state + " %{y:.4g}<extra></extra>" });
      }
      const none = unscored.filter((p) => p.state === state);
      if (none.length) {
        traces.push({ type: "scatter", mode: "markers", name: state + " (no score)",
          x: none.map((p) => p.number), y: none.map(() => floor),
          marker: { size: 7, symbol: "x-thin", line: { width: 1.5, color: COLORS[state] },
                    color: COLORS[state] },
          hovertemplate: "trial %{x}<br>" + state + ", no score<extra></extra>" });
      }
    }
    return draw(div, traces, layout({
      showlegend: true, legend: { orientation: "h", y: -0.22 },
      margin: { l: 56, r: 16, t: 32, b: 70 },
      xaxis: { title: { text: "trial" } }, yaxis: { title: { text: "score" } },
    }));
  }

  function parallelAxis(axis) {
    const present = axis.values.filter((v) => v !== null);
    const hasNull = present.length < axis.values.length;
    const dim = { label: axis.label };
    if (axis.options) {
      const ticks = axis.options.map((_, i) => i);
      const text = axis.options.slice();
      if (hasNull) { ticks.unshift(-1); text.unshift("off"); }
      dim.tickvals = ticks;
      dim.ticktext = text;
      dim.range = [ticks[0], Math.max(ticks[ticks.length - 1], ticks[0] + 1)];
      dim.values = axis.values.map((v) => (v === null ? -1 : v));
      return dim;
    }
    const lo = present.length ? Math.min.apply(null, present) : 0;
    const hi = present.length ? Math.max.apply(null, present) : 1;
    const off = lo - 0.1 * ((hi - lo) || 1);
    if (hasNull) { dim.label = axis.label + " (off: bottom)"; }
    dim.values = axis.values.map((v) => (v === null ? off : v));
    return dim;
  }

  function drawParallel(div, parallel, importance) {
    if (!parallel.numbers.length) {
      return draw(div, [], emptyLayout("no COMPLETE trial yet"));
    }
    const byLabel = new Map(parallel.axes.map((a) => [a.label, a]));
    let chosen = (importance && importance.importances || [])
      .map((i) => byLabel.get(i.label)).filter(Boolean);
    if (!chosen.length) { chosen = parallel.axes; }
    chosen = chosen.slice(0, MAX_PARALLEL_AXES);
    const dims = chosen.map(parallelAxis);
    dims.push({ label: "score", values: parallel.values });
    return draw(div, [{
      type: "parcoords", dimensions: dims, labelangle: -12, labelside: "top",
      line: { color: parallel.values, colorscale: "Viridis", showscale: true,
              colorbar: { title: { text: "score" }, thickness: 12 } },
    }], layout({ margin: { l: 70, r: 70, t: 70, b: 24 } }));
  }

  function drawImportance(div, importance, note) {
    if (note) {
      note.textContent = importance.note ? "(" + importance.note + ")"
        : "(random forest on " + importance.n_fit + " of " + importance.n_complete
          + " COMPLETE trials)";
    }
    const items = importance.importances.slice(0, MAX_IMPORTANCE_BARS).reverse();
    if (div) { div.style.height = Math.max(240, 22 * items.length + 90) + "px"; }
    if (!items.length) {
      return draw(div, [], emptyLayout(importance.note || "no importance yet"));
    }
    return draw(div, [{
      type: "bar", orientation: "h", x: items.map((i) => i.importance),
      y: items.map((i) => i.label), marker: { color: "#2f6fdb" },
      hovertemplate: "%{y}<br>%{x:.3f}<extra></extra>",
    }], layout({ margin: { l: 170, r: 16, t: 32, b: 40 },
                 xaxis: { title: { text: "importance (sums to 1)" } },
                 yaxis: { automargin: true } }));
  }

  // Score against GFLOP per image: every COMPLETE configuration, the Pareto front as a
  // staircase (trace 0: the dominated points, trace 1: the front).
  function drawPareto(div, pareto, note) {
    const front = pareto.front;
    const others = pareto.dominated;
    if (note) {
      note.textContent = pareto.n_configurations
        ? "(" + front.length + " of " + pareto.n_configurations + " on the front"
          + (pareto.n_unknown_cost ? "; " + pareto.n_unknown_cost + " of unknown cost" : "")
          + ")"
        : "";
    }
    if (!front.length) {
      return draw(div, [], emptyLayout("no COMPLETE configuration yet"));
    }
    const text = (p) => "trial " + p.number + (p.rung ? " (rung " + p.rung + ")" : "")
      + "<br>" + (p.arch_summary || "");
    const hover = "%{text}<br>score %{y:.4g} \u00b7 %{x:.3g} GFLOP<extra></extra>";
    return draw(div, [
      { type: "scatter", mode: "markers", name: "dominated",
        x: others.map((p) => p.gflops_per_image), y: others.map((p) => p.value),
        text: others.map(text), hovertemplate: hover,
        marker: { size: 6, color: "rgba(138,148,166,0.55)" } },
      { type: "scatter", mode: "lines+markers", name: "Pareto front",
        x: front.map((p) => p.gflops_per_image), y: front.map((p) => p.value),
        text: front.map(text), hovertemplate: hover, line: { shape: "hv", color: "#d23f3f", width: 2 },
        marker: { size: 8, color: "#d23f3f" } },
    ], layout({
      showlegend: true, legend: { orientation: "h", y: -0.25 },
      margin: { l: 56, r: 16, t: 32, b: 76 },
      xaxis: { type: "log", title: { text: "GFLOP per image (log scale)" } },
      yaxis: { title: { text: "score" } },
    }));
  }

  // The rungs of an ASHA schedule: per rung, how many configurations reached it (bars,
  // right axis) and the scores of those COMPLETE there (one box with every point).
  function drawRungs(div, rungs) {
    if (!rungs.rungs.length) {
      return draw(div, [], emptyLayout(rungs.note || "no rungs"));
    }
    const unit = rungs.resource === "epochs" ? " epochs" : " per class";
    const labels = rungs.rungs.map((r) => "rung " + r.rung + " \u00b7 " + r.resource + unit);
    const traces = [{
      type: "bar", name: "reached", x: labels, y: rungs.rungs.map((r) => r.reached),
      yaxis: "y2", marker: { color: "rgba(47,111,219,0.15)" },
      text: rungs.rungs.map((r) => r.reached + " reached, " + r.complete + " scored"),
      textposition: "none", hovertemplate: "%{x}<br>%{text}<extra></extra>",
    }];
    rungs.rungs.forEach((r, i) => {
      if (!r.values.length) { return; }
      traces.push({
        type: "box", name: labels[i], x: r.values.map(() => labels[i]), y: r.values,
        boxpoints: "all", jitter: 0.5, pointpos: 0, marker: { size: 5, color: "#2e9d5b" },
        line: { color: "#2e9d5b" }, fillcolor: "rgba(46,157,91,0.12)",
        text: r.numbers.map((n) => "trial " + n), hoverinfo: "text+y",
      });
    });
    return draw(div, traces, layout({
      xaxis: { type: "category", categoryorder: "array", categoryarray: labels },
      yaxis: { title: { text: "score at the rung" } },
      yaxis2: { title: { text: "configurations reached" }, overlaying: "y", side: "right",
                rangemode: "tozero", showgrid: false, tickmode: "auto", tickformat: "d" },
      margin: { l: 56, r: 56, t: 32, b: 44 },
    }));
  }

  function parallelPath(base, importance) {
    const top = (importance && importance.importances || []).slice(0, MAX_PARALLEL_AXES);
    if (!top.length) { return base + "/parallel"; }
    const query = new URLSearchParams();
    for (const item of top) { query.append("labels", item.label); }
    return base + "/parallel?" + query.toString();
  }

  async function studyCharts(el) {
    const base = "/api/v1/studies/" + el.dataset.study;
    const div = (name) => document.getElementById("chart-" + name);
    // The parallel chart asks only for the most important labels, so importance first.
    const [history, importance] = await Promise.allSettled([
      getJSON(base + "/history"), getJSON(base + "/importance"),
    ]);
    const imp = importance.status === "fulfilled" ? importance.value : null;
    const parallel = getJSON(parallelPath(base, imp));
    const jobs = [];
    if (history.status === "fulfilled") {
      jobs.push(drawBest(div("best"), history.value), drawScores(div("scores"), history.value));
    } else {
      jobs.push(failed(div("best"), history.reason), failed(div("scores"), history.reason));
    }
    jobs.push(imp ? drawImportance(div("importance"), imp, document.getElementById("importance-note"))
      : failed(div("importance"), importance.reason));
    jobs.push(parallel.then((p) => drawParallel(div("parallel"), p, imp),
                            (error) => failed(div("parallel"), error)));
    jobs.push(getJSON(base + "/pareto?include_dominated=true").then(
      (p) => drawPareto(div("pareto"), p, document.getElementById("pareto-note")),
      (error) => failed(div("pareto"), error)));
    if (div("rungs")) {  // only a study with a schedule has the rung view
      jobs.push(getJSON(base + "/rungs").then((r) => drawRungs(div("rungs"), r),
                                                (error) => failed(div("rungs"), error)));
    }
    await Promise.all(jobs);
  }

  // -- the trial page ----------------------------------------------------------------------
  async function trialCharts(el) {
    const div = document.getElementById("chart-intermediate");
    let trial;
    try {
      trial = await getJSON("/api/v1/studies/" + el.dataset.study + "/trials/" + el.dataset.number);
    } catch (error) {
      return failed(div, error);
    }
    const points = (trial.intermediate || []).filter((p) => Array.isArray(p) && p.length >= 2);
    if (!points.length) {
      return draw(div, [], emptyLayout("no intermediate values reported"));
    }
    return draw(div, [{
      type: "scatter", mode: "lines+markers", x: points.map((p) => p[0]),
      y: points.map((p) => p[1]), line: { color: "#2f6fdb" },
      hovertemplate: "step %{x}<br>%{y:.4g}<extra></extra>",
    }], layout({
      xaxis: { title: { text: "step" }, dtick: points.length <= 20 ? 1 : undefined },
      yaxis: { title: { text: "value" } },
    }));
  }

  // -- the trial page's model pictures ----------------------------------------------------
  // img[data-retry=N]: a picture the render queue turned away (503) is asked again up to N
  // times, 2 s apart; then a note replaces it.
  function retryImage(img) {
    const left = Number(img.dataset.retry) || 0;
    if (left <= 0) {
      const note = document.createElement("p");
      note.className = "empty";
      note.textContent = "could not load " + (img.alt || "the picture") + "; reload to try again";
      img.replaceWith(note);
      return;
    }
    img.dataset.retry = String(left - 1);
    window.setTimeout(function () {
      const url = new URL(img.src, window.location.href);
      url.searchParams.set("retry", String(left));
      img.src = url.toString();
    }, 2000);
  }

  function watchImages() {
    for (const img of document.querySelectorAll("img[data-retry]")) {
      img.addEventListener("error", function () { retryImage(img); });
      // complete and empty: it failed before this ran (a lazy one not yet asked for is
      // not complete).
      if (img.complete && img.naturalWidth === 0) { retryImage(img); }
    }
  }

  // -- drawing and refreshing -----------------------------------------------------------------
  async function drawCharts() {
    if (typeof Plotly === "undefined") { return; }
    const study = document.getElementById("study-charts");
    const trial = document.getElementById("trial-charts");
    if (study) { await studyCharts(study); }
    if (trial) { await trialCharts(trial); }
    if (study || trial) {
      body.dataset.chartsDrawn = String(Number(body.dataset.chartsDrawn || 0) + 1);
    }
  }

  function setStatus(text, stale) {
    const el = document.getElementById("refresh-status");
    if (el) {
      el.textContent = text;
      el.classList.toggle("stale", Boolean(stale));
    }
  }

  async function refresh() {
    const live = document.getElementById("live");
    if (!live || document.hidden) { return; }
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) { throw new Error("HTTP " + response.status); }
    const tpl = document.createElement("template");
    tpl.innerHTML = (await response.text()).trim();
    const fresh = tpl.content.firstElementChild;
    if (fresh && fresh.id === "live" && fresh.dataset.version !== live.dataset.version) {
      live.replaceWith(fresh);
      await drawCharts();
    }
  }

  function loop() {
    window.setTimeout(async function () {
      try {
        await refresh();
        setStatus("live \u00b7 " + new Date().toLocaleTimeString(), false);
      } catch (error) {
        setStatus("refresh failed (" + error.message + "), retrying", true);
      }
      loop();
    }, refreshMs);
  }

  document.addEventListener("DOMContentLoaded", function () {
    watchImages();
    drawCharts().catch(function (error) { setStatus("charts: " + error.message, true); });
    loop();
  });
})();
