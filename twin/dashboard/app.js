// ocpp-twin bench dashboard: plain JavaScript, no framework, no build step (docs/dashboard.md).
// Everything it does goes through the documented control API routes (docs/control-api.md);
// live updates come from GET /api/events (Server-Sent Events). It never polls: the only
// periodic work is a 1 s local redraw (ages, the chart's time axis), which makes no request.
"use strict";

const FAULT_CODES = ["ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature",
  "InternalError", "LocalListConflict", "OtherError", "OverCurrentFailure", "OverVoltage", "PowerMeterFailure",
  "PowerSwitchFailure", "ReaderFailure", "ResetFailure", "UnderVoltage", "WeakSignal"];
const CHART_WINDOW_S = 300;          // the power chart shows the last five minutes
const MAX_FRAMES = 500;              // rows kept in the frame log
const MIN_REFRESH_MS = 1000;         // never ask /api/state or /api/trace more than once a second
const RECONNECT_MS = 2000;
// The state does not carry the supply: the limit line is drawn as offeredA x 230 V x phases.
const VOLTS = 230, PHASES = 3;

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("twin-token");
let state = null;
let source = null;
let lastRefresh = 0;
let refreshTimer = null;
let nextFrame = 0;
const series = {};                  // connector id -> [{t, w, limitW}]
const callActions = new Map();      // message id -> {action, conn}
const actionsSeen = new Set();
let frames = [];

// ------------------------------------------------------------------ the API

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    if (resp.status === 401) askToken(data && data.error);
    throw new HttpError(resp.status, (data && data.error) || resp.statusText);
  }
  return data;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
}

async function act(what, fn) {
  try {
    const result = await fn();
    showError(null);
    if (result && result.connectors) render(result);
    return result;
  } catch (err) {
    showError(what + ": " + err.message);
    return null;
  }
}

// ------------------------------------------------------------------ the token, asked once

function askToken(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = message || "";
  $("token").focus();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("twin-token", token);
  $("token-form").hidden = true;
  start();
});

// ------------------------------------------------------------------ the event stream

function connect() {
  if (source) source.close();
  // EventSource sends no headers: the token goes as ?access_token= (accepted on this route only).
  const url = "/api/events" + (token ? "?access_token=" + encodeURIComponent(token) : "");
  source = new EventSource(url);
  source.onopen = () => { setLive(true); refresh(); };
  source.onerror = () => {
    setLive(false);
    if (source.readyState === EventSource.CLOSED) {
      // A refused stream (401, a restarting station) is not retried by the browser: do it here.
      setTimeout(start, RECONNECT_MS);
    }
  };
  source.addEventListener("state", (ev) => render(JSON.parse(ev.data)));
  source.addEventListener("frame", (ev) => addFrame(JSON.parse(ev.data)));
  source.addEventListener("overflow", () => refresh());   // events were lost: re-read once
}

function setLive(on) {
  const el = $("live");
  el.textContent = on ? "live" : "reconnecting…";
  el.className = "badge " + (on ? "on" : "off");
}

// Re-read the state and the frames missed, at most once a second (after a (re)connect or an overflow).
function refresh() {
  const wait = lastRefresh + MIN_REFRESH_MS - Date.now();
  if (wait > 0) {
    if (!refreshTimer) refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, wait);
    return;
  }
  lastRefresh = Date.now();
  act("state", () => api("GET", "/api/state"));
  api("GET", "/api/trace?since=" + nextFrame).then((t) => {
    t.frames.forEach(addFrame);
    nextFrame = Math.max(nextFrame, t.next);
  }).catch(() => {});
  loadRules();
}

async function start() {
  try {
    render(await api("GET", "/api/state"));
  } catch (err) {
    if (err.status === 401) return;   // the token form is shown; start() runs again from it
    setLive(false);
    setTimeout(start, RECONNECT_MS);
    return;
  }
  connect();
}

// ------------------------------------------------------------------ rendering

