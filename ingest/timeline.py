"""One monotonic presentation timeline per source, across sessions and timestamp glitches."""

from __future__ import annotations

# Assumed frame interval before a stream has shown its own.
_DEFAULT_STEP_S = 0.04
_MIN_STEP_S = 1e-3


class PtsClock:
    """Maps each session's raw timestamps (seconds, or None) onto one timeline starting at 0.

    Within a session the timeline follows the stream's own timestamps, relative to the session's
    first frame. It is re-anchored -- the next frame placed one gap after the last one -- when a
    new session starts (a reconnect, a file loop), when timestamps go backwards (a camera that
    resets its clock), and, for live sources, when they jump ahead of the wall clock by more than
    ``max_jump_s``. The gap is the wall-clock time since the last frame for live sources (so the
    timeline keeps tracking real time across an outage) and one frame interval for files.
    A frame without a timestamp is placed one gap after the previous frame.
    """

    def __init__(self, *, live: bool, max_jump_s: float = 10.0) -> None:
        self._live = live
        self._max_jump_s = max_jump_s
        self._step = _DEFAULT_STEP_S
        self._offset: float | None = None  # timeline value of raw timestamp 0 in this session
        self._last_out: float | None = None
        self._last_raw: float | None = None
        self._last_wall = 0.0

    @property
    def last(self) -> float | None:
        """The last timestamp handed out, or None before the first frame."""
        return self._last_out

    def new_session(self, frame_interval_s: float | None = None) -> None:
        """Start a new session: the next frame is re-anchored after the last one."""
        self._offset = None
        self._last_raw = None
        if frame_interval_s is not None and frame_interval_s > 0:
            self._step = max(frame_interval_s, _MIN_STEP_S)

    def _gap(self, wall: float) -> float:
        if self._live and self._last_out is not None:
            return max(wall - self._last_wall, self._step)
        return self._step

    def _anchor(self, raw: float, wall: float) -> float:
        out = 0.0 if self._last_out is None else self._last_out + self._gap(wall)
        self._offset = out - raw
        return out

    def map(self, raw: float | None, wall: float) -> float:
        """The timeline value for a frame with stream timestamp ``raw`` decoded at ``wall``."""
        if raw is None:
            out = 0.0 if self._last_out is None else self._last_out + self._gap(wall)
        elif self._offset is None:
            out = self._anchor(raw, wall)
        else:
            out = raw + self._offset
            assert self._last_out is not None
            wall_gap = wall - self._last_wall
            backwards = out < self._last_out
            runaway = self._live and out - self._last_out > wall_gap + self._max_jump_s
            if backwards or runaway:
                out = self._anchor(raw, wall)
            elif self._last_raw is not None and raw > self._last_raw:
                self._step = max(min(raw - self._last_raw, 1.0), _MIN_STEP_S)
        if raw is not None:
            self._last_raw = raw
        self._last_out = out
        self._last_wall = wall
        return out
