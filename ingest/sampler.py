"""Choosing which decoded frames to keep: a fixed rate by presentation time."""

from __future__ import annotations

import math

# A frame whose timestamp is this close below a grid point (in units of the sampling period)
# counts as on it: timestamps are rationals rounded to floats, 0.99999999 means 1.0.
_GRID_TOLERANCE = 1e-6


class FrameSampler:
    """Keeps the first frame at or after each multiple of ``1 / fps`` seconds.

    Decisions depend only on the timestamps, never on the wall clock, so that a file read as fast
    as possible yields the same frames as one replayed in real time: a 10 fps clip of 139.4 s
    sampled at 1 fps gives the frames at 0, 1, ..., 139 s. A gap in the stream (variable frame
    rate, a reconnect) skips the empty periods instead of catching up on them. ``fps=None`` keeps
    every frame.
    """

    def __init__(self, fps: float | None) -> None:
        self._fps = fps
        self._last_slot: int | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def accept(self, pts: float) -> bool:
        """Whether the frame at ``pts`` (seconds, non-decreasing) is kept."""
        if self._fps is None:
            return True
        slot = math.floor(pts * self._fps + _GRID_TOLERANCE)
        if self._last_slot is not None and slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True