function text(id, value) {
  const el = $(id);
  const v = value === null || value === undefined || value === "" ? "—" : String(value);
  if (el.textContent !== v) el.textContent = v;
}

function age(iso) {
  if (!iso) return null;
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 90 ? s.toFixed(0) + " s" : (s / 60).toFixed(1) + " min";
}

function render(s) {
  if (!s || !Array.isArray(s.connectors)) return;
  state = s;
  text("station-id", s.chargePointId);
  text("st-firmware", s.firmwareVersion);
  text("st-registration", s.registration);
  text("st-link", s.link + (s.linkError ? " (" + s.linkError + ")" : ""));
  text("st-csms", s.csmsUrl);
  text("st-profile", s.security ? s.security.profile : null);
  text("st-status", s.station ? s.station.status + " / " + s.station.errorCode : null);
  text("st-queue", s.queue ? s.queue.length : null);
  text("st-queue-age", s.queue ? age(s.queue.oldestCreatedAt) : null);
  text("st-discarded", s.queue ? s.queue.discarded : null);
  text("st-store", s.store ? (s.store.ok ? "ok" : s.store.unsavedBatches + " batch(es) not saved") : null);
  const warnings = $("st-warnings");
  const items = (s.warnings || []).map((w) => w);
  if (warnings.dataset.v !== JSON.stringify(items)) {
    warnings.dataset.v = JSON.stringify(items);
    warnings.replaceChildren(...items.map((w) => el("li", {}, w)));
  }
  for (const c of s.connectors) renderConnector(c);
  const now = Date.now() / 1000;
  for (const c of s.connectors) sample(c, now);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const ch of children) e.append(ch);
  return e;
}

function renderConnector(c) {
  const id = c.id;
  let panel = $("conn-" + id);
  if (!panel) {
    panel = buildConnector(id);
    $("connectors").append(panel);
    const opt = el("option", { value: String(id) }, "connector " + id);
    $("filter-conn").append(opt);
  }
  text(`c${id}-status`, c.status);
  $(`c${id}-status`).className = "status " + c.status;
  text(`c${id}-error`, c.errorCode + (c.info ? " (" + c.info + ")" : ""));
  text(`c${id}-plugged`, c.plugged ? "yes" : "no");
  text(`c${id}-relay`, c.contactorClosed ? "closed" : "open");
  text(`c${id}-feedback`, c.contactorFeedback === undefined ? "not reported" :
       (c.contactorFeedback === null ? "—" : (c.contactorFeedback ? "closed" : "open")));
  text(`c${id}-power`, (c.powerW || 0).toFixed(0) + " W");
  text(`c${id}-energy`, (c.energyWh || 0).toFixed(1) + " Wh");
  text(`c${id}-tx`, c.transactionId === null || c.transactionId === undefined ? null :
       c.transactionId + (c.idTag ? " (" + c.idTag + ")" : ""));
  const amps = (c.powerW || 0) / (VOLTS * PHASES);
  text(`c${id}-limit`, (c.limitA === null || c.limitA === undefined ? "none" : c.limitA + " A") +
       " / offered " + (c.offeredA === null || c.offeredA === undefined ? "—" : c.offeredA + " A") +
       " / measured ≈ " + amps.toFixed(1) + " A");
  const r = c.reservation;
  text(`c${id}-reservation`, r ? (r.reservationId !== undefined ? "#" + r.reservationId + " " : "") +
       (r.idTag || "") + (r.expiryDate ? " until " + r.expiryDate : "") : null);
  text(`c${id}-ev`, c.ev ? (c.ev.suspended ? "suspended" : "charging allowed") + ", max " + c.ev.maxPowerW + " W" +
       (c.soc !== null && c.soc !== undefined ? ", SoC " + c.soc + " %" : "") : "no simulated EV");
}

function fact(label, id) {
  const n = id.split("-")[0].slice(1);
  return [el("dt", {}, label), el("dd", { id, "aria-label": `${label} of connector ${n}` }, "—")];
}

