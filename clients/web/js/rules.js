// The rules panel: the daemon's alert rules (from its config file and added at run time) with
// pause/resume, edit and remove, and a form to add or edit one with the same fields as the
// config file (docs/alerts.md). Everything the form sends is validated by the daemon alone:
// values go as typed (a number when the text is a plain number, else the text, so "2m" works
// for durations), and the daemon's per-field errors (rule_result.error.fields) are shown next
// to their fields.

import { duration, el, idPart } from "./format.js";

const FIELDS = [
  "name",
  "cameras",
  "condition",
  "check_interval_s",
  "min_duration_s",
  "cooldown_s",
  "active_hours",
  "threshold",
  "gates.motion",
  "gates.person",
  "paused",
];
const PLAIN_NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

export class RulesPanel {
  constructor({ connection, elements, onRules }) {
    this.connection = connection;
    this.e = elements;
    this.onRules = onRules;
    this.rules = [];
    this.items = new Map(); // name -> {node, ...}
    this.pending = new Map(); // request id -> {what, name}
    this._counter = 0;
    this._editing = null; // the name of the rule being edited, or null (adding)
    this._cameras = [];
    this._shownCount = null;

    this.e.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.e.cancelEdit.addEventListener("click", () => this._stopEditing(true));
    for (const radio of this.e.form.elements.cameras_mode) {
      radio.addEventListener("change", () => this._syncCameraBoxes());
    }
    connection.on("state", (detail) => {
      if (detail.state === "ready") this.refresh();
    });
    connection.on("rule_result", (m) => this._onResult(m));
    // A rule changed anywhere (another page, MQTT): pushed on the events panel's subscription.
    // Reload the list once per burst of changes.
    this._reloadTimer = null;
    connection.on("rule_changed", () => {
      if (this._reloadTimer !== null) return;
      this._reloadTimer = setTimeout(() => {
        this._reloadTimer = null;
        this.refresh();
      }, 200);
    });
    connection.on("error", (m) => {
      if (m.request_type === "rule" && this.pending.has(m.id)) {
        const job = this.pending.get(m.id);
        this.pending.delete(m.id);
        const text = `The daemon refused: ${m.message} (${m.code})`;
        if (job.what === "form") this._formError(text);
        else this._say(text);
      }
    });
  }

  /** Camera names for the form's camera choice (from hello/status). */
  setCameras(cameras) {
    const names = cameras.map((c) => c.name);
    if (names.join("\n") === this._cameras.join("\n")) return;
    const checked = new Set(this._checkedCameras());
    this._cameras = names;
    this.e.cameraBoxes.replaceChildren(
      ...names.map((name) => {
        const id = `rule-camera-${idPart(name)}`;
        return el(
          "div",
          { class: "check" },
          el("input", {
            type: "checkbox",
            id,
            name: "camera",
            value: name,
            checked: checked.has(name),
            "aria-describedby": "rule-cameras-error",
          }),
          el("label", { for: id, text: name }),
        );
      }),
    );
    this._syncCameraBoxes();
  }

  /** The daemon's alert status (from ``status``): reload the list when its rule count moved
   * (a change made while the page was not subscribed, e.g. during a reconnection). */
  onStatus(alerts) {
    if (!alerts || typeof alerts.rules !== "number") return;
    if (this._shownCount !== null && alerts.rules !== this._shownCount) this.refresh();
  }

  refresh() {
    this._command({ op: "list" }, { what: "list" });
  }

  submit() {
    this._clearErrors();
    this.e.formStatus.textContent = "";
    const rule = this._readForm();
    if (this._editing === null) {
      this._command({ op: "add", rule }, { what: "form", name: rule.name });
    } else {
      const { name, paused, ...changes } = rule;
      this._command(
        { op: "update", name: this._editing, changes },
        { what: "form", name: this._editing },
      );
    }
  }

  // --- the list ---------------------------------------------------------------------------

  _render(rules) {
    this.rules = rules;
    this._shownCount = rules.length;
    const names = new Set(rules.map((r) => r.name));
    for (const [name, item] of this.items) {
      if (!names.has(name)) {
        item.node.remove();
        this.items.delete(name);
      }
    }
    let previous = null;
    for (const rule of rules) {
      let item = this.items.get(rule.name);
      if (item === undefined) {
        item = this._item(rule.name);
        this.items.set(rule.name, item);
      }
      // Keep the list in the daemon's order (config rules first), moving nodes only when needed
      // so that a focused button keeps its focus.
      const expected = previous === null ? this.e.list.firstElementChild : previous.nextElementSibling;
      if (expected !== item.node) this.e.list.insertBefore(item.node, expected);
      this._fill(item, rule);
      previous = item.node;
    }
    this.e.empty.hidden = rules.length > 0;
    this.onRules(rules);
  }

