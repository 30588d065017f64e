// The ask panel: the question form (one camera or all, any time, the last N minutes or between
// two times), the answers streaming in token by token, their evidence moments as thumbnails,
// cancel, and the history of this session's questions (kept in sessionStorage, so a reload of
// the tab keeps it).

import { clock, duration, el } from "./format.js";

const HISTORY_KEY = "stream-agent.history";
const HISTORY_MAX = 50;
const EVIDENCE_SHOWN = 6;

export class AskPanel {
  constructor({ connection, images, elements, onEvidence, onTimings }) {
    this.connection = connection;
    this.images = images;
    this.e = elements;
    this.onEvidence = onEvidence;
    this.onTimings = onTimings;
    this.entries = new Map(); // id -> entry (in flight)
    this.order = []; // entries, oldest first
    this._counter = 0;
    this._session = Math.random().toString(36).slice(2, 8);

    this.e.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.e.question.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.submit();
      }
    });
    this.e.cancel.addEventListener("click", () => this.cancelNewest());
    for (const input of [this.e.minutes]) {
      input.addEventListener("focus", () => {
        this.e.form.elements.range.value = "last";
      });
    }
    for (const input of [this.e.from, this.e.to]) {
      input.addEventListener("focus", () => {
        this.e.form.elements.range.value = "between";
      });
    }
    connection.on("ack", (m) => this._entry(m.id)?.ack(m));
    connection.on("delta", (m) => this._entry(m.id)?.delta(m));
    connection.on("answer", (m) => this._finish(m.id, (entry) => entry.answer(m)));
    connection.on("error", (m) => {
      if (m.request_type === "ask" || m.request_type === "cancel") {
        const entry = this._entry(m.id);
        if (entry === undefined) return;
        if (m.request_type === "ask") this._finish(m.id, (e) => e.error(m));
        else entry.note(m.message);
      }
    });
    connection.on("closed", () => {
      for (const id of [...this.entries.keys()]) {
        this._finish(id, (entry) => entry.interrupted());
      }
    });
    this._restore();
  }

  setCameras(cameras) {
    const select = this.e.camera;
    const chosen = select.value;
    const names = cameras.map((c) => c.name);
    const current = [...select.options].slice(1).map((o) => o.value);
    if (names.join("\n") !== current.join("\n")) {
      select.replaceChildren(
        el("option", { value: "", text: "All cameras" }),
        ...names.map((name) => el("option", { value: name, text: name })),
      );
      select.value = names.includes(chosen) ? chosen : "";
    }
  }

  pickCamera(name) {
    this.e.camera.value = name;
    this.e.question.focus();
  }

  /** Ask about a moment (from the timeline) or an alert event (``event``: its id; the daemon
   * then picks the camera and the time around the event) as given, leaving the form as the
   * person set it. */
  askAbout({ camera, question, since, until, event }) {
    this._say("");
    const message = { type: "ask", id: this._nextId(), question };
    for (const [key, value] of Object.entries({ camera, since, until, event })) {
      if (value !== undefined && value !== null) message[key] = value;
    }
    this._send(message);
  }

  /** Send the question of the form. */
  submit() {
    this._say("");
    const question = this.e.question.value.trim();
    if (!question) {
      this._say("Type a question first.");
      this.e.question.focus();
      return;
    }
    const message = { type: "ask", id: this._nextId(), question };
    const camera = this.e.camera.value;
    if (camera) message.camera = camera;
    let range;
    try {
      range = this._range();
    } catch (error) {
      this._say(error.message);
      return;
    }
    if (range.since) message.since = range.since;
    if (range.until) message.until = range.until;
    if (this._send(message)) this.e.question.value = "";
  }

  cancel(id) {
    if (this.entries.has(id)) this.connection.send({ type: "cancel", id });
  }

  cancelNewest() {
    const ids = [...this.entries.keys()];
    if (ids.length) this.cancel(ids[ids.length - 1]);
  }

  // --- internals --------------------------------------------------------------------------

  _send(message) {
    if (!this.connection.send(message)) {
      this._say("Not connected to the daemon; ask again once it is back.");
      return false;
    }
    const entry = new Entry(message, this.images, {
      onCancel: (id) => this.cancel(id),
      onView: this.e.onView,
    });
    this.entries.set(message.id, entry);
    this.order.push(entry);
    this.e.history.prepend(entry.node);
    this.e.empty.hidden = true;
    this._sync();
    return true;
  }

  _range() {
    const kind = this.e.form.elements.range.value;
    if (kind === "last") {
      const minutes = Number(this.e.minutes.value);
      if (!Number.isFinite(minutes) || minutes <= 0) {
        throw new Error("Give the number of minutes as a positive number.");
      }
      return { since: `${Math.round(minutes * 60)}s` };
    }
    if (kind === "between") {
      const from = this.e.from.value ? new Date(this.e.from.value) : null;
      const to = this.e.to.value ? new Date(this.e.to.value) : null;
      if (from === null && to === null) throw new Error("Give at least one of the two times.");
      if (from !== null && to !== null && from > to) {
        throw new Error("The first time lies after the second.");
      }
      return { since: from?.toISOString(), until: to?.toISOString() };
    }
    return {};
  }

  _nextId() {
    this._counter += 1;
    return `${this._session}-${this._counter}`;
  }

  _entry(id) {
    return typeof id === "string" ? this.entries.get(id) : undefined;
  }

  _finish(id, how) {
    const entry = this._entry(id);
    if (entry === undefined) return;
    how(entry);
    this.entries.delete(id);
    if (entry.evidence.length) this.onEvidence(entry.evidence);
    if (entry.timings) this.onTimings(entry.timings);
    this._sync();
    this._save();
  }

  _sync() {
    this.e.cancel.disabled = this.entries.size === 0;
  }

  _say(text) {
    this.e.error.textContent = text;
  }

  _save() {
    const done = this.order.filter((e) => !this.entries.has(e.message.id)).slice(-HISTORY_MAX);
    try {
      sessionStorage.setItem(HISTORY_KEY, JSON.stringify(done.map((e) => e.record())));
    } catch {
      // A full or disabled storage only costs the history across reloads.
    }
  }

  _restore() {
    let records = [];
    try {
      records = JSON.parse(sessionStorage.getItem(HISTORY_KEY) ?? "[]");
    } catch {
      records = [];
    }
    if (!Array.isArray(records)) return;
    for (const record of records) {
      const entry = Entry.fromRecord(record, this.images, { onView: this.e.onView });
      if (entry === null) continue;
      this.order.push(entry);
      this.e.history.prepend(entry.node);
      this.e.empty.hidden = true;
    }
  }
}