function buildConnector(id) {
  const codes = el("select", { id: `fault-code-${id}`, "aria-label": `Fault code for connector ${id}` },
                   ...FAULT_CODES.map((code) => el("option", {}, code)));
  const power = el("input", { id: `ev-power-${id}`, type: "number", min: "0", step: "100", value: "11000",
                              "aria-label": `EV max power W for connector ${id}` });
  const btn = (label, aria, fn) => el("button", { type: "button", "aria-label": aria, onclick: fn }, label);
  const dl = el("dl", { class: "facts" },
    ...fact("Status", `c${id}-status`), ...fact("Error code", `c${id}-error`), ...fact("Plugged", `c${id}-plugged`),
    ...fact("Relay", `c${id}-relay`), ...fact("Contactor feedback", `c${id}-feedback`),
    ...fact("Power", `c${id}-power`), ...fact("Energy", `c${id}-energy`), ...fact("Transaction", `c${id}-tx`),
    ...fact("Limit", `c${id}-limit`), ...fact("Reservation", `c${id}-reservation`), ...fact("EV", `c${id}-ev`));
  const canvas = el("canvas", { id: `chart-${id}`, width: "560", height: "160", role: "img",
                                "aria-label": `Power chart for connector ${id}, last ${CHART_WINDOW_S / 60} minutes` });
  return el("article", { id: "conn-" + id, class: "connector", "aria-label": `Connector ${id}` },
    el("h2", {}, `Connector ${id}`), dl, canvas,
    el("div", { class: "controls" },
      btn("Plug", `Plug connector ${id}`, () => act("plug", () => api("POST", `/api/connectors/${id}/plug`, {}))),
      btn("Unplug", `Unplug connector ${id}`, () => act("unplug", () => api("POST", `/api/connectors/${id}/unplug`, {})))),
    el("div", { class: "controls" }, codes,
      btn("Raise fault", `Raise fault on connector ${id}`,
          () => act("fault", () => api("POST", `/api/connectors/${id}/fault`, { errorCode: codes.value }))),
      btn("Clear fault", `Clear fault on connector ${id}`,
          () => act("clear fault", () => api("DELETE", `/api/connectors/${id}/fault`)))),
    el("div", { class: "controls" }, power,
      btn("Set EV demand", `Set EV demand on connector ${id}`,
          () => act("EV", () => api("POST", `/api/connectors/${id}/ev`, { maxPowerW: Number(power.value) }))),
      btn("Suspend EV", `Suspend EV on connector ${id}`,
          () => act("EV", () => api("POST", `/api/connectors/${id}/ev`, { suspended: true }))),
      btn("Resume EV", `Resume EV on connector ${id}`,
          () => act("EV", () => api("POST", `/api/connectors/${id}/ev`, { suspended: false })))));
}

// ------------------------------------------------------------------ the power chart

function sample(c, now) {
  const s = series[c.id] || (series[c.id] = []);
  const limitA = c.offeredA !== null && c.offeredA !== undefined ? c.offeredA : c.limitA;
  s.push({ t: now, w: c.powerW || 0, limitW: limitA === null || limitA === undefined ? null : limitA * VOLTS * PHASES });
  while (s.length && s[0].t < now - CHART_WINDOW_S) s.shift();
}

