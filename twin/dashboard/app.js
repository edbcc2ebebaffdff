// ocpp-twin bench dashboard: plain JavaScript, no framework, no build step (docs/dashboard.md).
// Everything it does goes through the documented control API routes (docs/control-api.md);
// live updates come from GET /api/events (Server-Sent Events). A station's page never polls:
// the only periodic work is a 1 s local redraw (ages, the chart's time axis), which makes no
// request.
//
// Served by a fleet (`twin fleet`, docs/fleet.md) the page first shows the fleet's station
// list, one page of it read from GET /api/stations (filtered by the server, 304 when nothing
// changed) at most every 2 s and only while the list is on screen (a fleet has no event
// stream of its own). A station's page is then the same single-station view
// with every route under /api/stations/{id}, at #/stations/{id}. Which server it is is told by
// that one route: a fleet answers it, a single twin has no such route (404).
"use strict";

const FAULT_CODES = ["ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature",
  "InternalError", "LocalListConflict", "OtherError", "OverCurrentFailure", "OverVoltage", "PowerMeterFailure",
  "PowerSwitchFailure", "ReaderFailure", "ResetFailure", "UnderVoltage", "WeakSignal"];
const CHART_WINDOW_S = 300;          // the power chart shows the last five minutes
const MAX_FRAMES = 500;              // rows kept in the frame log
const MIN_REFRESH_MS = 1000;         // never ask /api/state or /api/trace more than once a second
const RECONNECT_MS = 2000;
const FLEET_POLL_MS = 2000;          // GET /api/stations at most this often
const FLEET_PAGE = 50;               // rows drawn at once: a list of thousands stays light
// drivers.relay_check's verdicts, which the station reports as PowerSwitchFailure (OCPP 1.6 §7.6).
const CONTACTOR_FAULTS = { welded: "welded: aux closed while coil off",
                           failed_to_close: "did not close: aux open while coil on" };
// The state does not carry the supply: the limit line is drawn as offeredA x 230 V x phases.
const VOLTS = 230, PHASES = 3;

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("twin-token");
let mode = null;                    // null until known, then "single" or "fleet"
let apiBase = "/api";               // on a fleet: /api/stations/{id}
let station = null;                 // the fleet member shown; null while the list shows
let gen = 0;                        // bumped on every change of view: the old view's late answers are dropped
let state = null;
let source = null;
let lastRefresh = 0;
let refreshTimer = null;
let retryTimer = null;
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
  if (resp.status === 204 || resp.status === 304) return null;
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    if (resp.status === 401) askToken(data && data.error);
    throw new HttpError(resp.status, (data && data.error) || resp.statusText);
  }
  return data;
}

// A route of the station shown: "/state" is /api/state, or /api/stations/P0001/state on a fleet.
const route = (path) => apiBase + path;

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
}

