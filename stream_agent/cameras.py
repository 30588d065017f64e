"""The camera board: each camera's state, counters, newest frame and kept frames.

Its own room, read by the pipeline, the server and the alerts alike (none of them imports
another's room for it). The pipeline's camera feeds update a :class:`CameraBoard` as ingest
reports state changes and frames (from any thread); the server reads it for ``hello``/``status``,
``/readyz``, ``/metrics``, the snapshot endpoint and evidence frames. Evidence frames are small
JPEGs of the frames that were offered, kept per camera within a byte budget (oldest evicted
first, counted) and found by wall time.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from stream_agent.engine.records import FrameLike
from stream_agent.jpeg import encode_jpeg
from stream_agent.metrics import DaemonMetrics

log = logging.getLogger(__name__)

STATES = ("connecting", "online", "stalled", "offline", "ended")


@dataclass(frozen=True, slots=True)
class KeptFrame:
    """A JPEG of one frame, kept for evidence."""

    camera: str
    pts: float
    wall_time: float
    jpeg: bytes


@dataclass(frozen=True, slots=True)
class CameraView:
    """One camera's state and counters at one moment."""

    name: str
    state: str
    reason: str
    state_since: float
    frames: int
    dropped: int
    reconnects: int
    fps: float
    last_frame_wall: float | None
    last_frame_pts: float | None


class _Camera:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "connecting"
        self.reason = "not started yet"
        self.state_since = time.time()
        self.frames = 0
        self.dropped = 0
        self.reconnects = 0
        self.fps = 0.0
        self.latest: FrameLike | None = None
        self.snapshot: tuple[int, bytes] | None = None  # (seq, jpeg) of the last snapshot
        self.kept: deque[KeptFrame] = deque()
        self.kept_walls: deque[float] = deque()
        self.kept_bytes = 0


class CameraBoard:
    """Thread-safe board of the configured cameras (names fixed at construction)."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        evidence_bytes: int = 32 * 1024 * 1024,
        evidence_max_side: int = 480,
        jpeg_quality: int = 80,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        if len(set(names)) != len(names):
            raise ValueError("camera names must be unique")
        self._cameras = {name: _Camera(name) for name in names}
        self._evidence_bytes = evidence_bytes
        self._max_side = evidence_max_side
        self._quality = jpeg_quality
        self._metrics = metrics
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.registry.add_collector(self._collect_metrics)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._cameras)

    def __contains__(self, name: object) -> bool:
        return name in self._cameras

    @property
    def keeps_evidence(self) -> bool:
        return self._evidence_bytes > 0

    def _camera(self, name: str) -> _Camera:
        try:
            return self._cameras[name]
        except KeyError:
            raise KeyError(f"no camera named {name!r}") from None

    # --- updates (from the daemon) -------------------------------------------------------------

    def set_state(self, name: str, state: str, reason: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"unknown camera state {state!r}")
        cam = self._camera(name)
        with self._lock:
            if cam.state == state and cam.reason == reason:
                return
            cam.state, cam.reason, cam.state_since = state, reason, time.time()

    def set_counters(
        self, name: str, *, frames: int, dropped: int, reconnects: int, fps: float
    ) -> None:
        cam = self._camera(name)
        with self._lock:
            cam.frames, cam.dropped, cam.reconnects, cam.fps = frames, dropped, reconnects, fps

    def offer_frame(self, frame: FrameLike) -> None:
        """Record a camera's newest frame and keep a small JPEG of it for evidence."""
        cam = self._camera(frame.source_id)
        with self._lock:
            cam.latest = frame
        if self._evidence_bytes <= 0:
            return
        jpeg = encode_jpeg(frame.image, max_side=self._max_side, quality=self._quality)
        kept = KeptFrame(cam.name, frame.pts, frame.wall_time, jpeg)
        evicted = 0
        with self._lock:
            if cam.kept_walls and frame.wall_time < cam.kept_walls[-1]:
                return  # out of order: wall times must increase for the search below
            cam.kept.append(kept)
            cam.kept_walls.append(frame.wall_time)
            cam.kept_bytes += len(jpeg)
            while cam.kept_bytes > self._evidence_bytes and len(cam.kept) > 1:
                old = cam.kept.popleft()
                cam.kept_walls.popleft()
                cam.kept_bytes -= len(old.jpeg)
                evicted += 1
        if evicted and self._metrics is not None:
            self._metrics.evidence_frames_evicted.inc(evicted, camera=cam.name)

    # --- reads (from the server) ---------------------------------------------------------------

    def latest_frame(self, name: str) -> FrameLike | None:
        cam = self._camera(name)
        with self._lock:
            return cam.latest

    def snapshot_jpeg(self, name: str, quality: int = 85) -> tuple[FrameLike, bytes] | None:
        """The newest frame as a full-size JPEG (encoded once per frame); None before any."""
        cam = self._camera(name)
        with self._lock:
            frame, cached = cam.latest, cam.snapshot
        if frame is None:
            return None
        if cached is not None and cached[0] == frame.seq:
            return frame, cached[1]
        jpeg = encode_jpeg(frame.image, quality=quality)
        with self._lock:
            cam.snapshot = (frame.seq, jpeg)
        return frame, jpeg

    def frame_at(self, name: str, wall_time: float, tolerance_s: float = 2.0) -> KeptFrame | None:
        """The kept frame nearest ``wall_time`` (Unix s), if one lies within ``tolerance_s``."""
        cam = self._camera(name)
        with self._lock:
            if not cam.kept:
                return None
            i = bisect.bisect_left(cam.kept_walls, wall_time)
            candidates = [cam.kept[j] for j in (i - 1, i) if 0 <= j < len(cam.kept)]
        best = min(candidates, key=lambda k: abs(k.wall_time - wall_time))
        return best if abs(best.wall_time - wall_time) <= tolerance_s else None

    def views(self) -> tuple[CameraView, ...]:
        with self._lock:
            return tuple(
                CameraView(
                    name=c.name,
                    state=c.state,
                    reason=c.reason,
                    state_since=c.state_since,
                    frames=c.frames,
                    dropped=c.dropped,
                    reconnects=c.reconnects,
                    fps=c.fps,
                    last_frame_wall=None if c.latest is None else c.latest.wall_time,
                    last_frame_pts=None if c.latest is None else c.latest.pts,
                )
                for c in self._cameras.values()
            )

    def _collect_metrics(self) -> None:
        assert self._metrics is not None
        m = self._metrics
        m.camera_state.clear()
        for view in self.views():
            for state in STATES:
                m.camera_state.set(
                    1.0 if view.state == state else 0.0, camera=view.name, state=state
                )
            m.camera_fps.set(view.fps, camera=view.name)
            m.camera_frames.mirror(view.frames, camera=view.name)
            m.camera_dropped.mirror(view.dropped, camera=view.name)
            m.camera_reconnects.mirror(view.reconnects, camera=view.name)
