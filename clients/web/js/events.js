// The events panel: the alert events of the daemon, newest first, each with its rule, camera,
// time, score, description and snapshot, and a button that asks the model about it. On every
// (re)connection it subscribes to all events (pushes keep the list live) and loads the history
// that matches the filter (camera, rule, since). New events are announced in a polite live
// region at most once every few seconds (a burst becomes one sentence), so that a busy camera
// does not flood a screen reader; the list itself is not live.

import { clock, duration, el, idPart } from "./format.js";

const SUBSCRIPTION = "page-events";
const HISTORY_LIMIT = 100;
const SHOWN_MAX = 200;
const ANNOUNCE_EVERY_MS = 5000;

export class EventsPanel {
  constructor({ connection, images, elements, onAskAbout, onMark, onView }) {
    this.connection = connection;
    this.images = images;
    this.e = elements;
    this.onAskAbout = onAskAbout;
    this.onMark = onMark;
    this.onView = onView;
    this.events = new Map(); // id -> record (the newest step seen)
    this.items = new Map(); // id -> {node, ...}
    this._query = 0;
    this._pendingQuery = null;
    this._announceQueue = [];
    this._announceTimer = null;
    this._lastAnnounce = 0;
    this._cameras = [];
    this._rules = [];

    this.e.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
    for (const input of [this.e.camera, this.e.rule, this.e.since]) {
      input.addEventListener("change", () => this.load());
    }
    connection.on("state", (detail) => {
      if (detail.state === "ready") {
        connection.send({ type: "subscribe", id: SUBSCRIPTION });
        this.load();
      }
    });
    connection.on("event", (m) => {
      if (m.id === SUBSCRIPTION && m.event?.after) this._onStep(m.event);
    });
    connection.on("events", (m) => {
      if (m.id === this._pendingQuery) this._onHistory(m.events ?? []);
    });
    connection.on("error", (m) => {
      if (m.request_type === "events" && m.id === this._pendingQuery) {
        this._say(`The daemon could not list the events: ${m.message}`);
      } else if (m.request_type === "subscribe" && m.id === SUBSCRIPTION) {
        this._say(`Live events are off: ${m.message}`);
      }
    });
  }

  /** Camera names for the filter (from hello/status). */
  setCameras(cameras) {
    const names = cameras.map((c) => c.name);
    if (names.join("\n") === this._cameras.join("\n")) return;
    this._cameras = names;
    fillSelect(this.e.camera, names, "All cameras");
  }

  /** Rule names for the filter (from the rules panel). */
  setRules(rules) {
    const names = rules.map((r) => r.name);
    for (const record of this.events.values()) {
      if (!names.includes(record.rule)) names.push(record.rule);
    }
    if (names.join("\n") === this._rules.join("\n")) return;
    this._rules = names;
    fillSelect(this.e.rule, names, "All rules");
  }

  /** Ask the daemon for the history that matches the filter. */
  load() {
    this._query += 1;
    const id = `page-events-${this._query}`;
    const message = { type: "events", id, limit: HISTORY_LIMIT };
    if (this.e.camera.value) message.camera = this.e.camera.value;
    if (this.e.rule.value) message.rule = this.e.rule.value;
    if (this.e.since.value) message.since = `${this.e.since.value}s`;
    if (this.connection.send(message)) {
      this._pendingQuery = id;
      this._say("Loading the events…");
    } else {
      this._say("Not connected to the daemon; the events load once it is back.");
    }
  }

  // --- internals --------------------------------------------------------------------------

  _matches(record) {
    const camera = this.e.camera.value;
    const rule = this.e.rule.value;
    const since = this.e.since.value;
    if (camera && record.camera !== camera) return false;
    if (rule && record.rule !== rule) return false;
    if (since && record.start_time * 1000 < Date.now() - Number(since) * 1000) return false;
    return true;
  }

  _onHistory(records) {
    this._pendingQuery = null;
    this.events.clear();
    for (const item of this.items.values()) item.node.remove();
    this.items.clear();
    for (const record of records) this._show(record);
    this._summary();
  }

  _onStep(step) {
    const record = step.after;
    const known = this.events.has(record.id);
    if (step.type === "start" && !known) this._announce(record);
    if (this._matches(record) || known) this._show(record);
    else this.onMark(record); // still worth a mark on its camera's timeline
    this._summary();
  }

  _show(record) {
    this.events.set(record.id, record);
    this.onMark(record);
    let item = this.items.get(record.id);
    if (item === undefined) {
      item = this._item(record);
      this.items.set(record.id, item);
      // Newest (by start) first.
      const later = [...this.e.list.children].find(
        (n) => Number(n.dataset.start) < record.start_time,
      );
      this.e.list.insertBefore(item.node, later ?? null);
      while (this.e.list.children.length > SHOWN_MAX) {
        const last = this.e.list.lastElementChild;
        this.items.delete(last.dataset.id);
        this.events.delete(last.dataset.id);
        last.remove();
      }
    }
    this._fill(item, record);
    if (!this._rules.includes(record.rule)) {
      this._rules = [...this._rules, record.rule];
      fillSelect(this.e.rule, this._rules, "All rules");
    }
  }

