// The cameras panel: one card per camera with its refreshing preview, its state (and why), how
// far behind live the model is, and a timeline of what the memory covers, from its oldest moment
// to now, with the moments answers were built from marked on it (events join them in the next
// phase through addMark). Clicking the timeline, or a mark, asks about that moment.

import { clock, duration, el, idPart } from "./format.js";

const PREVIEW_EVERY_MS = 1500;
const MAX_MARKS = 200;
const ASK_AROUND_S = 30;

export class CamerasPanel {
  constructor({ root, empty, images, onAskAbout, onPickCamera }) {
    this.root = root;
    this.empty = empty;
    this.images = images;
    this.onAskAbout = onAskAbout;
    this.onPickCamera = onPickCamera;
    this.cards = new Map();
    this.marks = new Map(); // camera -> [{time, label, kind}]
    this._timer = null;
    this._live = false;
  }

  /** Cameras from ``hello`` or ``status``: add new cards, update the others. */
  update(cameras) {
    const names = new Set(cameras.map((c) => c.name));
    for (const [name, card] of this.cards) {
      if (!names.has(name)) {
        card.node.remove();
        this.cards.delete(name);
      }
    }
    for (const camera of cameras) {
      let card = this.cards.get(camera.name);
      if (card === undefined) {
        card = this._card(camera.name);
        this.cards.set(camera.name, card);
        this.root.append(card.node);
      }
      this._fill(card, camera);
    }
    this.empty.hidden = this.cards.size > 0;
  }

  /** Previews refresh while the connection is up (and the page is visible). */
  setLive(live) {
    this._live = live;
    for (const card of this.cards.values()) card.node.classList.toggle("disconnected", !live);
    if (live && this._timer === null) {
      this._refresh();
      this._timer = setInterval(() => this._refresh(), PREVIEW_EVERY_MS);
    } else if (!live && this._timer !== null) {
      clearInterval(this._timer);
      this._timer = null;
    }
  }

  /** Mark a moment on a camera's timeline (``kind``: "evidence" now, "event" later). */
  addMark(camera, time, label, kind = "evidence") {
    const list = this.marks.get(camera) ?? [];
    if (list.some((m) => Math.abs(m.time - time) < 500 && m.kind === kind)) return;
    list.push({ time, label, kind });
    if (list.length > MAX_MARKS) list.shift();
    this.marks.set(camera, list);
    const card = this.cards.get(camera);
    if (card !== undefined && card.camera !== undefined) this._drawTimeline(card);
  }

  // --- building ---------------------------------------------------------------------------

  _card(name) {
    const id = `camera-${idPart(name)}`;
    const state = el("span", { class: "state", id: `${id}-state` });
    const reason = el("span", { class: "reason" });
    const img = el("img", { alt: `Newest frame of camera ${name}`, hidden: true, width: 320 });
    const waiting = el("p", { class: "preview-wait", text: "No frame yet" });
    const caption = el("figcaption", { class: "muted" });
    const lag = el("dd", { text: "–" });
    const covers = el("dd", { text: "–" });
    const dropped = el("dd", { text: "0" });
    // The track is a slider too: arrows move a cursor along the memory, Enter asks about it.
    const track = el("div", {
      class: "track",
      role: "slider",
      tabindex: 0,
      "aria-label": `Moment of camera ${name} to ask about (arrows move, Enter asks)`,
      "aria-valuemin": 0,
      "aria-valuemax": 0,
      "aria-valuenow": 0,
      "aria-valuetext": "no memory yet",
    });
    const covered = el("div", { class: "covered" });
    const cursor = el("div", { class: "cursor", "aria-hidden": "true" });
    const marks = el("div", { class: "marks" });
    track.append(covered, cursor);
    const from = el("span", {});
    const to = el("span", { text: "now" });
    const timeline = el(
      "div",
      { class: "timeline", role: "group", "aria-label": `Timeline of the memory of camera ${name}` },
      track,
      marks,
      el("div", { class: "axis muted", "aria-hidden": "true" }, from, to),
    );
    track.addEventListener("click", (event) => {
      const card = this.cards.get(name);
      if (card?.window === undefined) return;
      const box = track.getBoundingClientRect();
      const share = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
      const [start, end] = card.window;
      this._askAbout(name, start + share * (end - start));
    });
    track.addEventListener("keydown", (event) => this._onTrackKey(name, event));
    const node = el(
      "article",
      { class: "camera", "data-camera": name, "aria-labelledby": `${id}-name` },
      el("header", {}, el("h3", { id: `${id}-name`, text: name }), state),
      reason,
      el("figure", { class: "preview" }, img, waiting, caption),
      el(
        "dl",
        { class: "facts" },
        el("dt", { text: "Behind live" }),
        lag,
        el("dt", { text: "Memory covers" }),
        covers,
        el("dt", { text: "Frames dropped" }),
        dropped,
      ),
      timeline,
      el("button", {
        type: "button",
        class: "quiet",
        text: `Ask about ${name}`,
        onclick: () => this.onPickCamera(name),
      }),
    );
    return {
      name,
      node,
      state,
      reason,
      img,
      waiting,
      caption,
      lag,
      covers,
      dropped,
      track,
      covered,
      cursor,
      marks,
      markButtons: new Map(),
      from,
      at: undefined, // the slider's moment (ms), undefined: at the live end
      loading: false,
      camera: undefined,
      window: undefined,
    };
  }