async function act(what, fn) {
  const g = gen;
  try {
    const result = await fn();
    if (g !== gen) return null;     // the page has moved on to another view meanwhile
    showError(null);
    if (result && result.connectors) render(result);
    return result;
  } catch (err) {
    if (g === gen) showError(what + ": " + err.message);
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

// ------------------------------------------------------------------ where the page starts

async function start() {
  if (mode === null) {
    let stations;
    const query = fleetQuery();
    try {
      stations = await api("GET", query);
      mode = "fleet";
    } catch (err) {
      if (err.status === 401) return;   // the token form is shown; start() runs again from it
      if (err.status !== 404) {         // not up yet (or a network error): ask again
        setLive(false);
        setTimeout(start, RECONNECT_MS);
        return;
      }
      mode = "single";                  // a single twin: no such route
    }
    if (mode === "fleet") {
      fleetPolledAt = Date.now();       // that answer is the list's first poll
      fleet = stations;
      fleetShownQuery = query;
      window.addEventListener("hashchange", navigate);
    }
  }
  if (mode === "fleet") navigate(); else startStation(gen);
}

// The station's page: its state, then its event stream. ``g`` is the view it belongs to.
async function startStation(g) {
  clearTimeout(retryTimer);
  let s;
  try {
    s = await api("GET", route("/state"));
  } catch (err) {
    if (g !== gen || err.status === 401) return;   // moved on, or the token form is shown
    setLive(false);
    if (mode === "fleet") showError("state: " + err.message);   // the answer names the station
    if (err.status === 404 && mode === "fleet") return;   // no such member: nothing to wait for
    retryTimer = setTimeout(() => startStation(g), RECONNECT_MS);   // starting, rebooting (503)
    return;
  }
  if (g !== gen) return;
  showError(null);
  render(s);
  connect(g);
}

// ------------------------------------------------------------------ the event stream

function connect(g) {
  if (source) source.close();
  // EventSource sends no headers: the token goes as ?access_token= (accepted on this route only).
  const url = route("/events") + (token ? "?access_token=" + encodeURIComponent(token) : "");
  const es = source = new EventSource(url);
  es.onopen = () => { setLive(true); refresh(); };
  es.onerror = () => {
    if (g !== gen) return;
    setLive(false);
    if (es.readyState === EventSource.CLOSED) {
      // A refused stream (401, a restarting station) is not retried by the browser: do it here.
      retryTimer = setTimeout(() => startStation(g), RECONNECT_MS);
    }
  };
  es.addEventListener("state", (ev) => render(JSON.parse(ev.data)));
  es.addEventListener("frame", (ev) => addFrame(JSON.parse(ev.data)));
  es.addEventListener("overflow", () => refresh());   // events were lost: re-read once
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
  const g = gen;
  act("state", () => api("GET", route("/state")));
  api("GET", route("/trace?since=" + nextFrame)).then((t) => {
    if (g !== gen) return;
    t.frames.forEach(addFrame);
    nextFrame = Math.max(nextFrame, t.next);
  }).catch(() => {});
  loadRules();
}

// ------------------------------------------------------------------ the fleet: views

let fleet = null;                   // the last GET /api/stations answer
let fleetPolledAt = 0;
let fleetTimer = null;
let fleetBusy = false;
let fleetPage = 0;
let fleetShownQuery = "";           // the GET /api/stations URL that ``fleet`` answers
let fleetEtag = null;               // and its ETag

function stationInUrl() {
  const m = /^#\/stations\/([^/?#]+)$/.exec(location.hash);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch (e) { return null; }
}

// The URL says which view: #/stations/P0001 is that station's page, anything else the list.
function navigate() {
  gen++;
  leaveStation();
  station = stationInUrl();
  $("back").hidden = station === null;
  $("fleet").hidden = station !== null;
  $("main").hidden = station === null;
  $("live").hidden = station === null;   // the list has no stream: its own line says when it was read
  showError(null);
  if (station === null) {
    apiBase = "/api";
    document.title = "ocpp-twin fleet";
    text("station-id", "fleet");
    if (fleet) renderFleet();
    pollFleet();
  } else {
    apiBase = "/api/stations/" + encodeURIComponent(station);
    document.title = "ocpp-twin " + station;
    text("station-id", station);
    setLive(false);
    startStation(gen);
  }
}

// Forget everything the previous station's page showed.
function leaveStation() {
  if (source) { source.close(); source = null; }
  clearTimeout(retryTimer);
  clearTimeout(refreshTimer);
  refreshTimer = null;
  lastRefresh = 0;
  state = null;
  nextFrame = 0;
  for (const k of Object.keys(series)) delete series[k];
  callActions.clear();
  actionsSeen.clear();
  $("actions").replaceChildren();
  frames.forEach((li) => li.remove());
  frames = [];
  $("connectors").replaceChildren();
  $("filter-conn").replaceChildren(el("option", { value: "" }, "any"));
  $("rule-list").replaceChildren();
  $("net-state").textContent = "";
  for (const dd of document.querySelectorAll("#station dd")) dd.textContent = "—";
  $("st-warnings").replaceChildren();
  delete $("st-warnings").dataset.v;
}

$("back").addEventListener("click", () => { location.hash = "#/"; });

// ------------------------------------------------------------------ the fleet: the list

// Read the list now if it is on screen and was last read FLEET_POLL_MS ago, else at that time.
// One request at a time; none while a station's page or another tab is in front.
function pollFleet() {
  clearTimeout(fleetTimer);
  fleetTimer = null;
  if (mode !== "fleet" || station !== null || document.visibilityState === "hidden" || fleetBusy) return;
  const wait = fleetPolledAt + FLEET_POLL_MS - Date.now();
  if (wait > 0) { fleetTimer = setTimeout(pollFleet, wait); return; }
  fleetBusy = true;
  fleetPolledAt = Date.now();
  const query = fleetQuery();
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  // The server filters and pages (only FLEET_PAGE rows travel), and answers 304 when the
  // page is what this one already shows (its ETag).
  if (query === fleetShownQuery && fleetEtag) headers["If-None-Match"] = fleetEtag;
  fetch(query, { headers, cache: "no-store" }).then(async (resp) => {
    let data = null;
    if (resp.status !== 304) {
      try { data = await resp.json(); } catch (e) { data = null; }
      if (!resp.ok) {
        if (resp.status === 401) askToken(data && data.error);
        throw new HttpError(resp.status, (data && data.error) || resp.statusText);
      }
    }
    return { data, etag: resp.headers.get("ETag") };
  }).then(({ data, etag }) => {
    // The next read waits 2 s after this answer, not after this request: a fleet busy enough
    // to answer slowly (a thousand members on one loop) is asked less often, never more.
    fleetBusy = false;
    fleetPolledAt = Date.now();
    if (data !== null) { fleet = data; fleetShownQuery = query; fleetEtag = etag; }
    $("fleet-updated").textContent = fleetQuery() === fleetShownQuery
      ? "read at " + new Date().toLocaleTimeString() : "updating…";   // changed while asking
    if (station === null) { showError(null); renderFleet(); }
    pollFleet();
  }, (err) => {
    fleetBusy = false;
    fleetPolledAt = Date.now();
    if (err.status === 401) return;    // the token form is shown; start() comes back here
    if (station === null) showError("stations: " + err.message);
    pollFleet();
  });
}
document.addEventListener("visibilitychange", pollFleet);

function linkText(link) {
  if (!link) return "—";
  if (link.connected) return "online";
  return link.online ? "offline (reconnecting)" : "offline (cut)";
}

// The list's page and filter as a GET /api/stations URL. The server matches the filter's
// words (each one in the id, or the start of a status: "avail" finds Available, not
// Unavailable; twin.fleet.fleet.station_matches) and sends only this page.
function fleetQuery() {
  const q = $("fleet-filter").value.trim().split(/\s+/).filter(Boolean).join(" ");
  return `/api/stations?offset=${fleetPage * FLEET_PAGE}&limit=${FLEET_PAGE}` + (q ? "&q=" + encodeURIComponent(q) : "");
}

// A new filter or page: read it as soon as the spacing of the reads allows (at most one every
// FLEET_POLL_MS, typing included); until then the list says it is behind.
function fleetChanged() {
  $("fleet-updated").textContent = "updating…";
  pollFleet();
}

function renderFleet() {
  const f = fleet;
  if (!f || !Array.isArray(f.stations)) return;
  const filtered = /[?&]q=/.test(fleetShownQuery);
  const rows = f.stations;
  const pages = Math.max(1, Math.ceil(f.matched / FLEET_PAGE));
  if (f.offset > 0 && f.offset >= f.matched) {   // the page ran out (fewer matches now): the last one
    fleetPage = pages - 1;
    fleetChanged();
    return;
  }
  const first = f.offset;
  text("fleet-counts", `registered ${f.registered} / ${f.count}` + (filtered ? `, ${f.matched} match` : ""));
  const notes = [];
  if (f.online === false) notes.push("fleet network cut (blackout)");
  if (f.reboot && !f.reboot.finished) notes.push(`rebooting: batch ${f.reboot.done} of ${f.reboot.batches}`);
  $("fleet-notes").textContent = notes.join("; ");
  text("page-info", rows.length ? `${first + 1}–${first + rows.length} of ${f.matched}` : "no station matches");
  $("page-prev").disabled = fleetPage === 0;
  $("page-next").disabled = first + rows.length >= f.matched;
  // Only the rows on this page are drawn, and only when what they show has changed.
  const key = JSON.stringify(rows);
  const body = $("fleet-rows");
  if (body.dataset.v === key) return;
  body.dataset.v = key;
  body.replaceChildren(...rows.map(fleetRow));
}

function fleetRow(s) {
  const open = el("a", { href: "#/stations/" + encodeURIComponent(s.id), "aria-label": "Open station " + s.id }, s.id);
  const chips = (s.connectors || []).map((c) => el("span", {
    class: "chip status " + c.status, "data-conn": String(c.id),
    title: `connector ${c.id}: ${c.status}` + (c.errorCode && c.errorCode !== "NoError" ? ` (${c.errorCode})` : "") },
    `${c.id} ${c.status}` + (c.errorCode && c.errorCode !== "NoError" ? ` ${c.errorCode}` : "")));
  const reg = el("td", { class: "registration " + s.registration }, s.registration || "—");
  if (s.error) reg.append(el("span", { class: "bad", title: s.error }, " (start failed: " + s.error + ")"));
  return el("tr", { "data-station": s.id, onclick: (ev) => { if (!ev.target.closest("a")) location.hash = open.hash; } },
    el("td", {}, open), reg, el("td", {}, linkText(s.link)), el("td", { class: "chips" }, ...chips));
}

$("fleet-filter").addEventListener("input", () => { fleetPage = 0; fleetChanged(); });
$("page-prev").addEventListener("click", () => { fleetPage = Math.max(0, fleetPage - 1); fleetChanged(); });
$("page-next").addEventListener("click", () => { fleetPage += 1; fleetChanged(); });

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
  if (mode === "fleet" && s.chargePointId !== station) return;   // never another member's state
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
  text(`c${id}-feedback`, contactor(c.contactor));
  $(`c${id}-feedback`).className = c.contactor && c.contactor.fault ? "bad" : "";
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

// The relay driver's aux contact and the feedback supervisor's verdict (connectors[].contactor).
function contactor(k) {
  if (k === undefined) return "not reported";     // a station older than the field
  if (k === null) return "no relay";
  let t = k.feedback;
  if ((t === "closed" || t === "open") && (t === "closed") !== k.commanded) {
    t += " (coil " + (k.commanded ? "closed" : "open") + ")";   // settling, or soon a fault
  }
  if (k.fault) t += " — " + (CONTACTOR_FAULTS[k.fault] || k.fault);
  return t;
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
  const post = (what, path, body) => () => act(what, () => api("POST", route(path), body));
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
      btn("Plug", `Plug connector ${id}`, post("plug", `/connectors/${id}/plug`, {})),
      btn("Unplug", `Unplug connector ${id}`, post("unplug", `/connectors/${id}/unplug`, {}))),
    el("div", { class: "controls" }, codes,
      btn("Raise fault", `Raise fault on connector ${id}`,
          () => act("fault", () => api("POST", route(`/connectors/${id}/fault`), { errorCode: codes.value }))),
      btn("Clear fault", `Clear fault on connector ${id}`,
          () => act("clear fault", () => api("DELETE", route(`/connectors/${id}/fault`))))),
    el("div", { class: "controls" }, power,
      btn("Set EV demand", `Set EV demand on connector ${id}`,
          () => act("EV", () => api("POST", route(`/connectors/${id}/ev`), { maxPowerW: Number(power.value) }))),
      btn("Suspend EV", `Suspend EV on connector ${id}`, post("EV", `/connectors/${id}/ev`, { suspended: true })),
      btn("Resume EV", `Resume EV on connector ${id}`, post("EV", `/connectors/${id}/ev`, { suspended: false }))));
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
  act("tap card", () => api("POST", route("/rfid"), { idTag: tag })).then((r) => { if (r) rememberTag(tag); });
});

