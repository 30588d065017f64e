"""Assembles the alerts subsystem from its config section (what the daemon calls)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stream_agent.alerts.config import AlertsConfig, MqttSecrets, resolve_mqtt_secrets
from stream_agent.alerts.discovery import DeviceInfo
from stream_agent.alerts.history import EventHistory
from stream_agent.alerts.mqtt import MqttLink
from stream_agent.alerts.outbox import Outbox
from stream_agent.alerts.rules import RuleStore
from stream_agent.alerts.service import AlertEngine, AlertService, CameraBoardLike
from stream_agent.alerts.snapshots import FileSnapshotStore, SnapshotStore

RULES_FILE = "alert-rules.json"
HISTORY_FILE = "events.sqlite"
OUTBOX_FILE = "mqtt-outbox.sqlite"
FRAMES_FOLDER = "event-frames"


@dataclass
class Alerts:
    """The assembled parts; ``close`` after ``service.run()`` returned."""

    service: AlertService
    store: RuleStore
    history: EventHistory
    link: MqttLink | None
    outbox: Outbox | None

    def close(self) -> None:
        self.history.close()
        if self.outbox is not None:
            self.outbox.close()


def build_alerts(
    config: AlertsConfig,
    *,
    board: CameraBoardLike,
    engine: AlertEngine,
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    mqtt_secrets: MqttSecrets | None = None,
    snapshots: SnapshotStore | None = None,
    retention_s: float | None = None,
    sw_version: str = "0.1.0",
) -> Alerts:
    """Files default to ``data_dir`` (the memory's store folder). ``snapshots`` None: a
    :class:`FileSnapshotStore` in ``data_dir/event-frames``. ``retention_s``: the memory's
    retention horizon, unless the config sets its own. MQTT secrets: ``mqtt_secrets`` when
    given (the daemon reads them at start-up), else read from ``environ``."""
    store = RuleStore(config.rules, config.rules_path or data_dir / RULES_FILE)
    snaps = snapshots if snapshots is not None else FileSnapshotStore(data_dir / FRAMES_FOLDER)
    history = EventHistory(config.history_path or data_dir / HISTORY_FILE, snaps)
    link = outbox = None
    token = None
    device = DeviceInfo(node_id="stream_agent", sw_version=sw_version)
    mqtt = config.mqtt
    if mqtt is not None:
        secrets = (
            mqtt_secrets
            if mqtt_secrets is not None
            else resolve_mqtt_secrets(mqtt, environ if environ is not None else {})
        )
        token = secrets.command_token
        outbox = Outbox(mqtt.outbox_path or data_dir / OUTBOX_FILE, mqtt.outbox_max_messages)
        link = MqttLink(mqtt, outbox, secrets=secrets)
        device = DeviceInfo(
            node_id=mqtt.effective_node_id, name=mqtt.device_name, sw_version=sw_version
        )
    service = AlertService(
        store=store,
        board=board,
        engine=engine,
        history=history,
        snapshots=snaps,
        link=link,
        device=device,
        discovery=mqtt is not None and mqtt.discovery,
        command_token=token,
        tick_s=config.tick_s,
        retention_s=config.history_retention_s
        if config.history_retention_s is not None
        else retention_s,
        history_max_bytes=int(config.history_max_bytes),
        stats_interval_s=mqtt.stats_interval_s if mqtt is not None else 60.0,
    )
    return Alerts(service, store, history, link, outbox)
