// The graph page: a PromQL expression's series over a time range, and their values now.
//
// Reads the address Prometheus's alert links use (/graph?g0.expr=...&g0.range_input=1h) and
// the Prometheus API with the session cookie. Label values come from whoever can push metrics,
// so the view is built from text nodes only (no innerHTML).
(() => {
  "use strict";

  const form = document.getElementById("graph-form");
  const exprInput = document.getElementById("expr");
  const rangeSelect = document.getElementById("range");
  const errorBox = document.getElementById("error");
  const chartBox = document.getElementById("chart");
  const summary = document.getElementById("summary");
  const valuesBody = document.querySelector("#values tbody");
  const empty = document.getElementById("empty");
  const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  // Grafana's choice of step: the range over about 250 points, rounded to a whole second.
  const POINTS = 250;
  const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0550ae", "#953800"];
  let chart = null;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) node.append(child);
    return node;
  }

  function seriesName(metric) {
    const name = metric.__name__ || "";
    const labels = Object.keys(metric)
      .filter((k) => k !== "__name__")
      .sort()
      .map((k) => `${k}="${metric[k]}"`);
    return labels.length ? `${name}{${labels.join(", ")}}` : name || "{}";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  // The project whose series the page shows: an alert of another project's rule links here
  // with ?project=... (without it, the default project's, where that series does not exist).
  const project = new URLSearchParams(window.location.search).get("project") || "";

  async function api(path, params) {
    const query = new URLSearchParams(params);
    if (project) query.set("project", project);
    const response = await fetch(`/api/v1/${path}?${query}`, { credentials: "same-origin" });
    if (response.status === 401) {
      window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
      throw new Error("not logged in");
    }
    const body = await response.json();
    if (body.status !== "success") throw new Error(body.error || `HTTP ${response.status}`);
    return body.data;
  }

  function readAddress() {
    const params = new URLSearchParams(window.location.search);
    exprInput.value = params.get("g0.expr") || params.get("expr") || "";
    const range = params.get("g0.range_input") || params.get("range");
    if (range && RANGES[range]) rangeSelect.value = range;
  }

  function writeAddress() {
    const params = new URLSearchParams({ "g0.expr": exprInput.value, "g0.range_input": rangeSelect.value });
    if (project) params.set("project", project);
    const search = `?${params}`;
    if (search !== window.location.search) window.history.replaceState(null, "", search);
  }

  function render(matrix, start, end, step) {
    if (chart) {
      chart.destroy();
      chart = null;
    }
    chartBox.replaceChildren();
    const times = [];
    for (let t = start; t <= end; t += step) times.push(t);
    const index = new Map(times.map((t, i) => [t, i]));
    const rows = matrix.map((s) => {
      const ys = new Array(times.length).fill(null);
      for (const [t, v] of s.values) {
        const i = index.get(t);
        if (i !== undefined) ys[i] = Number(v);
      }
      return ys;
    });
    chartBox.hidden = matrix.length === 0;
    if (matrix.length === 0) return;
    if (typeof window.uPlot !== "function") {
      chartBox.append(el("p", { class: "muted chart-missing" }, "Chart library not installed (run `make assets`)."));
      return;
    }
    const options = {
      width: Math.max(300, chartBox.clientWidth),
      height: 320,
      cursor: { points: { show: false } },
      legend: { show: matrix.length <= 20, live: true },
      scales: { x: { time: true } },
      axes: [{ stroke: "#57606a" }, { stroke: "#57606a", size: 70 }],
      series: [
        {},
        ...matrix.map((s, i) => ({
          label: seriesName(s.metric),
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: false,
          points: { show: false },
        })),
      ],
    };
    chart = new window.uPlot(options, [times, ...rows], chartBox);
  }

  function renderValues(vector) {
    valuesBody.replaceChildren();
    for (const s of vector) {
      valuesBody.append(el("tr", {}, el("td", { class: "series" }, seriesName(s.metric)), el("td", { class: "value" }, s.value[1])));
    }
  }

  async function run() {
    errorBox.hidden = true;
    empty.hidden = true;
    document.body.dataset.ready = "0";
    const expr = exprInput.value.trim();
    writeAddress();
    if (!expr) {
      document.body.dataset.ready = "1";
      return;
    }
    const span = RANGES[rangeSelect.value] || 3600;
    const step = Math.max(1, Math.round(span / POINTS));
    const end = Math.floor(Date.now() / 1000 / step) * step;
    const start = end - Math.floor(span / step) * step;
    try {
      const [range, now] = await Promise.all([
        api("query_range", { query: expr, start, end, step }),
        api("query", { query: expr, time: Date.now() / 1000 }),
      ]);
      const matrix = range.resultType === "matrix" ? range.result : [];
      render(matrix, start, end, step);
      const vector = now.resultType === "vector" ? now.result : now.resultType === "scalar" ? [{ metric: {}, value: now.result }] : [];
      renderValues(vector);
      summary.textContent = `${matrix.length} series, step ${step} s`;
      empty.hidden = matrix.length > 0 || vector.length > 0;
    } catch (err) {
      if (chart) {
        chart.destroy();
        chart = null;
      }
      chartBox.hidden = true;
      valuesBody.replaceChildren();
      summary.textContent = "";
      showError(err.message);
    }
    document.body.dataset.ready = "1";
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  rangeSelect.addEventListener("change", run);
  readAddress();
  run();
})();
