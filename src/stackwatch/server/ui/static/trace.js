// Stackwatch traces: the trace search page and one trace's waterfall.
//
// Span names, attributes, log lines and error titles are written by whoever holds an ingest
// token, so they only ever enter the page as text nodes (textContent / Node.append), never as
// HTML. Everything comes from the JSON API (/api/v1/traces...) with the session cookie.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "style") Object.assign(node.style, value);
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function fmtMs(ms) {
    if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 1 : 2) + " s";
    if (ms >= 10) return ms.toFixed(0) + " ms";
    if (ms >= 1) return ms.toFixed(1) + " ms";
    return (ms * 1000).toFixed(0) + " µs";
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
      throw new Error("not logged in");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  // Stable colour per service name, so a service keeps its colour across traces.
  const PALETTE = ["#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#65a30d", "#4f46e5", "#b45309", "#0d9488"];
  function serviceColor(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  // ------------------------------------------------------------------------- trace page

  function renderTrace(data) {
    const trace = data.trace;
    const spans = data.spans;
    $("trace-title").textContent = `${trace.root_service}: ${trace.root_name}`;
    const facts = $("trace-facts");
    const fact = (k, v) => facts.append(el("dt", {}, k), el("dd", {}, v));
    fact("Start", trace.start);
    fact("Duration", fmtMs(trace.duration_ms));
    fact("Spans", trace.span_count);
    fact("Errors", trace.error_count);
    fact("Services", trace.services.join(", "));

    // Slow dependency: which operation holds most of the request's time by itself.
    const tbody = $("breakdown").querySelector("tbody");
    trace.breakdown.slice(0, 10).forEach((item, i) => {
      const bar = el("div", { class: "share-bar", style: { width: `${(item.share * 100).toFixed(1)}%`, background: serviceColor(item.service) } });
      tbody.append(
        el("tr", { class: i === 0 ? "dominant-row" : "" },
          el("td", {}, item.service),
          el("td", {}, item.name),
          el("td", { class: "num" }, item.count),
          el("td", { class: "num" }, fmtMs(item.self_time_ms)),
          el("td", { class: "share-col" }, el("div", { class: "share" }, bar, el("span", {}, `${(item.share * 100).toFixed(1)}%`))),
        ),
      );
    });
    if (trace.breakdown.length) {
      const top = trace.breakdown[0];
      $("dominant").textContent =
        `${top.service}: ${top.name} takes ${(top.share * 100).toFixed(0)}% of the request (${fmtMs(top.self_time_ms)} of its own time).`;
    }

    renderWaterfall(spans, trace.duration_ms);
    renderErrors(data.errors);
    renderLogs(data.logs, data.logs_total, trace.trace_id, data.logs_window);
  }

  function renderWaterfall(spans, totalMs) {
    const box = $("waterfall");
    const rows = new Map(); // span_id -> row
    const kids = new Map(); // span_id -> child span ids
    const collapsed = new Set();
    for (const span of spans) {
      if (span.parent_span_id && !span.orphan) {
        if (!kids.has(span.parent_span_id)) kids.set(span.parent_span_id, []);
        kids.get(span.parent_span_id).push(span.span_id);
      }
    }
    const total = Math.max(totalMs, 0.001);
    // Ticks: the time axis above the bars.
    const axis = el("div", { class: "wf-row wf-axis" }, el("div", { class: "wf-label" }, "Service · operation"));
    const ticks = el("div", { class: "wf-track" });
    for (let i = 0; i <= 4; i++) {
      ticks.append(el("span", { class: "tick", style: { left: `${i * 25}%` } }, i ? fmtMs((total * i) / 4) : "0"));
    }
    axis.append(ticks);
    box.append(axis);

    for (const span of spans) {
      const hasKids = kids.has(span.span_id);
      const toggle = el("button", {
        type: "button", class: "toggle", title: hasKids ? "Collapse / expand children" : "",
        disabled: !hasKids, "data-span": span.span_id,
      }, hasKids ? "▾" : "·");
      toggle.setAttribute("aria-expanded", hasKids ? "true" : "false");
      const label = el("div", { class: "wf-label", style: { paddingLeft: `${span.depth * 14}px` } },
        toggle,
        el("span", { class: "svc", style: { color: serviceColor(span.service) } }, span.service),
        " ",
        el("span", { class: "op" }, span.name),
      );
      const left = (span.offset_ms / total) * 100;
      const width = Math.max((span.duration_ms / total) * 100, 0.2);
      const bar = el("div", {
        class: "bar" + (span.status === "error" ? " error" : ""),
        style: { left: `${left}%`, width: `${width}%`, background: serviceColor(span.service) },
        title: `${span.name}: ${fmtMs(span.duration_ms)} (self ${fmtMs(span.self_time_ms)})`,
      });
      const dur = el("span", { class: "dur", style: { left: `${Math.min(left + width, 92)}%` } }, fmtMs(span.duration_ms));
      const row = el("div", {
        class: "wf-row span-row" + (span.status === "error" ? " is-error" : ""),
        role: "treeitem", tabIndex: 0, "data-span-id": span.span_id, "data-depth": String(span.depth),
      }, label, el("div", { class: "wf-track" }, bar, dur));
      row.addEventListener("click", (event) => {
        if (event.target.closest("button.toggle")) return;
        showDetails(span, row);
      });
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") showDetails(span, row); });
      toggle.addEventListener("click", () => {
        if (collapsed.has(span.span_id)) collapsed.delete(span.span_id);
        else collapsed.add(span.span_id);
        toggle.textContent = collapsed.has(span.span_id) ? "▸" : "▾";
        toggle.setAttribute("aria-expanded", collapsed.has(span.span_id) ? "false" : "true");
        applyCollapse();
      });
      rows.set(span.span_id, row);
      box.append(row);
    }

    function applyCollapse() {
      const hidden = new Set();
      for (const span of spans) {
        const parentHidden = span.parent_span_id && (hidden.has(span.parent_span_id) || collapsed.has(span.parent_span_id));
        if (parentHidden && !span.orphan) hidden.add(span.span_id);
        rows.get(span.span_id).hidden = hidden.has(span.span_id);
      }
    }

    $("collapse-all").addEventListener("click", () => {
      for (const id of kids.keys()) collapsed.add(id);
      box.querySelectorAll("button.toggle:not([disabled])").forEach((b) => { b.textContent = "▸"; b.setAttribute("aria-expanded", "false"); });
      applyCollapse();
    });
    $("expand-all").addEventListener("click", () => {
      collapsed.clear();
      box.querySelectorAll("button.toggle:not([disabled])").forEach((b) => { b.textContent = "▾"; b.setAttribute("aria-expanded", "true"); });
      applyCollapse();
    });
  }

  function kvTable(obj) {
    const table = el("table", { class: "kv" });
    for (const key of Object.keys(obj).sort()) {
      const value = obj[key];
      table.append(el("tr", {}, el("th", {}, key), el("td", {}, typeof value === "string" ? value : JSON.stringify(value))));
    }
    return table;
  }

  function showDetails(span, row) {
    document.querySelectorAll(".span-row.selected").forEach((r) => r.classList.remove("selected"));
    row.classList.add("selected");
    const box = $("details");
    $("details-title").textContent = `${span.service}: ${span.name}`;
    const body = $("details-body");
    body.replaceChildren();
    body.append(kvTable({
      span_id: span.span_id,
      parent_span_id: span.parent_span_id || "(root)",
      kind: span.kind,
      status: span.status + (span.status_message ? `: ${span.status_message}` : ""),
      start: span.start,
      offset: fmtMs(span.offset_ms),
      duration: fmtMs(span.duration_ms),
      self_time: fmtMs(span.self_time_ms),
      scope: span.scope_name + (span.scope_version ? ` ${span.scope_version}` : ""),
    }));
    if (Object.keys(span.attributes).length) body.append(el("h4", {}, "Attributes"), kvTable(span.attributes));
    if (span.events.length) {
      body.append(el("h4", {}, "Events"));
      const list = el("ul", { class: "events" });
      for (const ev of span.events) {
        list.append(el("li", {}, el("strong", {}, ev.name), ` at +${fmtMs(ev.offset_ms)}`, kvTable(ev.attributes)));
      }
      body.append(list);
    }
    if (Object.keys(span.resource).length) body.append(el("h4", {}, "Resource"), kvTable(span.resource));
    box.hidden = false;
  }

  function renderErrors(errors) {
    const list = $("errors");
    $("errors-count").textContent = `(${errors.length})`;
    $("errors-empty").hidden = errors.length > 0;
    for (const err of errors) {
      const title = err.issue_id ? el("a", { href: `/issues/${encodeURIComponent(err.issue_id)}` }, err.title) : el("span", {}, err.title);
      list.append(el("li", { class: `lvl-${err.level}` },
        el("span", { class: "lvl" }, err.level), " ", title, " ",
        el("span", { class: "muted" }, err.culprit || ""), " ",
        el("time", { class: "muted" }, err.timestamp)));
    }
  }

  function renderLogs(logs, total, traceId, window) {
    const tbody = $("logs").querySelector("tbody");
    const count = $("logs-count");
    count.textContent = `(${logs.length})`;
    if (total > logs.length) {
      // Only the newest lines come with the trace; the explorer has every one of them.
      const all = new URLSearchParams({ q: `trace_id:"${traceId}"`, start: window.start, end: window.end });
      count.textContent = `(newest ${logs.length} of ${total}: `;
      count.append(el("a", { href: `/?${all}`, id: "logs-all" }, "all in the explorer"), ")");
    }
    $("logs-empty").hidden = logs.length > 0;
    for (const hit of logs) {
      tbody.append(el("tr", {},
        el("td", { class: "time" }, hit.timestamp.replace("T", " ").slice(0, 23)),
        el("td", { class: "num" }, hit.offset_ms.toFixed(1)),
        el("td", { class: `lvl lvl-${String(hit.level).toLowerCase()}` }, hit.level),
        el("td", {}, hit.service),
        el("td", { class: "message" }, hit.message)));
    }
  }

  async function tracePage(root) {
    const traceId = root.dataset.traceId;
    if (!traceId) return;
    try {
      renderTrace(await getJSON(`/api/v1/traces/${encodeURIComponent(traceId)}`));
      document.body.dataset.ready = "1";
    } catch (err) {
      $("trace-title").textContent = "Trace not available";
      showError(err.message);
      // Log lines outlive spans (traces are kept fewer days than application logs), and a
      // line may carry a trace id whose spans were never sent: its lines are still there.
      const search = new URLSearchParams({ q: `trace_id:"${traceId}"`, start: "-30d", end: "now" });
      const note = $("logs-empty");
      note.replaceChildren("No spans of this trace are stored. ",
        el("a", { href: `/?${search}`, id: "trace-logs-search" }, "Search the log lines with this trace id"), ".");
      note.hidden = false;
      document.body.dataset.ready = "1";
    }
  }

  // ------------------------------------------------------------------------- search page

  async function searchPage(form) {
    const params = new URLSearchParams(window.location.search);
    for (const name of ["service", "operation", "min_duration", "status", "q"]) {
      if (params.has(name)) form.elements[name].value = params.get(name);
    }
    if (params.has("start")) form.elements.range.value = params.get("start");
    const tbody = $("trace-results").querySelector("tbody");

    async function run() {
      const query = new URLSearchParams();
      for (const name of ["service", "operation", "min_duration", "status", "q"]) {
        const value = form.elements[name].value.trim();
        if (value) query.set(name, value);
      }
      query.set("start", form.elements.range.value);
      query.set("limit", "100");
      history.replaceState(null, "", "?" + query.toString());
      $("error").hidden = true;
      tbody.replaceChildren();
      try {
        const data = await getJSON("/api/v1/traces?" + query.toString());
        $("empty").hidden = data.traces.length > 0;
        for (const t of data.traces) {
          const start = new Date(t.start_ns / 1e6).toISOString().replace("T", " ").slice(0, 23);
          tbody.append(el("tr", { class: t.error_count ? "is-error" : "" },
            el("td", { class: "time" }, start),
            el("td", {}, el("a", { href: `/traces/${t.trace_id}` }, `${t.root_service}: ${t.root_name}`)),
            el("td", { class: "num" }, fmtMs(t.duration_ms)),
            el("td", { class: "num" }, t.span_count),
            el("td", { class: "num" }, t.error_count),
            el("td", {}, t.services.join(", "))));
        }
      } catch (err) {
        showError(err.message);
      }
      document.body.dataset.ready = "1";
    }

    form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
    $("open-trace").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = $("trace-id-input").value.trim();
      if (id) window.location.href = `/traces/${encodeURIComponent(id)}`;
    });
    run();
  }

  const traceRoot = $("trace");
  if (traceRoot) tracePage(traceRoot);
  const searchForm = $("trace-search");
  if (searchForm) searchPage(searchForm);
})();
