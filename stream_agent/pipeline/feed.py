"""One camera's ingest task: frames to the engine and the camera board, states and counters.

A :class:`CameraFeed` opens its source with ingest (a decode thread of its own, sampling to the
camera's rate; files are replayed in real time, as if live), offers each frame to the
:class:`~stream_agent.cameras.CameraBoard` (newest frame, evidence JPEGs) and submits it to the
engine (each frame carries the source session it was decoded in). Ingest's state changes go to
the board and to one log line each. Nothing that happens to one camera reaches another: every
failure of the source ends in a state with a reason, never in an exception out of
:meth:`CameraFeed.run`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from ingest import (
    IngestError,
    IngestOptions,
    SourceSpec,
    StateChange,
    VideoSource,
    open_source,
    redact_url,
)
from stream_agent.cameras import CameraBoard
from stream_agent.config import CameraConfig
from stream_agent.engine import Engine

log = logging.getLogger(__name__)

FPS_WINDOW_S = 10.0
"""The delivered frame rate is measured over about this many seconds."""


class CameraFeed:
    """Runs one camera: ``await feed.run()`` until cancelled (or until a recording ends)."""

    def __init__(
        self,
        camera: CameraConfig,
        url: str,
        *,
        engine: Engine,
        board: CameraBoard,
        options: IngestOptions | None = None,
    ) -> None:
        """``url`` is the location with credentials inserted (``Secrets.camera_url``); it is
        given only to ingest and never logged."""
        self.camera = camera
        self.name = camera.name
        self._url = url
        self._engine = engine
        self._board = board
        self._options = options or IngestOptions(fps=camera.fps)
        self._source: VideoSource | None = None
        self._rate: deque[tuple[float, int]] = deque()
        self.display = redact_url(camera.location)

    # --- the task --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            spec = self._spec()
        except IngestError as exc:
            self._board.set_state(self.name, "ended", str(exc))
            log.error("camera %s: %s", self.name, exc)
            return
        source = open_source(spec, self._options, on_state_change=self._on_state)
        self._source = source
        log.info("camera %s: opening %s at %g fps", self.name, self.display, self._options.fps)
        try:
            async with source:
                async for frame in source:
                    await asyncio.to_thread(self._board.offer_frame, frame)
                    # the frame carries the session it was decoded in (stamped by ingest's
                    # decode thread): reading the source's counters here would give a frame
                    # decoded before a reconnect the new session
                    self._engine.submit_frame(frame)
        except IngestError as exc:
            state = "offline" if spec.live else "ended"
            self._board.set_state(self.name, state, str(exc))
            log.error("camera %s: %s", self.name, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not take the other cameras down
            self._board.set_state(self.name, "offline", f"the feed failed: {exc}")
            log.exception("camera %s: the feed failed", self.name)
        finally:
            self.refresh_counters()
        log.info("camera %s: feed ended", self.name)

    def _spec(self) -> SourceSpec:
        transport = None
        if self.camera.url is not None and self.camera.url.lower().startswith("rtsp"):
            transport = None if self.camera.transport == "auto" else self.camera.transport
        return SourceSpec.parse(self._url, source_id=self.name, transport=transport)

    def _on_state(self, change: StateChange) -> None:
        # ingest logs each change itself (one line, credentials redacted)
        self._board.set_state(self.name, change.state.value, change.reason)

    # --- counters --------------------------------------------------------------------------

    def refresh_counters(self) -> None:
        """Copy the source's counters to the board (the daemon calls it about once a second)."""
        source = self._source
        if source is None:
            return
        counters = source.counters()
        now = time.monotonic()
        self._rate.append((now, counters.delivered))
        while len(self._rate) > 2 and now - self._rate[1][0] >= FPS_WINDOW_S:
            self._rate.popleft()
        first_t, first_n = self._rate[0]
        fps = (counters.delivered - first_n) / (now - first_t) if now > first_t else 0.0
        self._board.set_counters(
            self.name,
            frames=counters.delivered,
            dropped=counters.dropped_stale,
            reconnects=counters.reconnects,
            fps=fps,
        )