  _item(name) {
    const id = `rule-${idPart(name)}`;
    const state = el("span", { class: "state" });
    const source = el("span", { class: "source muted" });
    const facts = el("dl", { class: "facts" });
    const pause = el("button", {
      type: "button",
      class: "quiet",
      "data-action": "pause",
      "aria-describedby": `${id}-name`,
      onclick: () => {
        const rule = this._rule(name);
        if (rule === undefined) return;
        const op = rule.paused ? "resume" : "pause";
        this._command({ op, name }, { what: op, name });
      },
    });
    const edit = el("button", {
      type: "button",
      class: "quiet",
      text: "Edit",
      "data-action": "edit",
      "aria-describedby": `${id}-name`,
      onclick: () => this._startEditing(name),
    });
    const remove = el("button", {
      type: "button",
      class: "quiet danger",
      text: "Remove",
      "data-action": "remove",
      "aria-describedby": `${id}-name`,
      onclick: () => this._confirmRemove(name),
    });
    const confirm = el(
      "div",
      { class: "confirm", role: "group", "aria-label": `Remove the rule ${name}?`, hidden: true },
      el("span", { text: `Remove the rule ${name}?` }),
      el("button", {
        type: "button",
        class: "danger-solid",
        text: "Remove it",
        "data-action": "confirm-remove",
        onclick: () => this._command({ op: "remove", name }, { what: "remove", name }),
      }),
      el("button", {
        type: "button",
        class: "quiet",
        text: "Keep it",
        "data-action": "keep",
        onclick: () => this._cancelRemove(name),
      }),
    );
    const node = el(
      "li",
      { class: "rule", id, "data-rule": name, "aria-labelledby": `${id}-name` },
      el("header", {}, el("h3", { id: `${id}-name`, text: name }), state, source),
      facts,
      el("div", { class: "actions" }, pause, edit, remove),
      confirm,
    );
    return { node, state, source, facts, pause, edit, remove, confirm };
  }