function drawCharts() {
  const now = Date.now() / 1000;
  if (state) for (const c of state.connectors) {
    const s = series[c.id];
    if (s && s.length && now - s[s.length - 1].t >= 1) sample(c, now);  // a flat line needs no event
  }
  for (const [id, s] of Object.entries(series)) {
    const canvas = $("chart-" + id);
    if (!canvas) continue;
    const g = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, pad = 34;
    g.clearRect(0, 0, W, H);
    const top = Math.max(1000, ...s.map((p) => Math.max(p.w, p.limitW || 0))) * 1.1;
    const x = (t) => pad + (W - pad - 4) * (1 - (now - t) / CHART_WINDOW_S);
    const y = (w) => H - 14 - (H - 24) * (w / top);
    g.strokeStyle = "#ccc"; g.fillStyle = "#666"; g.font = "10px sans-serif"; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const w = (top / 4) * i;
      g.beginPath(); g.moveTo(pad, y(w)); g.lineTo(W - 4, y(w)); g.stroke();
      g.fillText((w / 1000).toFixed(1) + "k", 2, y(w) + 3);
    }
    g.fillText("-" + CHART_WINDOW_S / 60 + " min", pad, H - 2);
    g.fillText("now", W - 24, H - 2);
    const line = (key, color, dash) => {
      g.strokeStyle = color; g.lineWidth = 2; g.setLineDash(dash); g.beginPath();
      let drawing = false;
      for (const p of s) {
        const v = p[key];
        if (v === null) { drawing = false; continue; }
        if (drawing) g.lineTo(x(p.t), y(v)); else g.moveTo(x(p.t), y(v));
        drawing = true;
      }
      g.stroke(); g.setLineDash([]);
    };
    line("limitW", "#c0392b", [6, 4]);
    line("w", "#1f6feb", []);
    g.fillStyle = "#1f6feb"; g.fillText("power", W - 120, 10);
    g.fillStyle = "#c0392b"; g.fillText("limit", W - 70, 10);
  }
}

// ------------------------------------------------------------------ the frame log

const KINDS = { 2: "CALL", 3: "RESULT", 4: "ERROR" };

function describe(rec) {
  const f = rec.frame;
  if (!Array.isArray(f)) return { kind: "garbled", action: "?", conn: null, payload: f };
  const kind = KINDS[f[0]] || "?";
  let action = "?", conn = null, payload = f;
  if (f[0] === 2) {
    action = String(f[2]); payload = f[3];
    conn = payload && typeof payload === "object" && Number.isInteger(payload.connectorId) ? payload.connectorId : null;
    callActions.set(f[1], { action, conn });
    if (callActions.size > 2000) callActions.delete(callActions.keys().next().value);
  } else {
    const call = callActions.get(f[1]);
    if (call) { action = call.action; conn = call.conn; }
    payload = f[0] === 3 ? f[2] : f.slice(2);
  }
  return { kind, action, conn, payload };
}

function addFrame(rec) {
  if (!rec || typeof rec.n !== "number" || rec.n < nextFrame) return;  // already shown
  nextFrame = rec.n + 1;
  const d = describe(rec);
  if (!actionsSeen.has(d.action)) {
    actionsSeen.add(d.action);
    $("actions").append(el("option", { value: d.action }));
  }
  const time = (rec.t || "").slice(11, 23);
  const marks = [];
  if (rec.fault) marks.push(el("span", { class: "fault", title: "changed by fault rule " + rec.fault },
                                 "fault " + rec.fault + (rec.do ? " (" + rec.do + ")" : "")));
  if (rec.lost) marks.push(el("span", { class: "fault" }, "lost"));
  const summary = el("summary", {},
    el("span", { class: "n" }, "#" + rec.n), " ", el("time", {}, time), " ",
    el("span", { class: "dir " + rec.dir }, rec.dir === "out" ? "→ out" : "← in"), " ",
    el("span", { class: "action" }, d.action), " ", el("span", { class: "kind" }, d.kind),
    d.conn !== null ? " connector " + d.conn : "", " ", ...marks);
  const pre = el("pre", {}, JSON.stringify(d.payload, null, 2));
  const li = el("li", { class: "frame" + (rec.fault || rec.lost ? " faulted" : ""), "data-action": d.action, "data-kind": d.kind, "data-dir": rec.dir || "",
                        "data-conn": d.conn === null ? "" : String(d.conn), "data-fault": rec.fault || rec.lost ? "1" : "" },
                el("details", {}, summary, pre));
  applyFilter(li);
  const log = $("frame-log");
  log.prepend(li);
  frames.push(li);
  while (frames.length > MAX_FRAMES) frames.shift().remove();
}

function applyFilter(li) {
  const action = $("filter-action").value.trim().toLowerCase();
  const conn = $("filter-conn").value;
  const onlyFaults = $("filter-faults").checked;
  li.hidden = (action && !li.dataset.action.toLowerCase().includes(action)) ||
              (conn && li.dataset.conn !== conn) || (onlyFaults && !li.dataset.fault);
}

