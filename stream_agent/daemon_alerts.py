"""The daemon's alerts: the alert service built from the config, run beside the engine.

:class:`DaemonAlerts` builds the service with :func:`stream_agent.alerts.build.build_alerts`
(rule store, event history, snapshot store, MQTT link and outbox in the memory's store folder
unless the config says otherwise), feeds it the cacher's per-frame changed-token share (the
motion gate), counts its lifecycle steps and mirrors its counters into the daemon's metrics,
and runs it as one task on the event loop. The MQTT link never blocks anything else: publishing
only queues (the outbox on disk), and a broker that is down, refuses us or is misconfigured only
changes the link's state.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from stream_agent.alerts.build import Alerts, build_alerts
from stream_agent.alerts.errors import StoreError
from stream_agent.alerts.service import AlertEngine, AlertService, CameraBoardLike
from stream_agent.alerts.snapshots import FileSnapshotStore, SnapshotStore
from stream_agent.alerts.state import Lifecycle
from stream_agent.config import DaemonConfig, Secrets
from stream_agent.metrics import DaemonMetrics

log = logging.getLogger(__name__)

STOP_WAIT_S = 10.0
EVENT_FRAMES_FOLDER = "events"
"""Event snapshots' folder inside the memory's frame store (whose own folders are hex-named
streams, so it never takes this one for a stream, nor prunes it with the blocks)."""
MQTT_STATES = ("connecting", "online", "offline", "refused", "stopped", "disabled")


class DaemonAlerts:
    """The alert service and its lifecycle inside the daemon."""

    def __init__(
        self,
        config: DaemonConfig,
        secrets: Secrets,
        *,
        board: CameraBoardLike,
        engine: AlertEngine,
        metrics: DaemonMetrics,
        snapshots: SnapshotStore | None = None,
        frames_root: Path | None = None,
        sw_version: str = "dev",
    ) -> None:
        """``frames_root``: the memory's on-disk frame store (answers' evidence frames); event
        snapshots go into its ``events`` folder, beside them. ``snapshots`` overrides it."""
        data_dir = Path(config.alerts_data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the memory's folder: say it as the memory would
            raise StoreError(
                f"cannot create the memory folder {data_dir}: {exc.strerror}; choose "
                "another memory.store_dir (--store-dir)"
            ) from exc
        if snapshots is None and frames_root is not None:
            snapshots = FileSnapshotStore(frames_root / EVENT_FRAMES_FOLDER)
        self.parts: Alerts = build_alerts(
            config.alerts_config,
            board=board,
            engine=engine,
            data_dir=data_dir,
            mqtt_secrets=secrets.mqtt,
            snapshots=snapshots,
            retention_s=config.memory.retention_s,
            sw_version=sw_version,
        )
        self._metrics = metrics
        self.service.subscribe(self._count)
        metrics.registry.add_collector(self._refresh_metrics)
        self._task: asyncio.Task[None] | None = None

    @property
    def service(self) -> AlertService:
        return self.parts.service

    def note_frame(self, camera: str, wall_time: float, changed_share: float | None) -> None:
        """The engine thread encoded a frame (the cacher's share of changed tokens)."""
        self.service.note_frame(camera, wall_time, changed_share)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alerts")

    async def _run(self) -> None:
        try:
            await self.service.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # the alerts failing must not take the daemon down
            log.exception("the alert service failed; alerts are off until a restart")

    async def stop(self) -> None:
        """End open events (``shutdown``), flush the outbox briefly, publish ``offline``."""
        task, self._task = self._task, None
        if task is not None:
            await self.service.stop()
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await task
            except TimeoutError:
                log.warning("the alert service did not stop in %.0f s; cancelled", STOP_WAIT_S)
                task.cancel()
        self.parts.close()
        log.info("alerts stopped")

    # --- metrics ---------------------------------------------------------------------------

    def _count(self, lc: Lifecycle) -> None:
        self._metrics.alert_events.inc(rule=lc.after.rule, type=lc.type)

    def _refresh_metrics(self) -> None:
        m = self._metrics
        status = self.service.status()
        gates = self.service.counters.snapshot()
        m.alert_rule_checks.clear()
        m.alert_gate_stops.clear()
        for rule, counts in gates.items():
            m.alert_rule_checks.mirror(counts.get("asked", 0), rule=rule)
            for gate, n in counts.items():
                if gate != "asked":
                    m.alert_gate_stops.mirror(n, rule=rule, gate=gate)
        rules, open_events = status["rules"], status["open_events"]
        m.alert_rules.set(float(rules) if isinstance(rules, int) else 0.0)
        m.alert_open_events.set(float(open_events) if isinstance(open_events, int) else 0.0)
        state, _ = self.service.mqtt_state()
        for name in MQTT_STATES:
            m.mqtt_state.set(1.0 if name == state else 0.0, state=name)
        link = self.parts.link
        if link is not None:
            s = link.status()
            m.mqtt_connects.mirror(s.connects)
            m.mqtt_outbox.set(s.outbox)
            m.mqtt_outbox_dropped.mirror(s.outbox_dropped)
            m.mqtt_transient_dropped.mirror(s.transient_dropped)
            m.mqtt_delivered.mirror(s.delivered)