/** One question and its answer, as shown in the history. */
class Entry {
  constructor(message, images, { onCancel, onView }) {
    this.message = message;
    this.images = images;
    this.onView = onView;
    this.text = "";
    this.deltas = 0;
    this.evidence = [];
    this.timings = null;
    this.outcome = "streaming";
    this.askedAt = Date.now();
    this.answerNode = el("div", {
      class: "answer-text",
      "aria-live": "polite",
      "aria-busy": "true",
      "data-deltas": "0",
    });
    this.statusNode = el("p", { class: "outcome muted", text: "Waiting for the daemon…" });
    this.evidenceNode = el("ul", { class: "evidence", "aria-label": "Evidence moments" });
    this.cancelButton = onCancel
      ? el("button", {
          type: "button",
          class: "quiet",
          text: "Cancel",
          onclick: () => onCancel(message.id),
        })
      : null;
    this.node = el(
      "li",
      { class: "entry", "data-id": message.id, "data-outcome": "streaming" },
      el("p", { class: "question" }, el("strong", { text: "Q: " }), message.question),
      el("p", { class: "meta muted", text: describe(message, this.askedAt) }),
      this.answerNode,
      this.statusNode,
      this.evidenceNode,
      this.cancelButton,
    );
  }

  ack(message) {
    this.statusNode.textContent = "Answering…";
    const meta = this.node.querySelector(".meta");
    meta.textContent = describe(
      { ...this.message, since: message.since, until: message.until },
      this.askedAt,
    );
  }

  delta(message) {
    this.text += message.text;
    this.deltas += 1;
    this.answerNode.textContent = this.text;
    this.answerNode.dataset.deltas = String(this.deltas);
  }