for (const id of ["filter-action", "filter-conn", "filter-faults"]) {
  $(id).addEventListener("input", () => frames.forEach(applyFilter));
}
$("frames-clear").addEventListener("click", () => { frames.forEach((li) => li.remove()); frames = []; });

// ------------------------------------------------------------------ station controls

function recentTags() {
  try { return JSON.parse(localStorage.getItem("twin-recent-tags") || "[]"); } catch (e) { return []; }
}
function rememberTag(tag) {
  const tags = [tag, ...recentTags().filter((t) => t !== tag)].slice(0, 8);
  localStorage.setItem("twin-recent-tags", JSON.stringify(tags));
  showTags();
}
function showTags() {
  $("recent-tags").replaceChildren(...recentTags().map((t) => el("option", { value: t })));
}

$("tap").addEventListener("click", () => {
  const tag = $("idtag").value.trim();
  act("tap card", () => api("POST", "/api/rfid", { idTag: tag })).then((r) => { if (r) rememberTag(tag); });
});

async function network(body) {
  const r = await act("network", () => api("POST", "/api/network", body));
  if (r) $("net-state").textContent = (r.online ? "online" : "offline") + (r.connected ? ", connected" : "") +
    (r.latency_ms ? ", latency " + r.latency_ms + " ms" : "") + (r.drop_rate ? ", drop " + r.drop_rate : "");
}
$("net-off").addEventListener("click", () => network({ online: false }));
$("net-on").addEventListener("click", () => network({ online: true }));
$("net-impair").addEventListener("click", () => network({
  latency_ms: Number($("net-latency").value) || 0, jitter_ms: Number($("net-jitter").value) || 0,
  drop_rate: Number($("net-drop").value) || 0 }));

$("fault-code-0").replaceChildren(...FAULT_CODES.map((code) => el("option", {}, code)));
document.querySelector("[data-fault='0']").addEventListener("click", () =>
  act("station fault", () => api("POST", "/api/connectors/0/fault", { errorCode: $("fault-code-0").value })));
document.querySelector("[data-clear='0']").addEventListener("click", () =>
  act("clear station fault", () => api("DELETE", "/api/connectors/0/fault")));

// ------------------------------------------------------------------ protocol fault rules

async function loadRules() {
  let rules;
  try { rules = await api("GET", "/api/faults"); } catch (err) { return; }
  $("rule-list").replaceChildren(...rules.map((r) => el("li", {},
    el("code", {}, r.id), " " + [r.direction, r.on, r.do].join(" ") +
      (r.remaining !== undefined ? " (" + r.remaining + " left)" : "") + " ",
    el("button", { type: "button", "aria-label": "Remove fault rule " + r.id,
                   onclick: () => act("remove rule", () => api("DELETE", "/api/faults/" + encodeURIComponent(r.id)))
                                    .then(loadRules) }, "Remove"))));
}

$("rule-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const rule = { on: $("rule-on").value.trim() || "*", direction: $("rule-dir").value, do: $("rule-do").value };
  const count = $("rule-count").value, seconds = $("rule-seconds").value, extra = $("rule-extra").value.trim();
  if (count) rule.count = Number(count);
  if (seconds) rule.seconds = Number(seconds);
  if (extra) {
    if (extra.startsWith("{")) {
      try { rule.payload = JSON.parse(extra); } catch (e) { showError("payload: not JSON: " + e.message); return; }
    } else rule.code = extra;
  }
  act("add rule", () => api("POST", "/api/faults", rule)).then(loadRules);
});
$("rules-clear").addEventListener("click", () => act("remove rules", () => api("DELETE", "/api/faults")).then(loadRules));

// ------------------------------------------------------------------ go

showTags();
setInterval(() => {
  drawCharts();
  if (state && state.queue) text("st-queue-age", age(state.queue.oldestCreatedAt));
}, 1000);
start();