  _fill(item, rule) {
    item.node.dataset.paused = rule.paused ? "true" : "false";
    item.node.dataset.source = rule.source;
    item.state.textContent = rule.paused ? "paused" : "active";
    item.state.className = `state ${rule.paused ? "state-paused" : "state-online"}`;
    item.source.textContent = rule.source === "config" ? "from the config file" : "added at run time";
    item.pause.textContent = rule.paused ? "Resume" : "Pause";
    const runtime = rule.source === "runtime";
    item.edit.hidden = !runtime;
    item.remove.hidden = !runtime;
    const gates = rule.gates ?? {};
    const rows = [
      ["Cameras", rule.cameras === "all" ? "all cameras" : rule.cameras.join(", ")],
      ["Condition", rule.condition],
      [
        "Timing",
        `checked every ${duration(rule.check_interval_s)}, holds ${duration(rule.min_duration_s)}` +
          `, cooldown ${duration(rule.cooldown_s)}`,
      ],
      ["Active hours", rule.active_hours ? rule.active_hours.join(", ") : "always"],
      ["Threshold", String(rule.threshold)],
      [
        "Gates",
        `motion ${gates.motion == null ? "off" : `at least ${gates.motion}`}, person detector ` +
          `${gates.person ? "on" : "off"}`,
      ],
    ];
    item.facts.replaceChildren(
      ...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]),
    );
  }

  _rule(name) {
    return this.rules.find((r) => r.name === name);
  }

  _confirmRemove(name) {
    const item = this.items.get(name);
    item.confirm.hidden = false;
    item.confirm.querySelector("[data-action=keep]").focus();
  }

  _cancelRemove(name) {
    const item = this.items.get(name);
    item.confirm.hidden = true;
    item.remove.focus();
  }

  // --- the form ---------------------------------------------------------------------------

  _startEditing(name) {
    const rule = this._rule(name);
    if (rule === undefined) return;
    this._clearErrors();
    this._editing = name;
    const f = this.e.form.elements;
    f.name.value = rule.name;
    f.name.readOnly = true;
    f.condition.value = rule.condition;
    f.check_interval_s.value = String(rule.check_interval_s);
    f.min_duration_s.value = String(rule.min_duration_s);
    f.cooldown_s.value = String(rule.cooldown_s);
    f.active_hours.value = rule.active_hours ? rule.active_hours.join(", ") : "";
    f.threshold.value = String(rule.threshold);
    f.motion.value = rule.gates?.motion == null ? "" : String(rule.gates.motion);
    f.person.checked = Boolean(rule.gates?.person);
    f.cameras_mode.value = rule.cameras === "all" ? "all" : "some";
    for (const box of this.e.cameraBoxes.querySelectorAll("input")) {
      box.checked = rule.cameras !== "all" && rule.cameras.includes(box.value);
    }
    this._syncCameraBoxes();
    this.e.pausedField.hidden = true;
    this.e.formTitle.textContent = `Edit the rule ${name}`;
    this.e.submit.textContent = "Save the changes";
    this.e.cancelEdit.hidden = false;
    f.condition.focus();
  }

  _stopEditing(focusList) {
    const name = this._editing;
    this._editing = null;
    this.e.form.reset();
    this.e.form.elements.name.readOnly = false;
    this.e.pausedField.hidden = false;
    this.e.formTitle.textContent = "Add a rule";
    this.e.submit.textContent = "Add the rule";
    this.e.cancelEdit.hidden = true;
    this._syncCameraBoxes();
    this._clearErrors();
    if (focusList && name !== null) this.items.get(name)?.edit.focus();
  }

  _readForm() {
    const f = this.e.form.elements;
    const rule = { name: f.name.value.trim(), condition: f.condition.value };
    rule.cameras = f.cameras_mode.value === "all" ? "all" : this._checkedCameras();
    for (const key of ["check_interval_s", "min_duration_s", "cooldown_s", "threshold"]) {
      const text = f[key].value.trim();
      if (text !== "") rule[key] = asNumber(text);
    }
    const hours = f.active_hours.value
      .split(/[\s,;]+/)
      .map((s) => s.trim())
      .filter(Boolean);
    rule.active_hours = hours.length ? hours : null;
    const motion = f.motion.value.trim();
    rule.gates = { motion: motion === "" ? null : asNumber(motion), person: f.person.checked };
    rule.paused = f.paused.checked;
    return rule;
  }

  _checkedCameras() {
    return [...this.e.cameraBoxes.querySelectorAll("input:checked")].map((b) => b.value);
  }

  _syncCameraBoxes() {
    const some = this.e.form.elements.cameras_mode.value === "some";
    this.e.cameraBoxes.hidden = !some;
    for (const box of this.e.cameraBoxes.querySelectorAll("input")) box.disabled = !some;
  }

  _clearErrors() {
    for (const field of FIELDS) {
      const error = document.getElementById(errorId(field));
      if (error) error.textContent = "";
      const input = document.getElementById(inputId(field));
      input?.removeAttribute("aria-invalid");
    }
    this.e.formError.textContent = "";
  }

  _formError(text, fields = []) {
    let first = null;
    const general = [];
    for (const { field, message } of fields) {
      const error = document.getElementById(errorId(field));
      if (error === null) {
        general.push(`${field}: ${message}`);
        continue;
      }
      error.textContent = error.textContent ? `${error.textContent} ${message}` : message;
      const input = document.getElementById(inputId(field));
      if (input !== null) {
        input.setAttribute("aria-invalid", "true");
        first ??= input;
      }
    }
    const shown = fields.length - general.length;
    this.e.formError.textContent = shown
      ? `The daemon did not accept the rule: ${shown === 1 ? "one field needs" : `${shown} fields need`} a change.` +
        (general.length ? ` ${general.join("; ")}` : "")
      : text;
    (first ?? this.e.form.elements.name).focus();
  }

  // --- talking to the daemon --------------------------------------------------------------

  _command(command, job) {
    this._counter += 1;
    const id = `page-rule-${this._counter}`;
    if (!this.connection.send({ type: "rule", id, command })) {
      const text = "Not connected to the daemon; try again once it is back.";
      if (job.what === "form") this._formError(text);
      else if (job.what !== "list") this._say(text);
      return;
    }
    this.pending.set(id, job);
  }

  _onResult(m) {
    const job = this.pending.get(m.id);
    if (job === undefined) return;
    this.pending.delete(m.id);
    if (!m.ok) {
      const error = m.error ?? {};
      const text = `The daemon refused: ${error.message ?? "unknown error"} (${error.code ?? "?"})`;
      if (job.what === "form") this._formError(text, error.fields ?? []);
      else this._say(text);
      return;
    }
    switch (job.what) {
      case "list":
        this._render(m.rules ?? []);
        return;
      case "form":
        this.e.formStatus.textContent =
          this._editing === null ? `Rule ${m.rule.name} added.` : `Rule ${m.rule.name} saved.`;
        if (this._editing !== null) this._stopEditing(true);
        else {
          this.e.form.reset();
          this._syncCameraBoxes();
        }
        break;
      case "pause":
        this._say(`Rule ${job.name} paused.`);
        break;
      case "resume":
        this._say(`Rule ${job.name} resumed.`);
        break;
      case "remove": {
        this._say(`Rule ${job.name} removed.`);
        if (this._editing === job.name) this._stopEditing(false);
        const item = this.items.get(job.name);
        const next = item?.node.nextElementSibling ?? item?.node.previousElementSibling;
        item?.node.remove();
        this.items.delete(job.name);
        (next?.querySelector("[data-action=pause]") ?? this.e.heading).focus();
        break;
      }
    }
    this.refresh();
  }

  _say(text) {
    this.e.status.textContent = text;
  }
}

function asNumber(text) {
  return PLAIN_NUMBER.test(text) ? Number(text) : text;
}

function inputId(field) {
  return {
    cameras: "rule-cameras-some",
    "gates.motion": "rule-motion",
    "gates.person": "rule-person",
  }[field] ?? `rule-${field.replace(/[._]/g, "-")}`;
}

function errorId(field) {
  return `rule-${field.replace(/[._]/g, "-")}-error`;
}
