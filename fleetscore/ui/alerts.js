// The alerts page: lists alerts from GET <api>/alerts with filters, opens one (its revisions and the chart of its
// pair around the episode, drawn as inline SVG from GET <api>/pairs/{device}/{sensor}/windows) and acknowledges or
// resolves it. The key is asked for here, kept in sessionStorage (this tab) and sent as x-functions-key; request
// and response text only ever lands in the page as text nodes (textContent), never as markup.
"use strict";
(() => {
  const API = new URL("..", document.currentScript.src).pathname; // the page's assets are at <api>/ui/...
  const KEY = "fleetscore.key", WHO = "fleetscore.by", SVG = "http://www.w3.org/2000/svg";
  const HOUR = 3600e3, DAY = 24 * HOUR, MAX_SPAN = 7 * DAY - 60e3;
  const FILTERS = ["state", "severity", "device", "sensor", "from", "to"];
  const $ = (sel) => document.querySelector(sel);
  const shown = new Map(); // alert_id -> document, for the rows listed
  let next = null, query = "", current = null;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
    return node;
  }
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const utc = (iso) => (iso ? iso.replace("T", " ").replace(/(:\d\d)(\.\d+)?Z$/, "$1") : "");
  const episode = (a) => { // "2026-11-23 10:05 → 11:20", the end's date only when it is another day
    const [f, l] = [utc(a.first_window_end).slice(0, 16), utc(a.last_window_end).slice(0, 16)];
    return `${f} → ${l.slice(0, 10) === f.slice(0, 10) ? l.slice(11) : l}`;
  };
  const ago = (s) => (s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min`
    : s < 172800 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(1)} days`);
  const num = (x) => (x === null || x === undefined ? "" : Number(x).toFixed(2));

  class Refused extends Error {}

  async function api(path, body) {
    const headers = { "x-functions-key": sessionStorage.getItem(KEY) || "" };
    if (body) headers["content-type"] = "application/json";
    const resp = await fetch(API + path, { method: body ? "POST" : "GET", headers, cache: "no-store",
      credentials: "omit", body: body ? JSON.stringify(body) : undefined });
    const doc = await resp.json().catch(() => null);
    if (resp.status === 401 || resp.status === 503) {
      askKey((doc && doc.error) || `HTTP ${resp.status}`);
      throw new Refused();
    }
    if (!resp.ok) throw new Error((doc && doc.error) || `HTTP ${resp.status}`);
    return doc;
  }

  function say(node, text, error = false) { node.textContent = text; node.classList.toggle("error", error); }
  function fail(node) { return (err) => { if (!(err instanceof Refused)) say(node, err.message, true); }; }

  // ---------------------------------------------------------------------------------------------- the key
  function askKey(message) {
    $("#app").hidden = true; $("#forget").hidden = true; $("#keyform").hidden = false;
    say($("#keyerror"), message || "", Boolean(message));
    $("#key").focus();
  }
  function start() {
    $("#keyform").hidden = true; $("#app").hidden = false; $("#forget").hidden = false;
    loadHealth(); list();
  }

  // ---------------------------------------------------------------------------------------------- filters
  function readFilters() {
    const form = $("#filters"), params = new URLSearchParams();
    for (const name of FILTERS) {
      let v = form.elements[name].value.trim();
      if (!v) continue;
      if (name === "from" || name === "to") v = (v.length === 16 ? v + ":00" : v) + "Z";
      params.set(name, v);
    }
    return params;
  }
  function writeFilters(params) {
    const form = $("#filters");
    for (const name of FILTERS) {
      let v = params.get(name) || "";
      if ((name === "from" || name === "to") && v) v = v.replace(/Z$/, "").slice(0, 19);
      form.elements[name].value = v;
    }
  }

  // ---------------------------------------------------------------------------------------------- the list
  async function list(more = false) {
    const message = $("#message");
    if (!more) {
      const params = readFilters();
      query = params.toString();
      history.replaceState(null, "", query ? `?${query}` : location.pathname);
      $("#alerts tbody").replaceChildren(); shown.clear(); next = null;
    }
    const params = new URLSearchParams(query);
    params.set("limit", "50");
    if (more && next) params.set("page", next);
    say(message, "Loading…");
    try {
      const doc = await api(`alerts?${params}`);
      for (const a of doc.alerts) addRow(a);
      next = doc.next_page;
      $("#more").hidden = !next;
      say(message, shown.size ? `${shown.size} alert${shown.size === 1 ? "" : "s"}${next ? " (more below)" : ""}`
        : "No alert matches these filters.");
    } catch (err) { fail(message)(err); }
  }

  function addRow(a) {
    shown.set(a.alert_id, a);
    const row = el("tr", { tabindex: "0", "data-id": a.alert_id, "data-state": a.state },
      el("td", {}, el("span", { class: `sev sev-${a.severity}` }, a.severity)),
      el("td", { class: `state-${a.state}` }, a.state),
      el("td", {}, a.device), el("td", {}, a.sensor),
      el("td", {}, episode(a)),
      el("td", { class: "num" }, a.windows), el("td", { class: "num" }, num(a.max_score)),
      el("td", {}, a.resolved_by || a.acknowledged_by || ""));
    row.classList.toggle("selected", a.alert_id === current);
    row.addEventListener("click", () => open(a.alert_id));
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(a.alert_id); });
    const old = $(`#alerts tbody tr[data-id="${CSS.escape(a.alert_id)}"]`);
    if (old) old.replaceWith(row); else $("#alerts tbody").append(row);
  }

  async function loadHealth() {
    try {
      const h = await api("health");
      const lag = h.watermark_lag_seconds === null ? "no watermark" : `watermark ${ago(h.watermark_lag_seconds)} behind`;
      const last = h.last_run ? `last run ${h.last_run.run_id} ${h.last_run.status}` : "no run yet";
      say($("#health"), `${h.status} · ${last} · ${lag} · dead letters (1 h) ${h.dead_letters_last_hour}`);
    } catch (err) { fail($("#health"))(err); }
  }

  // ---------------------------------------------------------------------------------------------- one alert
  function chartRange(a) {
    const first = Date.parse(a.first_window_end), last = Date.parse(a.last_window_end);
    const pad = Math.min(Math.max(last - first, 2 * HOUR), DAY);
    const to = last + (a.status === "open" ? HOUR / 2 : pad); // an open episode has no later windows yet
    return [Math.max(first - pad, to - MAX_SPAN), to];
  }

  async function open(id) {
    current = id;
    for (const r of document.querySelectorAll("#alerts tbody tr")) r.classList.toggle("selected", r.dataset.id === id);
    const a = shown.get(id);
    $("#detail").hidden = false;
    $("#detail").dataset.id = id;
    say($("#title"), `${a.device} / ${a.sensor}`);
    say($("#actmessage"), "");
    const [frm, to] = chartRange(a);
    const iso = (ms) => new Date(ms).toISOString();
    const pair = `pairs/${encodeURIComponent(a.device)}/${encodeURIComponent(a.sensor)}/windows`;
    try {
      const [doc, windows] = await Promise.all([api(`alerts/${encodeURIComponent(id)}`),
        api(`${pair}?from=${encodeURIComponent(iso(frm))}&to=${encodeURIComponent(iso(to))}`)]);
      if (current !== id) return;
      showAlert(doc);
      $("#chart").replaceChildren(...chart(windows, doc));
      say($("#notes"), windows.notes.join(" "));
    } catch (err) { fail($("#meta"))(err); }
  }

  const OPENED_BY = { strong: "one window past its strong threshold", two_high: "two high windows in a row",
    persistence: "k of its last n windows anomalous" };
  function openedBy(doc) {
    return doc.opened_by ? `opened on ${OPENED_BY[doc.opened_by] || doc.opened_by} · ` : "";
  }

  function showAlert(doc) {
    shown.set(doc.alert_id, doc);
    addRow(doc);
    say($("#meta"), `${doc.state} · ${doc.severity} · ${openedBy(doc)}${doc.windows} windows, ` +
      `max score ${num(doc.max_score)} · ` +
      `${episode(doc)} UTC · model ${doc.model_version} · ${doc.alert_id}`);
    const form = $("#act");
    form.elements.acknowledge.disabled = doc.state !== "open";
    form.elements.resolve.disabled = doc.state === "resolved";
    $("#revisions").replaceChildren(...(doc.revisions || []).map((r) =>
      el("li", {}, `${utc(r.at)} ${r.kind}${r.by ? ` by ${r.by}` : ""}${r.note ? `: ${r.note}` : ""}`)));
  }

  async function act(kind) {
    const form = $("#act"), id = current, by = form.elements.by.value.trim();
    if (!by) { say($("#actmessage"), "Say who acts.", true); form.elements.by.focus(); return; }
    localStorage.setItem(WHO, by);
    const note = form.elements.note.value.trim();
    try {
      const doc = await api(`alerts/${encodeURIComponent(id)}/${kind}`, note ? { by, note } : { by });
      form.elements.note.value = "";
      say($("#actmessage"), `${kind === "acknowledge" ? "Acknowledged" : "Resolved"} (revision ${doc.revision}).`);
      if (current === id) showAlert(await api(`alerts/${encodeURIComponent(id)}`));
    } catch (err) { fail($("#actmessage"))(err); }
  }

  // ---------------------------------------------------------------------------------------------- the chart
  // Two panels over [from, to]: the score with its thresholds (anomalous windows as red dots) and the window
  // means with their min-max band; alert spans shaded (this alert darker).
  function chart(data, alert) {
    const width = 720, left = 48, right = 8, plotW = width - left - right;
    const x0 = Date.parse(data.from), x1 = Date.parse(data.to), step = data.window_minutes * 60e3;
    const rows = data.windows.map((w) => ({ ...w, t: Date.parse(w.window_end) }));
    const x = (t) => left + ((t - x0) / Math.max(x1 - x0, 1)) * plotW;
    const root = svg("svg", { viewBox: `0 0 ${width} 300`, role: "img",
      "aria-label": `scores and values of ${data.device}/${data.sensor}` });
    const spans = (top, h) => { for (const s of data.alerts) {
      const a = Math.max(x(Date.parse(s.first_window_end) - step), left), b = Math.min(x(Date.parse(s.last_window_end)), width - right);
      root.append(svg("rect", { class: "span", "data-alert": s.alert_id, x: a, y: top, width: Math.max(b - a, 1), height: h,
        fill: s.alert_id === alert.alert_id ? "#f4c7c3" : "#f8e3e1" }));
    } };
    const panel = (top, h, series, label) => {
      const values = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
      let lo = Math.min(...values), hi = Math.max(...values);
      if (!values.length) { lo = 0; hi = 1; } else if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
      const y = (v) => top + h - ((v - lo) / (hi - lo)) * h;
      spans(top, h);
      root.append(svg("rect", { x: left, y: top, width: plotW, height: h, fill: "none", stroke: "#d5dbe2" }),
        svg("text", { x: left - 4, y: top + 9, "text-anchor": "end" }, hi.toPrecision(3)),
        svg("text", { x: left - 4, y: top + h, "text-anchor": "end" }, lo.toPrecision(3)),
        svg("text", { x: left + 4, y: top + 11 }, label));
      for (const s of series) s.draw(s.points, x, y);
      return y;
    };
    const line = (cls, color, dash) => (points, xf, yf) => {
      for (const seg of segments(points, step)) root.append(svg("polyline", { class: cls, fill: "none", stroke: color,
        "stroke-width": cls === "score" ? 1.5 : 1, "stroke-dasharray": dash || "none",
        points: seg.map(([t, v]) => `${xf(t).toFixed(1)},${yf(v).toFixed(1)}`).join(" ") }));
    };
    const pts = (key) => rows.filter((r) => r[key] !== null).map((r) => [r.t, r[key]]);
    const yScore = panel(8, 160, [
      { points: pts("threshold_strong"), draw: line("threshold-strong", "#b3131b", "4 3") },
      { points: pts("threshold_high"), draw: line("threshold-high", "#c2410c", "6 2") },
      { points: pts("threshold"), draw: line("threshold", "#d4580b", "2 2") },
      { points: pts("score"), draw: line("score", "#1f5fae") },
    ], "score · threshold · high bound (two in a row) · strong threshold");
    for (const r of rows) if (r.is_anomaly && r.score !== null) {
      const dot = svg("circle", { class: "anomaly", cx: x(r.t).toFixed(1), cy: yScore(r.score).toFixed(1), r: 3, fill: "#b3131b" });
      dot.append(svg("title", {}, `${utc(r.window_end)} score ${num(r.score)}`));
      root.append(dot);
    }
    const band = rows.filter((r) => r.min !== null && r.max !== null);
    const yValue = panel(190, 80, [{ points: pts("mean"), draw: line("mean", "#334e68") },
      { points: band.map((r) => [r.t, r.min]).concat(band.map((r) => [r.t, r.max])), draw: () => {} }],
      "window mean · min-max");
    for (const seg of segments(band.map((r) => [r.t, r]), step)) {
      const edge = seg.map(([t, r]) => `${x(t).toFixed(1)},${yValue(r.max).toFixed(1)}`)
        .concat(seg.slice().reverse().map(([t, r]) => `${x(t).toFixed(1)},${yValue(r.min).toFixed(1)}`));
      root.insertBefore(svg("polygon", { class: "band", points: edge.join(" "), fill: "#9fb3c8", "fill-opacity": 0.35 }),
        root.querySelector(".mean"));
    }
    for (let i = 0; i <= 4; i++) {
      const t = x0 + ((x1 - x0) * i) / 4;
      root.append(svg("text", { x: x(t), y: 290, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
        utc(new Date(t).toISOString()).slice(i === 0 ? 0 : 5, 16)));
    }
    const caption = el("figcaption", { class: "legend" }, `${rows.length} windows of ${data.window_minutes} min, ` +
      `${rows.filter((r) => r.is_anomaly).length} anomalous; shaded: alert episodes (this one darker)`);
    return [root, caption];
  }

  function segments(points, step) { // split where a window is missing, so a gap is not drawn as a line
    const out = [];
    let seg = [];
    for (const p of points.sort((a, b) => a[0] - b[0])) {
      if (seg.length && p[0] - seg[seg.length - 1][0] > 1.5 * step) { out.push(seg); seg = []; }
      seg.push(p);
    }
    if (seg.length) out.push(seg);
    return out;
  }

  // ---------------------------------------------------------------------------------------------- wiring
  $("#keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("#key").value);
    $("#key").value = "";
    start();
  });
  $("#forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); askKey(""); });
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); list(); });
  $("#filters").addEventListener("reset", () => setTimeout(() => list(), 0));
  $("#more").addEventListener("click", () => list(true));
  $("#act").addEventListener("submit", (e) => { e.preventDefault(); act(e.submitter ? e.submitter.value : "acknowledge"); });
  $("#act").elements.by.value = localStorage.getItem(WHO) || "";
  writeFilters(new URLSearchParams(location.search));
  if (sessionStorage.getItem(KEY)) start(); else askKey("");
})();
