// The stream-agent web page: wires the WebSocket connection to the panels. Every panel is a
// small module fed by the connection's messages (a module, a section in index.html, a few lines
// here): cameras, events, ask, rules, system.

import { AskPanel } from "./js/ask.js";
import { CamerasPanel } from "./js/cameras.js";
import { Connection, TokenStore, daemonUrl } from "./js/connection.js";
import { EventsPanel } from "./js/events.js";
import { clock, duration } from "./js/format.js";
import { Images } from "./js/images.js";
import { RulesPanel } from "./js/rules.js";
import { SystemPanel } from "./js/system.js";

const STATUS_EVERY_MS = 2000;
const RECONNECTED_SHOWN_MS = 8000;

const $ = (id) => document.getElementById(id);

const tokens = new TokenStore();
const connection = new Connection(daemonUrl(window.location), tokens);
const images = new Images(tokens);

const dialog = $("frame-dialog");
function viewFrame(img, label, title = "Evidence frame") {
  $("frame-dialog-image").src = img.src;
  $("frame-dialog-image").alt = `${title}: ${label}`;
  $("frame-dialog-title").textContent = title;
  $("frame-dialog-caption").textContent = label;
  dialog.showModal();
}

const system = new SystemPanel({ facts: $("system-facts"), table: $("memory-table") });
let cameras;
const ask = new AskPanel({
  connection,
  images,
  elements: {
    form: $("ask-form"),
    question: $("question"),
    camera: $("ask-camera"),
    minutes: $("range-minutes"),
    from: $("range-from"),
    to: $("range-to"),
    cancel: $("ask-cancel"),
    error: $("ask-error"),
    history: $("history"),
    empty: $("history-empty"),
    onView: viewFrame,
  },
  onEvidence: (evidence) => {
    for (const moment of evidence) {
      const middle = (Date.parse(moment.start_time) + Date.parse(moment.end_time)) / 2;
      cameras.addMark(moment.camera, middle, "Evidence");
    }
  },
  onTimings: (timings) => system.onTimings(timings),
});
cameras = new CamerasPanel({
  root: $("camera-list"),
  empty: $("cameras-empty"),
  images,
  onAskAbout: (what) => ask.askAbout(what),
  onPickCamera: (name) => ask.pickCamera(name),
});

const events = new EventsPanel({
  connection,
  images,
  elements: {
    form: $("events-filter"),
    camera: $("events-camera"),
    rule: $("events-rule"),
    since: $("events-since"),
    status: $("events-status"),
    live: $("events-live"),
    empty: $("events-empty"),
    list: $("event-list"),
  },
  onAskAbout: (what) => ask.askAbout(what),
  onMark: (record) => cameras.addMark(record.camera, record.start_time * 1000, `Event ${record.rule}`, "event"),
  onView: (img, label) => viewFrame(img, label, "Event snapshot"),
});

const rules = new RulesPanel({
  connection,
  elements: {
    heading: $("rules-title"),
    status: $("rules-status"),
    empty: $("rules-empty"),
    list: $("rule-list"),
    form: $("rule-form"),
    formTitle: $("rule-form-title"),
    cameraBoxes: $("rule-camera-boxes"),
    pausedField: $("rule-paused-field"),
    submit: $("rule-submit"),
    cancelEdit: $("rule-cancel-edit"),
    formError: $("rule-form-error"),
    formStatus: $("rule-form-status"),
  },
  onRules: (list) => events.setRules(list),
});

function setCameras(list) {
  ask.setCameras(list);
  events.setCameras(list);
  rules.setCameras(list);
}

// --- connection state: banner, login form ----------------------------------------------------

const banner = $("connection");
let bannerTimer = null;
let statusTimer = null;

function showBanner(state, text, { fade = false } = {}) {
  banner.dataset.state = state;
  banner.textContent = text;
  banner.hidden = false;
  if (bannerTimer !== null) clearTimeout(bannerTimer);
  bannerTimer = fade
    ? setTimeout(() => {
        banner.hidden = true;
        banner.textContent = "";
      }, RECONNECTED_SHOWN_MS)
    : null;
}

function showLogin(error) {
  $("login").hidden = false;
  $("workspace").hidden = true;
  $("token-error").textContent = error ?? "";
  $("token").setAttribute("aria-invalid", error ? "true" : "false");
  if (document.activeElement === document.body || document.activeElement === null) {
    $("token").focus();
  }
}

function hideLogin() {
  const hadFocus = $("login").contains(document.activeElement);
  $("login").hidden = true;
  $("workspace").hidden = false;
  $("token-error").textContent = "";
  // The focus was in the form that just went away: put it where the person goes next.
  if (hadFocus) $("question").focus();
}

connection.on("state", (detail) => {
  const host = window.location.host;
  switch (detail.state) {
    case "connecting":
      if (detail.attempt === 0) showBanner("connecting", `Connecting to the daemon at ${host}…`);
      break;
    case "login":
      showBanner("login", "The daemon asks for its token.");
      showLogin(detail.error);
      break;
    case "authenticating":
      showBanner("connecting", "Logging in…");
      break;
    case "ready":
      hideLogin();
      $("logout").hidden = !tokens.get();
      if (detail.reconnected !== null) {
        showBanner(
          "reconnected",
          `Reconnected to the daemon at ${host} after ${duration(detail.reconnected / 1000)}.`,
          { fade: true },
        );
      } else {
        showBanner("ready", `Connected to the daemon at ${host}.`, { fade: true });
      }
      break;
    case "unreachable": {
      const retry = `retrying in ${duration(detail.delayMs / 1000)} (attempt ${detail.attempt})`;
      const text = detail.lostAt
        ? `The daemon at ${host} is unreachable since ${clock(detail.lostAt)}; ${retry}.`
        : `Cannot reach the daemon at ${host}; ${retry}.`;
      showBanner("unreachable", text);
      break;
    }
    case "incompatible":
      showBanner(
        "unreachable",
        `The daemon speaks protocol version ${detail.protocol}; this page knows version 1.`,
      );
      break;
  }
  const live = detail.state === "ready";
  cameras.setLive(live);
  document.body.dataset.connection = detail.state;
  if (live && statusTimer === null) {
    askStatus();
    statusTimer = setInterval(askStatus, STATUS_EVERY_MS);
  } else if (!live && statusTimer !== null) {
    clearInterval(statusTimer);
    statusTimer = null;
  }
});

function askStatus() {
  connection.send({ type: "status", id: "page" });
}

connection.on("hello", (hello) => {
  system.onHello(hello);
  if (!hello.auth_required) {
    cameras.update(hello.cameras);
    setCameras(hello.cameras);
  }
});

connection.on("status", (status) => {
  system.onStatus(status);
  cameras.update(status.cameras);
  setCameras(status.cameras);
  // The events and rules panels show only on a daemon that runs alerts.
  const hasAlerts = status.alerts !== undefined && status.alerts !== null;
  for (const id of ["events", "rules", "nav-events", "nav-rules"]) $(id).hidden = !hasAlerts;
  rules.onStatus(status.alerts);
});

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value;
  if (!token) {
    showLogin("Type the token first.");
    return;
  }
  $("token").value = "";
  connection.login(token, $("remember").checked);
});

$("logout").addEventListener("click", () => {
  connection.logout();
});

connection.start();
