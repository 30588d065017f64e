// The system panel: the daemon and its model, whether it is ready, its queues, each camera's
// memory (time span, blocks, RAM, disk), the compression in effect, how far behind live the
// model is, the answer latency this page has seen, and (when the daemon runs alerts) the MQTT
// connection's state and the alert rule and ongoing event counts from ``status.alerts``.

import { bytes, clock, duration, el, share } from "./format.js";

const MQTT_WORDS = {
  online: "connected",
  connecting: "connecting",
  offline: "disconnected",
  refused: "refused by the broker",
  stopped: "stopped",
  disabled: "not configured",
};

export class SystemPanel {
  constructor({ facts, table }) {
    this.facts = facts;
    this.body = table.tBodies[0];
    this.hello = null;
    this.status = null;
    this.latencies = []; // ttft_ms of this session's answers
    this.lastTotalMs = null;
    this.lastRate = null;
  }

  onHello(hello) {
    this.hello = hello;
    this._render();
  }

  onStatus(status) {
    this.status = status;
    this._render();
  }

  onTimings(timings) {
    if (timings.ttft_ms != null) this.latencies.push(timings.ttft_ms);
    this.lastTotalMs = timings.total_ms;
    this.lastRate = timings.tokens_per_s;
    this._render();
  }

  _render() {
    const hello = this.hello ?? {};
    const status = this.status ?? {};
    const rows = [
      ["Daemon", hello.server ?? "–"],
      ["Model", status.model ?? hello.model ?? "–"],
      [
        "Ready",
        status.ready === undefined ? "–" : `${status.ready ? "yes" : "no"}: ${status.reason}`,
      ],
      [
        "Engine queues",
        status.engine
          ? `${status.engine.queued_frames} frames, ${status.engine.queued_questions} questions`
          : "–",
      ],
      ["Answer latency", this._latency()],
    ];
    const alerts = status.alerts;
    if (alerts !== undefined && alerts !== null) {
      const mqtt = alerts.mqtt ?? {};
      const words = MQTT_WORDS[mqtt.state] ?? mqtt.state ?? "unknown";
      const reason = mqtt.reason && mqtt.state !== "online" ? ` (${mqtt.reason})` : "";
      rows.push(["MQTT", `${words}${reason}`, { "data-mqtt": mqtt.state ?? "" }]);
      rows.push([
        "Alerts",
        `${alerts.rules} rule${alerts.rules === 1 ? "" : "s"}, ${alerts.open_events} ongoing ` +
          `event${alerts.open_events === 1 ? "" : "s"}`,
      ]);
    }
    const placed = (status.cameras ?? []).filter((camera) => camera.placement);
    if (placed.length) {
      // engine.placement: ray: which engine owns each camera's memory
      rows.push([
        "Placement",
        placed.map((camera) => `${camera.name} on ${camera.placement.engine}`).join(", "),
      ]);
    }
    this.facts.replaceChildren(
      ...rows.flatMap(([term, value, extra]) => [
        el("dt", { text: term }),
        el("dd", { text: value, ...(extra ?? {}) }),
      ]),
    );
    const cameras = status.cameras ?? hello.cameras ?? [];
    this.body.replaceChildren(
      ...cameras.map((camera) => {
        const memory = camera.memory ?? {};
        const compression = camera.compression ?? {};
        let covers = "–";
        if (memory.start_time && memory.end_time) {
          const start = Date.parse(memory.start_time);
          const end = Date.parse(memory.end_time);
          covers = `${clock(start)} – ${clock(end)} (${duration((end - start) / 1000)})`;
        }
        return el(
          "tr",
          {},
          el("th", { scope: "row", text: camera.name }),
          el("td", { text: covers }),
          el("td", { text: memory.blocks == null ? "–" : String(memory.blocks) }),
          el("td", { text: bytes(memory.ram_bytes) }),
          el("td", { text: bytes(memory.disk_bytes) }),
          el("td", { text: share(compression.cacher_reuse_share) }),
          el("td", { text: share(compression.pruner_kept_share) }),
          el("td", { text: camera.lag_s == null ? "–" : duration(camera.lag_s) }),
        );
      }),
    );
  }

  _latency() {
    if (!this.latencies.length && this.lastTotalMs == null) return "no answers yet";
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const parts = [];
    if (sorted.length) {
      const median = sorted[Math.floor(sorted.length / 2)];
      parts.push(`first token after ${Math.round(median)} ms (median of ${sorted.length})`);
    }
    if (this.lastTotalMs != null) parts.push(`last answer ${duration(this.lastTotalMs / 1000)}`);
    if (this.lastRate != null) parts.push(`${this.lastRate.toFixed(1)} tokens/s`);
    return parts.join(", ");
  }
}
