// The dashboard's alert, funnel, retention and A/B test panels (docs/dashboard.md, "Funnels,
// retention and A/B tests"). Their figures are rows the database sinks store (funnel-stats,
// cohort-stats, experiment-stats) and the transitions of kpi-alerts, not records on live-kpis,
// so this script reads the worker's API every 10 s rather than the stream: /api/alerts,
// /api/funnels (until it has answered once), then /api/funnels/{name}?from=&to=,
// /api/cohorts?from=&to= and /api/experiments. The requests are
// same-origin, so with a read token configured they carry the browser's login like the page
// and its stream. Each card says what it shows in data-state (loading, shown, empty, error) and
// every figure is in a data-* attribute beside its text, for the browser test.
"use strict";

(() => {
  const { el, format } = window.dashboardKit;
  const POLL_MS = 10_000;
  const DAY_MS = 86_400_000;
  const COHORT_DAYS = 14; // cohorts of the last 14 days (UTC): day offsets 0 to 13
  const EMPTY = {
    rules: "no alert rule configured (alerts.rules in the configuration file)",
    funnels: "no funnel configured (funnels: in the configuration file)",
    cohorts: "no cohort rows yet",
    experiments: "no experiment yet: events whose metadata names an experiment and a variant start one",
  };
  const state = { funnels: null, funnel: null, days: 1 };
  let funnelTicket = 0; // the newest funnel request; an answer to an older one is dropped
  let timer = null;
  let reads = 0;

  // ------------------------------------------------------------------ helpers

  const utcDay = (ms) => new Date(ms).toISOString().slice(0, 10);

  // the UTC days from ``count - 1`` days ago to today, by the browser's clock
  function lastDays(count) {
    const now = Date.now();
    return { from: utcDay(now - (count - 1) * DAY_MS), to: utcDay(now) };
  }

  const spanText = (answer) => (answer.from === answer.to ? answer.from : `${answer.from} – ${answer.to}`);

  function duration(seconds) {
    if (seconds < 120) return format(seconds, "seconds");
    if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function pValue(p) {
    if (p === null || p === undefined) return "—";
    return p < 0.0001 ? "< 0.0001" : p.toFixed(4);
  }

  // the answer's JSON, or an Error naming the path and the API's reason
  async function getJson(path) {
    let response;
    try {
      response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch {
      throw new Error(`${path}: the worker does not answer`);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const reason = body && body.error ? body.error : response.statusText;
      throw new Error(`${path} answered ${response.status}: ${reason}`);
    }
    return body;
  }

  function card(id, name) {
    const node = document.getElementById(id);
    node.dataset.state = name;
    return node;
  }

  function messageRow(columns, text, error) {
    const row = el("tr", error ? "empty error" : "empty");
    const cell = el("td", "", text);
    cell.colSpan = columns;
    row.append(cell);
    return row;
  }

  // a table cell holding a figure: its raw value in data-value, its text as shown
  function figure(field, value, text) {
    const cell = el("td", "num", text);
    cell.dataset.field = field;
    cell.dataset.value = JSON.stringify(value === undefined ? null : value);
    return cell;
  }

  // ------------------------------------------------------------------ funnel

  function renderFunnelChoices() {
    const select = document.getElementById("funnel-select");
    select.replaceChildren(...state.funnels.map((funnel) => {
      const option = el("option", "", funnel.name);
      option.value = funnel.name;
      option.title = funnel.stages.join(" → ");
      return option;
    }));
    select.disabled = state.funnels.length < 2;
    if (state.funnel) select.value = state.funnel;
  }

  function funnelMessage(text, error) {
    const node = card("funnel-card", error ? "error" : "empty");
    document.getElementById("funnel").replaceChildren(el("li", error ? "empty error" : "empty", text));
    return node;
  }

  function renderFunnel(answer) {
    const node = card("funnel-card", answer.days.length ? "shown" : "empty");
    Object.assign(node.dataset, { funnel: answer.funnel, from: answer.from, to: answer.to });
    const final = answer.is_final;
    document.getElementById("funnel-span").replaceChildren(
      el("span", "", `${spanText(answer)} UTC `),
      el("span", final ? "badge final" : "badge live", final ? "final" : "live"),
    );
    const list = document.getElementById("funnel");
    if (!answer.days.length) {
      const when = state.days === 1 ? "today" : `the last ${state.days} days`;
      list.replaceChildren(el("li", "empty", `no ${answer.funnel} rows for ${when} yet`));
      return;
    }
    const stages = answer.total.stages;
    const first = stages[0].reached;
    list.replaceChildren(...stages.map((stage) => {
      const item = el("li", "stage");
      item.dataset.stage = stage.stage;
      item.dataset.reached = JSON.stringify(stage.reached);
      item.dataset.dropOff = JSON.stringify(stage.drop_off_percent);
      const share = first ? (100 * stage.reached) / first : 0;
      const head = el("div", "head");
      head.append(el("span", "name", stage.stage),
        el("span", "num reached", `${format(stage.reached, "int")} · ${format(share, "percent")}`));
      const meter = el("span", "meter");
      const fill = el("span", "fill");
      fill.style.width = `${share.toFixed(1)}%`;
      meter.append(fill);
      item.append(head, meter);
      if (stage.drop_off_percent !== null) {
        const median = stage.median_seconds === null ? "" : ` · median ${duration(stage.median_seconds)} to the next`;
        item.append(el("div", "drop", `▼ ${format(stage.drop_off_percent, "percent")} drop-off${median}`));
      }
      return item;
    }));
  }

  async function loadFunnel() {
    if (state.funnels === null) {
      try {
        state.funnels = (await getJson("/api/funnels")).funnels;
      } catch (error) {
        funnelMessage(error.message, true);
        return;
      }
      state.funnel = state.funnels.length ? state.funnels[0].name : null;
      renderFunnelChoices();
    }
    if (!state.funnel) {
      funnelMessage(EMPTY.funnels, false);
      return;
    }
    const ticket = ++funnelTicket;
    const range = new URLSearchParams(lastDays(state.days));
    try {
      const answer = await getJson(`/api/funnels/${encodeURIComponent(state.funnel)}?${range}`);
      if (ticket === funnelTicket) renderFunnel(answer);
    } catch (error) {
      if (ticket === funnelTicket) funnelMessage(error.message, true);
    }
  }

  function bindFunnelControls() {
    const select = document.getElementById("funnel-select");
    select.addEventListener("change", () => {
      state.funnel = select.value;
      card("funnel-card", "loading");
      loadFunnel();
    });
    for (const button of document.querySelectorAll("#funnel-card [data-range]")) {
      button.addEventListener("click", () => {
        state.days = Number(button.dataset.range);
        for (const other of document.querySelectorAll("#funnel-card [data-range]")) {
          other.setAttribute("aria-pressed", String(other === button));
        }
        card("funnel-card", "loading");
        loadFunnel();
      });
    }
  }

  // ------------------------------------------------------------------ retention heat map

  function heatCell(cell) {
    const td = el("td", cell.is_final ? "cell" : "cell live", format(cell.retention_rate_percent, "percent"));
    const rate = cell.retention_rate_percent;
    td.dataset.offset = String(cell.day_offset);
    td.dataset.rate = JSON.stringify(rate);
    td.title = `day ${cell.day_offset}: ${format(cell.retained_users, "int")} of ${format(cell.cohort_size, "int")} users`
      + (cell.is_final ? "" : " so far (live)");
    td.style.backgroundColor = `color-mix(in srgb, var(--accent) ${rate.toFixed(1)}%, var(--card))`;
    if (rate >= 55) td.classList.add("strong");
    return td;
  }

  function renderCohorts(answer) {
    const table = document.getElementById("cohorts");
    const body = el("tbody");
    const node = card("cohort-card", answer.cohorts.length ? "shown" : "empty");
    Object.assign(node.dataset, { from: answer.from, to: answer.to });
    document.getElementById("cohort-span").textContent = `cohorts ${spanText(answer)} UTC`;
    if (!answer.cohorts.length) {
      body.append(messageRow(1, EMPTY.cohorts));
      table.replaceChildren(body);
      return;
    }
    const columns = 1 + Math.max(...answer.cohorts.flatMap((c) => c.days.map((d) => d.day_offset)));
    const head = el("tr");
    head.append(el("th", "", "Cohort"), el("th", "num", "Users"));
    for (let offset = 0; offset < columns; offset += 1) head.append(el("th", "num", `d${offset}`));
    for (const cohort of answer.cohorts) {
      const row = el("tr");
      row.dataset.cohort = cohort.cohort;
      const name = el("th", "", cohort.cohort.slice(5));
      name.scope = "row";
      name.title = cohort.cohort;
      row.append(name, figure("cohort_size", cohort.cohort_size, format(cohort.cohort_size, "int")));
      const cells = new Map(cohort.days.map((cell) => [cell.day_offset, cell]));
      for (let offset = 0; offset < columns; offset += 1) {
        row.append(cells.has(offset) ? heatCell(cells.get(offset)) : el("td", "cell none"));
      }
      body.append(row);
    }
    const thead = el("thead");
    thead.append(head);
    table.replaceChildren(thead, body);
  }

  async function loadCohorts() {
    const range = new URLSearchParams(lastDays(COHORT_DAYS));
    try {
      renderCohorts(await getJson(`/api/cohorts?${range}`));
    } catch (error) {
      card("cohort-card", "error");
      const body = el("tbody");
      body.append(messageRow(1, error.message, true));
      document.getElementById("cohorts").replaceChildren(body);
    }
  }

  // ------------------------------------------------------------------ experiments

  function variantRow(experiment, variant, control) {
    const row = el("tr", variant.variant === control ? "variant control" : "variant");
    row.dataset.experiment = experiment.experiment;
    row.dataset.variant = variant.variant;
    const name = el("td", "name", variant.variant);
    const compared = variant.p_value !== null;
    const beats = variant.probability_to_beat_control;
    const significant = el("td", variant.significant ? "yes" : "", compared ? (variant.significant ? "yes" : "no") : "—");
    significant.dataset.field = "significant";
    significant.dataset.value = JSON.stringify(variant.significant);
    row.append(
      name,
      figure("users", variant.users, format(variant.users, "int")),
      figure("conversion_rate_percent", variant.conversion_rate_percent, format(variant.conversion_rate_percent, "percent")),
      figure("revenue_per_user", variant.revenue_per_user, format(variant.revenue_per_user, "money")),
      figure("p_value", variant.p_value, pValue(variant.p_value)),
      figure("probability_to_beat_control", beats, beats === null ? "—" : format(100 * beats, "percent")),
      significant,
    );
    return row;
  }

  function renderExperiments(answer) {
    const body = document.getElementById("experiments");
    const count = answer.experiments.length;
    document.getElementById("experiment-span").textContent = count
      ? `${count}${answer.truncated ? ` of more than ${answer.limit}` : ""} experiment${count === 1 ? "" : "s"}, each variant against ${answer.control_variant}`
      : "";
    if (!count) {
      card("experiment-card", "empty");
      body.replaceChildren(messageRow(7, EMPTY.experiments));
      return;
    }
    card("experiment-card", "shown");
    const rows = [];
    for (const experiment of answer.experiments) {
      const group = el("tr", "group");
      group.dataset.experiment = experiment.experiment;
      const title = el("th", "", experiment.experiment);
      title.colSpan = 7;
      title.scope = "colgroup";
      const conflicts = experiment.variant_conflicts;
      title.append(el("small", "", ` ${format(experiment.users, "int")} users`
        + (conflicts ? ` · ${format(conflicts, "int")} also saw another variant` : "")));
      group.append(title);
      rows.push(group, ...experiment.variants.map((v) => variantRow(experiment, v, answer.control_variant)));
    }
    body.replaceChildren(...rows);
  }

  async function loadExperiments() {
    try {
      renderExperiments(await getJson("/api/experiments"));
    } catch (error) {
      card("experiment-card", "error");
      document.getElementById("experiments").replaceChildren(messageRow(7, error.message, true));
    }
  }

  // ------------------------------------------------------------------ alerts

  // a rule's figure: whole numbers as such, others with two decimals
  const plain = (value) => format(value, Number.isInteger(value) ? "int" : "money");

  function alertItem(alert) {
    const item = el("li", "firing");
    Object.assign(item.dataset, {
      rule: alert.rule,
      windowStart: alert.window_start,
      value: JSON.stringify(alert.value),
    });
    const shown = alert.value === null ? "no value" : plain(alert.value);
    item.append(
      el("span", "name", alert.rule),
      el("span", "", ` ${alert.metric} ${shown} ${alert.comparator} ${plain(alert.threshold)} `),
      el("span", "since", `since the window of ${alert.window_start.replace("T", " ").slice(0, 16)} UTC`),
    );
    return item;
  }

  function renderAlerts(answer) {
    const list = document.getElementById("alerts");
    const rules = answer.rules.length;
    document.getElementById("alert-span").textContent = rules
      ? `${answer.firing.length} of ${rules} rule${rules === 1 ? "" : "s"} firing` : "";
    if (!rules) {
      card("alert-card", "empty");
      list.replaceChildren(el("li", "empty", EMPTY.rules));
    } else if (!answer.firing.length) {
      card("alert-card", "quiet");
      list.replaceChildren(el("li", "empty", "no alert firing"));
    } else {
      card("alert-card", "firing");
      list.replaceChildren(...answer.firing.map(alertItem));
    }
  }

  async function loadAlerts() {
    try {
      renderAlerts(await getJson("/api/alerts"));
    } catch (error) {
      card("alert-card", "error");
      document.getElementById("alerts").replaceChildren(el("li", "empty error", error.message));
    }
  }

  // ------------------------------------------------------------------ polling

  async function readAll() {
    clearTimeout(timer);
    await Promise.allSettled([loadAlerts(), loadFunnel(), loadCohorts(), loadExperiments()]);
    reads += 1;
    document.body.dataset.panelReads = String(reads);
    document.getElementById("panels-read").textContent = `last read ${new Date().toTimeString().slice(0, 8)}`;
    timer = setTimeout(readAll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    bindFunnelControls();
    readAll();
  });
})();
