"""The records that cross the engine boundary.

They are small frozen dataclasses (no callables, no locks) so that the boundary stays
message-based: the engine could move to another process and these would be what is pickled.
An answer's records (deltas, moments, the final, a failure) are :mod:`stream_agent.answers`,
shared by the memory, the worker, the engine and the server; they are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from stream_agent.answers import (
    AnswerDelta,
    AnswerEvent,
    AnswerFailed,
    AnswerFinal,
    AnswerTimings,
    Moment,
    StreamEvent,
)

__all__ = [
    "AnswerDelta",
    "AnswerEvent",
    "AnswerFailed",
    "AnswerFinal",
    "AnswerTimings",
    "CameraMemory",
    "EngineStatus",
    "FrameBatch",
    "FrameLike",
    "Moment",
    "Question",
    "StreamEvent",
    "WorkerStatus",
]


class FrameLike(Protocol):
    """What the engine needs of a frame (``ingest.records.Frame`` satisfies it)."""

    @property
    def source_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def pts(self) -> float: ...
    @property
    def wall_time(self) -> float: ...
    @property
    def image(self) -> npt.NDArray[np.uint8]: ...
    @property
    def session(self) -> int:
        """The source connection the frame was decoded in (changes after a reconnect)."""
        ...


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Consecutive frames of one camera, oldest first, for one ``Worker.encode`` call."""

    camera: str
    frames: tuple[FrameLike, ...]


@dataclass(frozen=True, slots=True)
class Question:
    """A question as the worker sees it.

    ``request_id`` is unique in the engine (the server prefixes the client's id with its
    connection's). ``camera`` None means all cameras. ``since``/``until`` are Unix seconds
    bounding the moments the answer may use (None: unbounded). ``received_at`` is the
    ``time.monotonic()`` of receipt, from which time-to-first-token is measured.
    """

    request_id: str
    text: str
    camera: str | None = None
    since: float | None = None
    until: float | None = None
    received_at: float = 0.0


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CameraMemory:
    """One camera's memory as the worker reports it (None: the worker does not know)."""

    camera: str
    blocks: int = 0
    ram_bytes: int = 0
    disk_bytes: int = 0
    frames_encoded: int = 0
    oldest_wall: float | None = None
    last_pts: float | None = None
    last_wall: float | None = None
    cacher_reuse_share: float | None = None
    pruner_kept_share: float | None = None
    gate_reasons: tuple[tuple[str, int], ...] = ()
    """Change-gate decisions by reason (``unchanged``: gated; any other: passed)."""
    reused_extensions: int = 0
    vision_s: float = 0.0
    """Engine-thread seconds spent in the camera's vision chain (gate, encoder, pruner)."""
    prefill_s: float = 0.0
    """... and in its memory (prefilling blocks, extending spans)."""


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """The worker's state: ``ready`` once the model (and stored memories) are loaded."""

    ready: bool
    reason: str = ""
    model: str | None = None
    cameras: tuple[CameraMemory, ...] = ()

    def camera(self, name: str) -> CameraMemory | None:
        return next((c for c in self.cameras if c.camera == name), None)


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """A snapshot of the engine, readable from any thread without waiting for the engine."""

    worker: WorkerStatus
    running: bool
    queued_frames: int
    queued_questions: int
    answering: int
    frames_dropped: dict[str, int] = field(default_factory=dict)
    frames_encoded: dict[str, int] = field(default_factory=dict)
    frame_lag_s: dict[str, float] = field(default_factory=dict)
    queued_checks: int = 0
    drops: dict[tuple[str, str], int] = field(default_factory=dict)
    """Frames shed per (camera, reason): ``frames_dropped`` by reason."""