  _fill(card, camera) {
    const previous = card.camera;
    // hello carries no memory figures: keep the last status's ones until the next status.
    if (previous !== undefined && camera.memory?.blocks == null && previous.memory?.blocks != null) {
      camera = { ...camera, memory: previous.memory, lag_s: previous.lag_s };
    }
    card.camera = camera;
    card.node.dataset.state = camera.state;
    card.node.dataset.blocks = String(camera.memory?.blocks ?? 0);
    card.state.textContent = camera.state;
    card.state.className = `state state-${camera.state}`;
    card.reason.textContent = camera.reason || "";
    card.reason.hidden = !camera.reason;
    card.lag.textContent = camera.lag_s == null ? "–" : duration(camera.lag_s);
    card.dropped.textContent = String(camera.frames_dropped ?? 0);
    const memory = camera.memory ?? {};
    if (memory.start_time && memory.end_time) {
      const start = Date.parse(memory.start_time);
      const end = Date.parse(memory.end_time);
      card.covers.textContent = `${clock(start)} – ${clock(end)} (${duration((end - start) / 1000)}, ${memory.blocks} blocks)`;
    } else {
      card.covers.textContent = memory.blocks ? `${memory.blocks} blocks` : "nothing yet";
    }
    this._drawTimeline(card);
  }

  _drawTimeline(card) {
    const memory = card.camera?.memory ?? {};
    const now = Date.now();
    if (!memory.start_time) {
      card.window = undefined;
      card.covered.style.width = "0";
      card.from.textContent = "no memory yet";
      card.track.setAttribute("aria-valuetext", "no memory yet");
      card.marks.replaceChildren();
      card.markButtons.clear();
      return;
    }
    const start = Date.parse(memory.start_time);
    const end = Math.min(now, Date.parse(memory.end_time ?? memory.start_time));
    const span = Math.max(1000, now - start);
    card.window = [start, now];
    const at = Math.min(now, Math.max(start, card.at ?? now));
    card.track.setAttribute("aria-valuemin", String(Math.floor(start / 1000)));
    card.track.setAttribute("aria-valuemax", String(Math.ceil(now / 1000)));
    card.track.setAttribute("aria-valuenow", String(Math.round(at / 1000)));
    card.track.setAttribute("aria-valuetext", clock(at));
    card.cursor.style.left = `${(((at - start) / span) * 100).toFixed(2)}%`;
    card.from.textContent = clock(start);
    card.covered.style.left = "0";
    card.covered.style.width = `${Math.max(0.5, ((end - start) / span) * 100)}%`;
    // Buttons are kept across redraws (every status), so that a focused mark keeps the focus.
    const shown = new Set();
    for (const mark of this.marks.get(card.name) ?? []) {
      if (mark.time < start || mark.time > now) continue;
      const key = `${mark.kind}:${mark.time}`;
      shown.add(key);
      let button = card.markButtons.get(key);
      if (button === undefined) {
        button = el("button", {
          type: "button",
          class: `mark mark-${mark.kind}`,
          "aria-label": `${mark.label} at ${clock(mark.time)}: ask about this moment`,
          title: `${mark.label} at ${clock(mark.time)}`,
          onclick: () => this._askAbout(card.name, mark.time),
        });
        button.dataset.time = String(mark.time);
        card.markButtons.set(key, button);
        // In time order, so that Tab walks the timeline from old to new.
        const later = [...card.marks.children].find((b) => Number(b.dataset.time) > mark.time);
        card.marks.insertBefore(button, later ?? null);
      }
      button.style.left = `${(((mark.time - start) / span) * 100).toFixed(2)}%`;
    }
    for (const [key, button] of card.markButtons) {
      if (!shown.has(key)) {
        button.remove();
        card.markButtons.delete(key);
      }
    }
  }

  _onTrackKey(name, event) {
    const card = this.cards.get(name);
    if (card?.window === undefined) return;
    const [start, end] = card.window;
    const step = Math.max(1000, (end - start) / 50);
    const at = card.at ?? end;
    const moves = {
      ArrowLeft: at - step,
      ArrowDown: at - step,
      ArrowRight: at + step,
      ArrowUp: at + step,
      PageDown: at - step * 10,
      PageUp: at + step * 10,
      Home: start,
      End: end,
    };
    if (event.key in moves) {
      event.preventDefault();
      const next = Math.min(end, Math.max(start, moves[event.key]));
      card.at = next >= end ? undefined : next; // at the end, the cursor follows live
      this._drawTimeline(card);
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      this._askAbout(name, at);
    }
  }

  _askAbout(camera, time) {
    const since = new Date(time - ASK_AROUND_S * 1000);
    const until = new Date(time + ASK_AROUND_S * 1000);
    this.onAskAbout({
      camera,
      question: `What happened around ${clock(time)}?`,
      since: since.toISOString(),
      until: until.toISOString(),
    });
  }

  async _refresh() {
    if (!this._live || document.visibilityState === "hidden") return;
    for (const card of this.cards.values()) {
      if (card.loading || !card.camera?.last_frame_time) continue;
      card.loading = true;
      const url = `/cameras/${encodeURIComponent(card.name)}/snapshot.jpg`;
      this.images
        .load(card.img, url)
        .then((headers) => {
          card.img.hidden = false;
          card.waiting.hidden = true;
          const time = headers.get("X-Frame-Time");
          card.caption.textContent = time ? `Frame of ${clock(Date.parse(time))}` : "";
        })
        .catch(() => {
          // The camera has no frame right now (or the connection just went): keep the last one.
        })
        .finally(() => {
          card.loading = false;
        });
    }
  }
}