async function network(body) {
  const r = await act("network", () => api("POST", route("/network"), body));
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
  act("station fault", () => api("POST", route("/connectors/0/fault"), { errorCode: $("fault-code-0").value })));
document.querySelector("[data-clear='0']").addEventListener("click", () =>
  act("clear station fault", () => api("DELETE", route("/connectors/0/fault"))));

// ------------------------------------------------------------------ protocol fault rules

async function loadRules() {
  const g = gen;
  let rules;
  try { rules = await api("GET", route("/faults")); } catch (err) { return; }
  if (g !== gen) return;
  $("rule-list").replaceChildren(...rules.map((r) => el("li", {},
    el("code", {}, r.id), " " + [r.direction, r.on, r.do].join(" ") +
      (r.remaining !== undefined ? " (" + r.remaining + " left)" : "") + " ",
    el("button", { type: "button", "aria-label": "Remove fault rule " + r.id,
                   onclick: () => act("remove rule", () => api("DELETE", route("/faults/" + encodeURIComponent(r.id))))
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
  act("add rule", () => api("POST", route("/faults"), rule)).then(loadRules);
});
$("rules-clear").addEventListener("click", () => act("remove rules", () => api("DELETE", route("/faults"))).then(loadRules));

// ------------------------------------------------------------------ go

showTags();
setInterval(() => {
  drawCharts();
  if (state && state.queue) text("st-queue-age", age(state.queue.oldestCreatedAt));
}, 1000);
start();