  _item(record) {
    const id = `event-${idPart(record.id)}`;
    const title = el("h3", { id: `${id}-title` });
    const state = el("span", { class: "state" });
    const when = el("p", { class: "meta muted" });
    const description = el("p", { class: "description" });
    const figure = el("div", { class: "event-shot" });
    const askButton = el("button", {
      type: "button",
      class: "quiet",
      text: "Ask about this event",
      "aria-describedby": `${id}-title`,
      onclick: () => this._askAbout(this.events.get(record.id) ?? record),
    });
    const node = el(
      "li",
      {
        class: "event",
        id,
        "data-id": record.id,
        "data-rule": record.rule,
        "data-camera": record.camera,
        "data-start": String(record.start_time),
        "aria-labelledby": `${id}-title`,
      },
      figure,
      el("div", { class: "event-body" }, el("header", {}, title, state), when, description, askButton),
    );
    return { node, title, state, when, description, figure, snapshot: null };
  }

  _fill(item, record) {
    const start = record.start_time * 1000;
    item.node.dataset.active = record.active ? "true" : "false";
    item.title.textContent = `${record.rule} on ${record.camera}`;
    item.state.textContent = record.active ? "ongoing" : "ended";
    item.state.className = `state ${record.active ? "state-event-open" : "state-event-ended"}`;
    const parts = [`started ${clock(start)}`];
    if (record.end_time != null) {
      parts.push(`ended ${clock(record.end_time * 1000)}`);
      parts.push(`lasted ${duration(record.end_time - record.start_time)}`);
    }
    if (record.end_reason && record.end_reason !== "cleared") parts.push(`(${record.end_reason})`);
    const score = record.peak_score ?? record.score;
    if (score != null) parts.push(`score ${Number(score).toFixed(2)}`);
    item.when.textContent = parts.join(" · ");
    item.description.textContent = record.description || "No description yet.";
    item.description.classList.toggle("muted", !record.description);
    if (record.has_snapshot && item.snapshot === null) this._snapshot(item, record);
  }

  _snapshot(item, record) {
    const label = `${record.rule} on ${record.camera} at ${clock(record.start_time * 1000)}`;
    const img = el("img", { alt: `Snapshot of the event ${label}`, width: 160, height: 90 });
    const button = el(
      "button",
      {
        type: "button",
        class: "thumb",
        "aria-label": `Show the snapshot large: ${label}`,
        onclick: () => this.onView(img, `Event snapshot: ${label}`),
      },
      img,
    );
    item.snapshot = button;
    item.figure.replaceChildren(button);
    this.images.load(img, `/events/${encodeURIComponent(record.id)}/snapshot.jpg`).catch(() => {
      item.figure.replaceChildren(el("span", { class: "gone", text: "no snapshot kept" }));
    });
  }

  _askAbout(record) {
    const at = clock(record.start_time * 1000);
    this.onAskAbout({
      camera: record.camera,
      event: record.id,
      question: `What happened during the ${record.rule} event on ${record.camera} at ${at}?`,
    });
  }

  _announce(record) {
    this._announceQueue.push(record);
    if (this._announceTimer !== null) return;
    const wait = Math.max(0, this._lastAnnounce + ANNOUNCE_EVERY_MS - Date.now());
    this._announceTimer = setTimeout(() => this._flushAnnouncements(), wait);
  }

  _flushAnnouncements() {
    this._announceTimer = null;
    const queue = this._announceQueue;
    this._announceQueue = [];
    if (!queue.length) return;
    const last = queue[queue.length - 1];
    const what = `${last.rule} on ${last.camera} at ${clock(last.start_time * 1000)}`;
    this.e.live.textContent =
      queue.length === 1 ? `New event: ${what}.` : `${queue.length} new events; the latest: ${what}.`;
    this._lastAnnounce = Date.now();
  }

  _summary() {
    const shown = this.items.size;
    this.e.empty.hidden = shown > 0;
    const open = [...this.events.values()].filter((r) => r.active).length;
    const words = [`${shown} event${shown === 1 ? "" : "s"} shown`];
    if (open) words.push(`${open} ongoing`);
    this._say(words.join(", ") + ".");
  }

  _say(text) {
    this.e.status.textContent = text;
  }
}

function fillSelect(select, names, allLabel) {
  const chosen = select.value;
  select.replaceChildren(
    el("option", { value: "", text: allLabel }),
    ...names.map((name) => el("option", { value: name, text: name })),
  );
  select.value = names.includes(chosen) ? chosen : "";
}
