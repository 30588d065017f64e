"""``placement: local``: today's one engine thread, in the daemon's process. Imports no Ray."""

from __future__ import annotations

import platform

from stream_agent.engine import Engine
from stream_agent.placement.base import CameraPlacement

LOCAL_ENGINE = "local"


def local_placement(engine: Engine, cameras: tuple[str, ...]) -> tuple[CameraPlacement, ...]:
    """Every camera on the one local engine, on this host."""
    del engine  # one engine owns them all; kept in the signature for symmetry with Ray's
    node = platform.node() or "localhost"
    return tuple(CameraPlacement(camera, LOCAL_ENGINE, node) for camera in cameras)
