"""What the HTTP routes and the WebSocket sessions share: config, engine, cameras, metrics."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stream_agent.alerts.service import AlertService
from stream_agent.cameras import CameraBoard
from stream_agent.config import ServerConfig
from stream_agent.engine import Engine
from stream_agent.metrics import DaemonMetrics

if TYPE_CHECKING:  # the server only reads frames; it never pulls in the memory's stack
    from stream_agent.memory.frames import FrameStore


class ServerState:
    """The server's mutable lifecycle flags (one per server, shared by its sessions)."""

    def __init__(self) -> None:
        self.draining = False
        """Set on shutdown: questions are refused with ``busy``, answers in flight finish."""
        self._sessions = itertools.count(1)

    def next_session_number(self) -> int:
        """Numbers for connections, used in logs and engine request ids."""
        return next(self._sessions)


@dataclass(frozen=True)
class ServerContext:
    """Everything a request handler may read; passed explicitly, never global."""

    config: ServerConfig
    engine: Engine
    cameras: CameraBoard
    metrics: DaemonMetrics
    token: str | None = field(default=None, repr=False)
    model_name: str | None = None
    web_root: Path | None = None
    frames: FrameStore | None = None
    """The memory's evidence frames on disk (one per stored block; they survive restarts)."""
    version: str = "dev"
    state: ServerState = field(default_factory=ServerState)
    alerts: AlertService | None = None
    """The alert rules and events (None: this server serves none)."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): the model answers and at least one camera is online."""
        status = self.engine.snapshot()
        if not status.running:
            return False, "the engine is not running"
        if not status.worker.ready:
            return False, status.worker.reason or "the model is not loaded yet"
        views = self.cameras.views()
        if not views:
            return False, "no camera is configured"
        online = sum(1 for v in views if v.state == "online")
        if online == 0:
            return False, f"no camera is online (0 of {len(views)})"
        return True, f"{online} of {len(views)} cameras online"

    def alerts_status(self) -> dict[str, object] | None:
        """The ``alerts`` field of ``status``: MQTT state, rule and open event counts."""
        if self.alerts is None:
            return None
        state, reason = self.alerts.mqtt_state()
        status = self.alerts.status()
        return {
            "mqtt": {"state": state, "reason": reason},
            "rules": status["rules"],
            "open_events": status["open_events"],
        }

    def model(self) -> str | None:
        return self.engine.snapshot().worker.model or self.model_name
