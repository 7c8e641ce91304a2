// Stackwatch log explorer: query box, time range, level histogram, results, live tail.
//
// Everything on the page comes from the JSON API (/api/v1/logs/...) called with the session
// cookie. Log lines are written by whoever can reach an ingest endpoint, so they are only ever
// put into the page as text nodes (Node.append / textContent), never parsed as HTML.
// The query and time range live in the URL (?q=&start=&end=) so a view can be shared.
"use strict";

(() => {
  const API = "/api/v1/logs";
  const PAGE_SIZE = 100;
  // Live tail keeps prepending; past this many rows the oldest are dropped to stay fast.
  const MAX_ROWS = 2000;
  // Stacked bottom to top: the rare, important levels sit on the baseline where they show.
  const LEVEL_STACK = ["FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"];
  const LEVEL_COLORS = {
    FATAL: "#7f1d1d",
    ERROR: "#dc2626",
    WARN: "#d97706",
    INFO: "#2563eb",
    DEBUG: "#64748b",
    TRACE: "#a3acb9",
  };
  const OTHER_COLOR = "#8b5cf6";
  const PRESETS = {
    "15m": "Last 15 minutes",
    "1h": "Last 1 hour",
    "6h": "Last 6 hours",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
  };
  const DEFAULT_PRESET = "1h";
  // Columns of a hit that the query language can filter on, in the order they are shown.
  const HIT_FIELDS = ["level", "service", "host", "logger", "function", "source", "log_type", "trace_id", "span_id"];
  const UNIT_MS = { ms: 1, s: 1e3, m: 6e4, h: 36e5, d: 864e5, w: 6048e5, y: 31536e6 };

  const $ = (id) => document.getElementById(id);
  const form = $("query-form");
  const queryInput = $("q");
  const rangeSelect = $("range");
  const customRange = $("custom-range");
  const startInput = $("start");
  const endInput = $("end");
  const errorBox = $("error");
  const totalLabel = $("total");
  const rangeLabel = $("range-label");
  const liveToggle = $("live");
  const liveStatus = $("live-status");
  const histogramBox = $("histogram");
  const rowsBody = $("rows");
  const emptyNote = $("empty");
  const loadMoreButton = $("load-more");

  const state = { q: "", start: `-${DEFAULT_PRESET}`, end: "now", cursor: null, total: 0, live: 0 };
  let inflight = null; // AbortController of the running search, so a newer one cancels it
  let chart = null;
  let tail = null; // EventSource while live tail is on
  let tailBuffer = [];
  let tailFlushScheduled = false;

  // -- DOM helpers -------------------------------------------------------------------------

  /** Build an element; string children become text nodes, so no markup is ever parsed. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "title" || key === "colspan") {
        node.setAttribute(key, String(value));
      } else node[key] = value;
    }
    for (const child of children) {
      if (child !== undefined && child !== null && child !== false) node.append(child);
    }
    return node;
  }

  const pad = (n, width = 2) => String(n).padStart(width, "0");
  const formatCount = (n) => Number(n).toLocaleString("en-US");

  function formatTime(ms, withMillis = true) {
    const d = new Date(ms);
    const text =
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMillis ? `${text}.${pad(d.getMilliseconds(), 3)}` : text;
  }

  const hitMillis = (hit) =>
    typeof hit.timestamp_ns === "number" ? hit.timestamp_ns / 1e6 : Date.parse(hit.timestamp);

  // -- time ranges -------------------------------------------------------------------------

  /** Resolve the API's time forms (now, -1h, now-15m, RFC 3339, epoch seconds) to epoch ms,
   * so the histogram's x axis can span the range even where it has no data; null if unknown. */
  function resolveTime(text, nowMs) {
    const value = (text || "").trim();
    if (!value || value === "now") return nowMs;
    const relative = /^(?:now)?([+-])((?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))+)$/.exec(value);
    if (relative) {
      let total = 0;
      for (const [, amount, unit] of relative[2].matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)/g)) {
        total += Number(amount) * UNIT_MS[unit];
      }
      return relative[1] === "-" ? nowMs - total : nowMs + total;
    }
    if (/^\d+(\.\d+)?$/.test(value)) return Number(value) * 1000;
    const parsed = Date.parse(value);
    return Number.isNaN(parsed) ? null : parsed;
  }

  const presetOf = (start, end) => {
    const key = start.startsWith("-") ? start.slice(1) : start.startsWith("now-") ? start.slice(4) : null;
    return key in PRESETS && (end === "now" || end === "") ? key : null;
  };

  function describeRange() {
    const preset = presetOf(state.start, state.end);
    if (preset) return PRESETS[preset];
    const now = Date.now();
    const describe = (text) => {
      const ms = resolveTime(text, now);
      return /^(now|[+-]|now[+-])/.test(text) || ms === null ? text : formatTime(ms, false);
    };
    return `${describe(state.start)} → ${describe(state.end || "now")}`;
  }

  // -- URL <-> form ------------------------------------------------------------------------

  function readUrl() {
    const params = new URLSearchParams(window.location.search);
    state.q = params.get("q") || "";
    state.start = params.get("start") || `-${DEFAULT_PRESET}`;
    state.end = params.get("end") || "now";
    queryInput.value = state.q;
    const preset = presetOf(state.start, state.end);
    rangeSelect.value = preset || "custom";
    customRange.hidden = preset !== null;
    startInput.value = preset ? "" : state.start;
    endInput.value = preset ? "" : state.end;
  }

  function readForm() {
    state.q = queryInput.value.trim();
    if (rangeSelect.value === "custom") {
      state.start = startInput.value.trim() || `-${DEFAULT_PRESET}`;
      state.end = endInput.value.trim() || "now";
    } else {
      state.start = `-${rangeSelect.value}`;
      state.end = "now";
    }
  }

  function writeUrl(push) {
    const params = new URLSearchParams();
    if (state.q) params.set("q", state.q);
    params.set("start", state.start);
    params.set("end", state.end);
    const search = `?${params}`;
    if (search === window.location.search) return;
    const url = window.location.pathname + search;
    if (push) window.history.pushState(null, "", url);
    else window.history.replaceState(null, "", url);
  }

  // -- API ---------------------------------------------------------------------------------

  class ApiError extends Error {}

  async function getJson(path, params, signal) {
    const response = await fetch(`${API}/${path}?${new URLSearchParams(params)}`, {
      signal,
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401) {
      // The session expired or was revoked: log in again and come back to this view.
      window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
      throw new ApiError("Your session has ended; log in again.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      throw new ApiError(body && body.error ? body.error : `${response.status} ${response.statusText}`);
    }
    return body;
  }

  function showError(message) {
    errorBox.replaceChildren(el("strong", {}, "Error: "), message);
    errorBox.hidden = false;
    // A syntax error names its position: put the caret there so it can be fixed at once.
    const at = /at position (\d+)/.exec(message);
    if (at && queryInput.value) {
      const pos = Math.min(Number(at[1]), queryInput.value.length);
      queryInput.focus();
      queryInput.setSelectionRange(pos, Math.min(pos + 1, queryInput.value.length));
    }
  }

  function hideError() {
    errorBox.hidden = true;
    errorBox.replaceChildren();
  }

  // -- running a query ---------------------------------------------------------------------

  async function run({ push = true } = {}) {
    readForm();
    writeUrl(push);
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    hideError();
    document.body.classList.add("loading");
    rangeLabel.textContent = describeRange();
    const base = { q: state.q, start: state.start, end: state.end };
    try {
      const [page, histogram] = await Promise.all([
        getJson("search", { ...base, limit: PAGE_SIZE }, controller.signal),
        getJson("histogram", { ...base, by: "level" }, controller.signal),
      ]);
      state.cursor = page.next_cursor;
      state.total = page.total;
      state.live = 0;
      rowsBody.replaceChildren(...page.hits.map(hitRow));
      renderTotal();
      renderMore();
      renderHistogram(histogram, Date.now());
      if (liveToggle.checked) startTail();
    } catch (err) {
      if (err.name === "AbortError") return;
      state.cursor = null;
      state.total = 0;
      rowsBody.replaceChildren();
      totalLabel.textContent = "—";
      emptyNote.hidden = true;
      renderMore();
      destroyChart();
      stopTail();
      showError(err instanceof ApiError ? err.message : `cannot reach the server (${err.message})`);
    } finally {
      if (inflight === controller) {
        inflight = null;
        document.body.classList.remove("loading");
      }
    }
  }

  async function loadMore() {
    if (!state.cursor) return;
    loadMoreButton.disabled = true;
    try {
      const page = await getJson("search", {
        q: state.q,
        start: state.start,
        end: state.end,
        limit: PAGE_SIZE,
        cursor: state.cursor,
      });
      state.cursor = page.next_cursor;
      rowsBody.append(...page.hits.map(hitRow));
    } catch (err) {
      showError(err.message);
    } finally {
      loadMoreButton.disabled = false;
      renderMore();
    }
  }

  function renderTotal() {
    const hits = state.total === 1 ? "1 hit" : `${formatCount(state.total)} hits`;
    totalLabel.textContent = state.live ? `${hits} (+${formatCount(state.live)} live)` : hits;
    emptyNote.hidden = rowsBody.childElementCount > 0;
  }

  function renderMore() {
    loadMoreButton.hidden = !state.cursor;
  }

  // -- results table -----------------------------------------------------------------------

  function levelBadge(level) {
    const name = (level || "").toUpperCase();
    return el("span", { class: `level level-${LEVEL_COLORS[name] ? name.toLowerCase() : "other"}` }, name || "—");
  }

  function hitRow(hit) {
    const ms = hitMillis(hit);
    const firstLine = String(hit.message ?? "").split("\n", 1)[0];
    const row = el(
      "tr",
      { class: "log-row", tabIndex: 0, "aria-expanded": "false" },
      el("td", { class: "time", title: hit.timestamp }, formatTime(ms)),
      el("td", { class: "lvl" }, levelBadge(hit.level)),
      el("td", { class: "service", title: hit.service }, hit.service || ""),
      el("td", { class: "message" }, firstLine),
    );
    row.hit = hit;
    return row;
  }

  function toggleRow(row) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains("log-detail")) {
      next.remove();
      row.setAttribute("aria-expanded", "false");
      return;
    }
    row.after(el("tr", { class: "log-detail" }, el("td", { colspan: 4 }, detailView(row.hit))));
    row.setAttribute("aria-expanded", "true");
  }

  /** The fields of one line: each filterable value is a button that adds it to the query. */
  function detailView(hit) {
    const rows = [];
    const add = (label, value, field) => {
      if (value === undefined || value === null || value === "") return;
      rows.push(fieldRow(label, value, field));
    };
    add("timestamp", hit.timestamp);
    for (const name of HIT_FIELDS) add(name, hit[name], name);
    const attributes = hit.attributes || {};
    for (const key of Object.keys(attributes).sort()) add(key, attributes[key], key);
    const resource = hit.resource || {};
    // Resource attributes are shown for context; the query language does not address them.
    for (const key of Object.keys(resource).sort()) add(`resource.${key}`, resource[key]);
    add("observed_timestamp", hit.observed_timestamp);
    return el(
      "div",
      { class: "detail" },
      el("pre", { class: "full-message" }, String(hit.message ?? "")),
      el("table", { class: "fields" }, el("tbody", {}, ...rows)),
    );
  }

  function fieldRow(label, value, field) {
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    const cell = el("td", { class: "value" });
    if (field) {
      const include = el("button", { type: "button", class: "field-value", title: `Filter for ${label}` }, text);
      const exclude = el(
        "button",
        { type: "button", class: "field-exclude", title: `Filter out ${label}`, "aria-label": `Filter out ${label}` },
        "−",
      );
      for (const button of [include, exclude]) {
        button.dataset.field = field;
        button.fieldValue = value; // typed, so numbers and booleans are written unquoted
      }
      cell.append(include, exclude);
      if (field === "trace_id" && /^[0-9a-fA-F]{32}$/.test(text)) {
        // A trace id opens the whole request: its spans, its other log lines, its errors.
        cell.append(" ", el("a", { class: "trace-link", href: `/traces/${text.toLowerCase()}` }, "Open trace"));
      }
    } else {
      cell.append(el("span", { class: "plain" }, text));
    }
    return el("tr", {}, el("th", { scope: "row", title: label }, label), cell);
  }

  /** `field:"value"` in the query language: values quoted and escaped, odd field names escaped. */
  function filterTerm(field, value) {
    const name = /^[A-Za-z_@][\w.@]*$/.test(field) ? field : field.replace(/[^\w.@]/g, "\\$&");
    const literal =
      typeof value === "number" || typeof value === "boolean"
        ? String(value)
        : `"${String(value).replace(/[\\"]/g, "\\$&")}"`;
    return `${name}:${literal}`;
  }

  function addFilter(field, value, exclude) {
    const term = filterTerm(field, value);
    const clause = exclude ? `NOT ${term}` : term;
    let query = queryInput.value.trim();
    if (query.includes(clause)) return;
    if (!query) query = clause;
    else if (/\bOR\b/.test(query)) query = `(${query}) AND ${clause}`; // AND binds tighter than OR
    else query = `${query} AND ${clause}`;
    queryInput.value = query;
    run();
  }

  // -- histogram ---------------------------------------------------------------------------

  function destroyChart() {
    if (chart) chart.destroy();
    chart = null;
    histogramBox.replaceChildren();
    histogramBox.hidden = true;
  }

  /** Stacked bars of counts per level, with empty buckets filled so gaps show as gaps. */
  function renderHistogram(body, nowMs) {
    destroyChart();
    histogramBox.hidden = false;
    if (typeof window.uPlot !== "function") {
      histogramBox.append(
        el("p", { class: "muted chart-missing" }, "Chart library not installed (run `make assets`)."),
      );
      return;
    }
    const interval = body.interval;
    const startMs = resolveTime(state.start, nowMs);
    const endMs = resolveTime(state.end, nowMs);
    const xs = new Set();
    if (startMs !== null && endMs !== null && endMs > startMs) {
      const first = Math.floor(startMs / 1000 / interval) * interval;
      const last = Math.floor((endMs / 1000 - 1e-3) / interval) * interval;
      for (let t = first; t <= last && xs.size < 20000; t += interval) xs.add(t);
    }
    const byLevel = new Map();
    for (const bucket of body.buckets) {
      xs.add(bucket.t);
      const level = (bucket.level || "OTHER").toUpperCase();
      if (!byLevel.has(level)) byLevel.set(level, new Map());
      byLevel.get(level).set(bucket.t, bucket.count);
    }
    const times = [...xs].sort((a, b) => a - b);
    if (times.length === 0) return;
    const levels = [
      ...LEVEL_STACK.filter((l) => byLevel.has(l)),
      ...[...byLevel.keys()].filter((l) => !LEVEL_STACK.includes(l)).sort(),
    ];
    const raw = levels.map((level) => times.map((t) => byLevel.get(level).get(t) || 0));
    const stacked = [];
    raw.forEach((counts, i) => stacked.push(counts.map((c, j) => c + (i ? stacked[i - 1][j] : 0))));
    // uPlot paints series in order, so the tallest (top of the stack) goes first and each
    // lower layer is painted over it.
    const order = levels.map((_, i) => i).reverse();
    const max = stacked.length ? Math.max(1, ...stacked[stacked.length - 1]) : 1;
    const bars = window.uPlot.paths.bars({ size: [0.85, 64], align: 1 });
    const options = {
      width: Math.max(300, histogramBox.clientWidth),
      height: 150,
      padding: [8, 12, 0, 4],
      cursor: { drag: { x: true, y: false, setScale: false }, points: { show: false } },
      legend: { show: true, live: true },
      scales: {
        x: { time: true, range: () => [times[0], times[times.length - 1] + interval] },
        y: { range: () => [0, Math.ceil(max * 1.1)] },
      },
      axes: [
        { stroke: "#57606a", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#d0d7de" } },
        {
          stroke: "#57606a",
          size: 48,
          grid: { stroke: "#eef0f3" },
          ticks: { show: false },
          incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6, 1e7],
          values: (u, splits) => splits.map((v) => (v >= 1e6 ? `${v / 1e6}M` : v >= 1e3 ? `${v / 1e3}k` : v)),
        },
      ],
      series: [
        { label: "Time", value: (u, v) => (v === null || v === undefined ? "—" : formatTime(v * 1000, false)) },
        ...order.map((i) => ({
          label: levels[i],
          fill: LEVEL_COLORS[levels[i]] || OTHER_COLOR,
          stroke: LEVEL_COLORS[levels[i]] || OTHER_COLOR,
          width: 0,
          paths: bars,
          points: { show: false },
          // The legend shows this level's own count, not the stacked height.
          value: (u, v, si, idx) => (idx === null || idx === undefined ? "—" : formatCount(raw[i][idx])),
        })),
      ],
      hooks: {
        // Dragging across the chart zooms into that span.
        setSelect: [
          (u) => {
            if (u.select.width < 3) return;
            const from = u.posToVal(u.select.left, "x");
            const to = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, width: 0 }, false);
            setCustomRange(new Date(from * 1000).toISOString(), new Date(to * 1000).toISOString());
            run();
          },
        ],
      },
    };
    chart = new window.uPlot(options, [times, ...order.map((i) => stacked[i])], histogramBox);
  }

  function setCustomRange(start, end) {
    rangeSelect.value = "custom";
    customRange.hidden = false;
    startInput.value = start;
    endInput.value = end;
  }

  // -- live tail ---------------------------------------------------------------------------

  function startTail() {
    stopTail();
    const source = new EventSource(`${API}/tail?${new URLSearchParams({ q: state.q })}`);
    tail = source;
    liveStatus.textContent = "connecting…";
    source.onopen = () => {
      liveStatus.textContent = "● live";
      liveStatus.classList.add("on");
    };
    source.onmessage = (event) => {
      try {
        tailBuffer.push(JSON.parse(event.data));
      } catch {
        return;
      }
      if (!tailFlushScheduled) {
        // Lines can arrive by the hundred; put them in the table once per frame.
        tailFlushScheduled = true;
        window.requestAnimationFrame(flushTail);
      }
    };
    source.onerror = () => {
      liveStatus.classList.remove("on");
      if (source.readyState === EventSource.CLOSED) {
        liveStatus.textContent = "live tail stopped (the server refused it)";
        liveToggle.checked = false;
        tail = null;
      } else {
        liveStatus.textContent = "reconnecting…";
      }
    };
  }

  function stopTail() {
    if (tail) tail.close();
    tail = null;
    tailBuffer = [];
    liveStatus.textContent = "";
    liveStatus.classList.remove("on");
  }

  function flushTail() {
    tailFlushScheduled = false;
    if (!tail || tailBuffer.length === 0) return;
    const hits = tailBuffer.sort((a, b) => hitMillis(b) - hitMillis(a));
    tailBuffer = [];
    const rows = hits.map((hit) => {
      const row = hitRow(hit);
      row.classList.add("fresh");
      return row;
    });
    rowsBody.prepend(...rows);
    while (rowsBody.childElementCount > MAX_ROWS) rowsBody.lastElementChild.remove();
    state.live += hits.length;
    renderTotal();
  }

  // -- events ------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });

  rangeSelect.addEventListener("change", () => {
    if (rangeSelect.value === "custom") {
      const now = Date.now();
      const start = resolveTime(state.start, now);
      setCustomRange(
        start === null ? state.start : new Date(start).toISOString(),
        new Date(resolveTime(state.end, now) ?? now).toISOString(),
      );
      startInput.focus();
    } else {
      customRange.hidden = true;
      run();
    }
  });

  rowsBody.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-field]");
    if (button) {
      addFilter(button.dataset.field, button.fieldValue, button.classList.contains("field-exclude"));
      return;
    }
    const row = event.target.closest("tr.log-row");
    // Selecting text to copy it should not fold the row away.
    if (row && !String(window.getSelection())) toggleRow(row);
  });

  rowsBody.addEventListener("keydown", (event) => {
    const row = event.target.closest("tr.log-row");
    if (row && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      toggleRow(row);
    }
  });

  loadMoreButton.addEventListener("click", loadMore);

  liveToggle.addEventListener("change", () => {
    if (!liveToggle.checked) {
      stopTail();
      return;
    }
    if (state.end !== "now") {
      // New lines belong to a range that ends now: a past window would list them under
      // hits they are not part of. Extend the range to now, search it, then tail (run does).
      state.end = "now";
      if (rangeSelect.value === "custom") endInput.value = "";
      run();
      return;
    }
    startTail();
  });

  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof Element && event.target.closest("input, textarea, select");
    if (event.key === "/" && !typing) {
      event.preventDefault();
      queryInput.focus();
      queryInput.select();
    }
  });

  window.addEventListener("popstate", () => {
    readUrl();
    run({ push: false });
  });

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(() => {
      if (chart) chart.setSize({ width: Math.max(300, histogramBox.clientWidth), height: 150 });
    }, 100);
  });

  readUrl();
  run({ push: false });
})();