  answer(message) {
    this.text = message.text;
    this.answerNode.textContent = message.text || "(no text)";
    this.timings = message.timings;
    this.evidence = message.evidence ?? [];
    const t = message.timings ?? {};
    const words = [];
    if (message.finish_reason === "cancelled") words.push("Cancelled");
    else if (message.finish_reason === "length") words.push("Stopped at the length limit");
    else words.push("Answered");
    if (t.total_ms != null) words.push(`in ${duration(t.total_ms / 1000)}`);
    if (t.ttft_ms != null) words.push(`(first token after ${Math.round(t.ttft_ms)} ms)`);
    this._end(message.finish_reason, words.join(" "));
    this._showEvidence();
  }

  error(message) {
    this._end("error", `The daemon refused or failed: ${message.message} (${message.code})`);
  }

  interrupted() {
    this._end("interrupted", "The connection went away before the answer ended.");
  }

  note(text) {
    this.statusNode.textContent = text;
  }

  record() {
    return {
      message: this.message,
      text: this.text,
      outcome: this.outcome,
      status: this.statusNode.textContent,
      evidence: this.evidence,
      askedAt: this.askedAt,
    };
  }

  static fromRecord(record, images, { onView }) {
    if (typeof record?.message?.id !== "string" || typeof record.text !== "string") return null;
    const entry = new Entry(record.message, images, { onCancel: null, onView });
    entry.askedAt = record.askedAt ?? Date.now();
    entry.node.querySelector(".meta").textContent = describe(record.message, entry.askedAt);
    entry.text = record.text;
    entry.answerNode.textContent = record.text;
    entry.evidence = Array.isArray(record.evidence) ? record.evidence : [];
    entry._end(String(record.outcome ?? "stop"), String(record.status ?? ""));
    entry._showEvidence();
    return entry;
  }

  _end(outcome, status) {
    this.outcome = outcome;
    this.node.dataset.outcome = outcome;
    this.answerNode.setAttribute("aria-busy", "false");
    this.statusNode.textContent = status;
    this.cancelButton?.remove();
  }

  _showEvidence() {
    const items = [];
    for (const moment of this.evidence) {
      const middle = (Date.parse(moment.start_time) + Date.parse(moment.end_time)) / 2;
      const label = `${moment.camera} at ${clock(middle)}, score ${moment.score.toFixed(2)}`;
      const caption = el("span", {
        class: "muted",
        text: `${moment.camera} · ${clock(middle)} · ${moment.score.toFixed(2)}`,
      });
      if (!moment.frame_url) {
        items.push(el("li", {}, caption));
        continue;
      }
      const img = el("img", { alt: `Evidence frame: ${label}`, width: 112, height: 84 });
      const button = el(
        "button",
        {
          type: "button",
          class: "thumb",
          "aria-label": `Show the frame large: ${label}`,
          onclick: () => this.onView(img, label),
        },
        img,
      );
      items.push(el("li", {}, button, caption));
      this.images.load(img, moment.frame_url).catch(() => {
        button.replaceWith(el("span", { class: "gone", text: "frame no longer kept" }));
      });
    }
    this.evidenceNode.replaceChildren(...items.slice(0, EVIDENCE_SHOWN));
    this.evidenceNode.hidden = items.length === 0;
    this.moreNode?.remove();
    this.moreNode = null;
    if (items.length > EVIDENCE_SHOWN) {
      const rest = el("ul", { class: "evidence", "aria-label": "More evidence moments" });
      rest.append(...items.slice(EVIDENCE_SHOWN));
      this.moreNode = el(
        "details",
        { class: "more-evidence" },
        el("summary", { text: `${items.length - EVIDENCE_SHOWN} more moments` }),
        rest,
      );
      this.evidenceNode.after(this.moreNode);
    }
  }
}

function describe(message, askedAt) {
  const parts = [message.camera ? `camera ${message.camera}` : "all cameras"];
  if (message.since && message.until) {
    parts.push(`${timeOrDuration(message.since)} to ${timeOrDuration(message.until)}`);
  } else if (message.since) {
    parts.push(`since ${timeOrDuration(message.since)}`);
  } else if (message.until) {
    parts.push(`until ${timeOrDuration(message.until)}`);
  } else {
    parts.push("any time");
  }
  if (message.event) parts.push("about an alert event");
  parts.push(`asked at ${clock(askedAt)}`);
  return parts.join(" · ");
}

function timeOrDuration(text) {
  const match = /^(\d+)s$/.exec(text);
  if (match) return `${duration(Number(match[1]))} ago`;
  const time = Date.parse(text);
  return Number.isNaN(time) ? text : clock(time);
}
