// The live dashboard (docs/dashboard.md). No framework and no build step: the page keeps the
// KPI windows pushed over Server-Sent Events by /dashboard/stream and redraws tiles, inline SVG
// charts and lists from them. The body's data-* attributes (window-start, final, updates,
// snapshots) and each tile's data-value, data-trend and data-provisional say what is shown,
// for the browser test.
"use strict";

(() => {
  const HOUR_MS = 3600 * 1000;
  const SVG = "http://www.w3.org/2000/svg";
  // key, label, format, and whether a fall is the good direction (for the arrow's colour)
  const TILES = [
    ["active_users", "Active users", "int"],
    ["total_events", "Events", "int"],
    ["total_page_views", "Page views", "int"],
    ["total_revenue", "Revenue", "money"],
    ["total_conversions", "Conversions", "int"],
    ["revenue_per_user", "Revenue per user", "money"],
    ["total_sessions", "Sessions", "int"],
    ["average_session_duration_seconds", "Avg session", "seconds"],
    ["bounce_rate_percent", "Bounce rate", "percent", true],
    ["conversion_rate_percent", "Conversion rate", "percent"],
    ["new_users", "New users", "int"],
    ["total_users", "Users so far", "int"],
  ];
  const ARROWS = { up: "▲", down: "▼", stable: "→" };
  // a live window's trends are provisional (its figures so far against the window before at
  // the same elapsed point): hollow arrows and "so far", so they never pass for final ones
  const PROVISIONAL_ARROWS = { up: "△", down: "▽", stable: "→" };

  const state = { windows: new Map(), current: null, breakdowns: null };
  const counters = { updates: 0, snapshots: 0 };
  let renderPending = false;

  // ------------------------------------------------------------------ formatting

  function group(text) {
    const [whole, fraction] = text.split(".");
    const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return fraction === undefined ? grouped : `${grouped}.${fraction}`;
  }

  function format(value, kind) {
    if (value === null || value === undefined) return "—";
    switch (kind) {
      case "money": return group(value.toFixed(2));
      case "percent": return `${value.toFixed(1)}%`;
      case "seconds": return `${value.toFixed(1)} s`;
      default: return group(Math.round(value).toFixed(0));
    }
  }

  function clock(ms) {
    return new Date(ms).toISOString().slice(11, 16);
  }

  // a span of seconds as m:ss
  function minutes(seconds) {
    const whole = Math.floor(seconds);
    return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
  }

  // what a record's trends compare, for the header and the arrows' tooltips
  function trendBasis(record) {
    if (!record.trends_provisional) return "against the whole window before";
    const length = (Date.parse(record.window_end) - startOf(record)) / 1000;
    const at = minutes(record.trends_elapsed_seconds);
    return `provisional: this window's first ${at} of ${minutes(length)} against the window before at the same point`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // shared with the panels' script (panels.js), which is loaded after this one
  window.dashboardKit = Object.freeze({ el, format });

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  // ------------------------------------------------------------------ state (web/live_feed.py's rules)

  const startOf = (record) => Date.parse(record.window_start);
  const rank = (record) => [startOf(record), record.is_final ? 1 : 0];
  const notBefore = (a, b) => a[0] > b[0] || (a[0] === b[0] && a[1] >= b[1]);

  function apply(record) {
    const start = startOf(record);
    const stored = state.windows.get(start);
    if (stored && stored.is_final && !record.is_final) return;
    state.windows.set(start, record);
    if (!state.current || notBefore(rank(record), rank(state.current))) state.current = record;
    const cutoff = startOf(state.current) - HOUR_MS;
    for (const key of [...state.windows.keys()]) if (key <= cutoff) state.windows.delete(key);
  }

  function reset(snapshot) {
    state.windows.clear();
    state.current = null;
    for (const record of snapshot.windows) apply(record);
    if (snapshot.current) apply(snapshot.current);
    state.breakdowns = snapshot.breakdowns;
    buildCustomTiles(snapshot.custom_kpis || {});
  }

  // ------------------------------------------------------------------ tiles

  const tiles = new Map();

  function buildTiles() {
    const box = document.getElementById("tiles");
    for (const [key, label, kind, inverse] of TILES) {
      const tile = el("div", "tile");
      tile.dataset.kpi = key;
      tile.dataset.value = "null";
      if (inverse) tile.dataset.inverse = "true";
      const value = el("div", "value", "—");
      const trend = el("div", "trend", " ");
      tile.append(el("div", "label", label), value, trend);
      box.append(tile);
      tiles.set(key, { tile, value, trend, kind });
    }
  }

  function renderTiles(record) {
    const provisional = Boolean(record && record.trends_provisional);
    for (const [key, { tile, value, trend, kind }] of tiles) {
      const figure = record ? record[key] : null;
      tile.dataset.value = JSON.stringify(figure === undefined ? null : figure);
      value.textContent = format(figure, kind);
      const change = record && record.trends ? record.trends[key] : null;
      if (change) {
        const sign = change.change_percent > 0 ? "+" : "";
        const arrow = (provisional ? PROVISIONAL_ARROWS : ARROWS)[change.trend] || "";
        const text = `${arrow} ${sign}${change.change_percent.toFixed(1)}%`;
        tile.dataset.trend = change.trend;
        trend.textContent = provisional ? `${text} so far` : text;
        trend.title = trendBasis(record);
      } else {
        delete tile.dataset.trend;
        trend.textContent = record && key in (record.trends || {}) ? "—" : " ";
        trend.title = "";
      }
      if (provisional) tile.dataset.provisional = "true";
      else delete tile.dataset.provisional;
    }
  }

  // custom KPIs (SPEC 10, custom_kpis in the settings): a tile per name, in the settings'
  // order; a count as a whole number, a ratio_percent as a percentage
  const customTiles = new Map();

  function buildCustomTiles(kinds) {
    const names = Object.keys(kinds);
    if (names.join("\n") === [...customTiles.keys()].join("\n")) return;
    const box = document.getElementById("custom-tiles");
    box.replaceChildren();
    customTiles.clear();
    for (const name of names) {
      const tile = el("div", "tile");
      tile.dataset.custom = name;
      tile.dataset.value = "null";
      const value = el("div", "value", "—");
      tile.append(el("div", "label", name.replaceAll("_", " ")), value);
      box.append(tile);
      customTiles.set(name, { tile, value, kind: kinds[name] === "count" ? "int" : "percent" });
    }
    document.getElementById("custom-section").hidden = names.length === 0;
  }

  function renderCustomTiles(record) {
    const custom = record && record.custom ? record.custom : {};
    for (const [name, { tile, value, kind }] of customTiles) {
      const figure = name in custom ? custom[name] : null;
      tile.dataset.value = JSON.stringify(figure);
      value.textContent = format(figure, kind);
    }
  }

  // ------------------------------------------------------------------ charts

  // the smallest 1, 2, 2.5 or 5 times a power of ten at or above value: round axis labels
  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function drawChart(node, series, kind) {
    const width = Math.max(node.clientWidth || 0, 240);
    const height = Math.max(node.clientHeight || 0, 140);
    const pad = { left: 40, right: 10, top: 12, bottom: 22 };
    node.setAttribute("viewBox", `0 0 ${width} ${height}`);
    node.replaceChildren();
    if (!state.current) return;
    const end = Date.parse(state.current.window_end);
    const begin = end - HOUR_MS;
    const slot = end - startOf(state.current) || 60000;
    const max = niceCeiling(Math.max(1, ...series.map((p) => p.v)));
    const x = (t) => pad.left + ((t - begin) / HOUR_MS) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / max) * (height - pad.top - pad.bottom);

    for (const fraction of [0, 0.5, 1]) {
      const level = max * fraction;
      node.append(svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(level), y2: y(level) }));
      const label = svg("text", { class: "axis", x: pad.left - 6, y: y(level) + 4, "text-anchor": "end" });
      label.textContent = format(level, "int");
      node.append(label);
    }
    for (let t = Math.ceil(begin / (15 * 60000)) * 15 * 60000; t <= end; t += 15 * 60000) {
      const label = svg("text", { class: "axis", x: x(t), y: height - 6, "text-anchor": "middle" });
      label.textContent = clock(t);
      node.append(label);
    }
    if (kind === "bars") {
      const barWidth = Math.max(1, x(begin + slot) - x(begin) - 1);
      for (const point of series) {
        node.append(svg("rect", {
          class: point.live ? "bar live" : "bar",
          x: x(point.t), y: y(point.v), width: barWidth, height: Math.max(0, y(0) - y(point.v)),
        }));
      }
    } else if (series.length) {
      const mid = (p) => x(p.t + slot / 2);
      const line = series.map((p, i) => `${i ? "L" : "M"}${mid(p).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
      const first = series[0];
      const last = series[series.length - 1];
      node.append(svg("path", { class: "area", d: `${line}L${mid(last)},${y(0)}L${mid(first)},${y(0)}Z` }));
      node.append(svg("path", { class: "line", d: line }));
      node.append(svg("circle", { class: last.live ? "dot live" : "dot", cx: mid(last), cy: y(last.v), r: 3.5 }));
    }
  }

  function renderCharts() {
    const records = [...state.windows.entries()].sort((a, b) => a[0] - b[0]);
    const series = (key) => records.map(([t, r]) => ({ t, v: r[key] || 0, live: !r.is_final }));
    drawChart(document.getElementById("chart-events"), series("total_events"), "bars");
    drawChart(document.getElementById("chart-users"), series("active_users"), "line");
  }

  // ------------------------------------------------------------------ breakdowns

  function renderPages(answer) {
    const body = document.getElementById("pages");
    const span = document.getElementById("pages-span");
    const rows = answer ? answer.pages : [];
    span.textContent = answer && answer.windows.length
      ? `${answer.windows.length} final window${answer.windows.length === 1 ? "" : "s"} to ${clock(Date.parse(answer.as_of))}`
      : "";
    if (!rows.length) {
      const row = el("tr", "empty");
      const cell = el("td", "", "no final window yet");
      cell.colSpan = 3;
      row.append(cell);
      body.replaceChildren(row);
      return;
    }
    body.replaceChildren(...rows.map((page) => {
      const row = el("tr");
      const name = el("td", "page", page.page);
      name.title = page.page;
      row.append(name, el("td", "num", format(page.views, "int")),
        el("td", "num", format(page.avg_time_on_page_ms / 1000, "seconds")));
      return row;
    }));
  }

  function renderBars(id, answer) {
    const list = document.getElementById(id);
    const values = answer ? answer.values : [];
    if (!values.length) {
      list.replaceChildren(el("li", "empty", "no final window yet"));
      return;
    }
    const total = values.reduce((sum, v) => sum + v.events, 0) || 1;
    list.replaceChildren(...values.slice(0, 8).map((v) => {
      const item = el("li");
      const share = (100 * v.events) / total;
      const meter = el("span", "meter");
      const fill = el("span", "fill");
      fill.style.width = `${share.toFixed(1)}%`;
      meter.append(fill);
      item.append(el("span", "name", v.value), meter,
        el("span", "num", `${format(v.events, "int")} · ${share.toFixed(0)}%`));
      return item;
    }));
  }

  // ------------------------------------------------------------------ page

  function renderHeader() {
    const body = document.body;
    const current = state.current;
    const label = document.getElementById("window");
    if (!current) {
      label.textContent = "waiting for the first window…";
      delete body.dataset.windowStart;
      return;
    }
    body.dataset.windowStart = current.window_start;
    body.dataset.final = String(current.is_final);
    const start = startOf(current);
    const end = Date.parse(current.window_end);
    label.replaceChildren(
      el("span", "", `Window ${clock(start)}–${clock(end)} UTC `),
      el("span", current.is_final ? "badge final" : "badge live", current.is_final ? "final" : "live"),
    );
    if (current.trends_provisional) {
      const basis = el("span", "basis", `trends so far: first ${minutes(current.trends_elapsed_seconds)} against the window before`);
      basis.title = trendBasis(current);
      label.append(basis);
    }
    document.getElementById("updates").textContent = String(counters.updates);
  }

  function render() {
    renderPending = false;
    renderHeader();
    renderTiles(state.current);
    renderCustomTiles(state.current);
    renderCharts();
    const b = state.breakdowns;
    renderPages(b ? b.pages : null);
    renderBars("device", b ? b.device : null);
    renderBars("country", b ? b.country : null);
    document.body.dataset.updates = String(counters.updates);
    document.body.dataset.snapshots = String(counters.snapshots);
  }

  function schedule() {
    if (!renderPending) {
      renderPending = true;
      setTimeout(render, 50); // several frames arriving together draw once
    }
  }

  function setStatus(name, text) {
    document.body.dataset.state = name;
    document.getElementById("status").textContent = text;
  }

  function connect() {
    const source = new EventSource("/dashboard/stream");
    source.onopen = () => setStatus("live", "live");
    source.onerror = () => setStatus("reconnecting", "reconnecting…");
    source.addEventListener("snapshot", (event) => {
      reset(JSON.parse(event.data));
      counters.snapshots += 1;
      schedule();
    });
    source.addEventListener("kpi", (event) => {
      apply(JSON.parse(event.data));
      counters.updates += 1;
      setStatus("live", `live · ${new Date().toTimeString().slice(0, 8)}`);
      schedule();
    });
    source.addEventListener("breakdowns", (event) => {
      state.breakdowns = JSON.parse(event.data);
      counters.updates += 1;
      schedule();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    buildTiles();
    render();
    connect();
    window.addEventListener("resize", schedule);
  });
})();
