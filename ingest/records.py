"""Typed records that ingest hands to the rest of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Frame:
    """One sampled video frame.

    ``pts`` is the presentation time in seconds from the start of the stream (for a replayed file,
    the position in the file; for a live source, the time since the first frame of the current
    session, continued across reconnects so that it never goes backwards). ``wall_time`` is the
    Unix time at which the frame was captured (decoded) on this machine. ``image`` is an RGB
    ``uint8`` array of shape (height, width, 3), never written to after creation.

    ``session`` numbers the connection (or, for a looped file, the pass) the frame was decoded
    in: 0 for the first, counting up with each reconnect. The decode thread stamps it, so a frame
    decoded before a reconnect keeps the old number even when it is taken from the hand-off after
    the reconnect; a consumer that keeps state across frames (a reference frame) starts over when
    it changes.
    """

    source_id: str
    seq: int
    pts: float
    wall_time: float
    image: npt.NDArray[np.uint8] = field(repr=False)
    session: int = 0

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


class SourceState(StrEnum):
    """Lifecycle of a source, as callers and metrics see it."""

    CONNECTING = "connecting"
    ONLINE = "online"
    STALLED = "stalled"
    OFFLINE = "offline"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class StateChange:
    """A transition of a source's state, with the reason in words (never a credential)."""

    source_id: str
    state: SourceState
    previous: SourceState | None
    wall_time: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What an opened source turned out to be (one per session; a reconnect may change it).

    ``width``/``height`` are the decoded picture's size after the rotation metadata is applied
    (what a viewer sees); ``output_width``/``output_height`` are the size of the frames ingest
    hands out (after ``max_size``). ``fps`` is the stream's average rate where it declares one;
    ``duration_s`` is None for live streams. ``live`` says whether the source reconnects when it
    ends (True) or finishes (False).
    """

    source_id: str
    url: str
    kind: str
    container: str
    codec: str
    width: int
    height: int
    output_width: int
    output_height: int
    rotation: int
    fps: float | None
    duration_s: float | None
    has_audio: bool
    live: bool
    transport: str | None
    decoder: str


@dataclass(frozen=True, slots=True)
class IngestCounters:
    """A snapshot of one source's counters, for metrics (all counts since the source started).

    ``decoded``: frames decoded; ``sampled``: kept by the sampler; ``delivered``: taken by the
    consumer; ``dropped_stale``: sampled frames replaced by newer ones before the consumer took
    them (overflow policy ``drop_oldest``); ``decode_errors``: packets the decoder rejected and
    skipped; ``connect_attempts``/``connect_failures``: session opens tried and failed;
    ``reconnects``: sessions opened after the first; ``stalls``: read timeouts on an open
    session; ``state_events_dropped``: state changes a slow subscriber never saw;
    ``queue_depth``/``queue_capacity``: the hand-off right now; ``last_frame_wall_time``: Unix time
    of the last sampled frame.
    """

    source_id: str
    state: SourceState
    decoded: int
    sampled: int
    delivered: int
    dropped_stale: int
    decode_errors: int
    connect_attempts: int
    connect_failures: int
    reconnects: int
    stalls: int
    state_events_dropped: int
    queue_depth: int
    queue_capacity: int
    last_frame_wall_time: float | None
