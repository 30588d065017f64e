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
    """

    source_id: str
    seq: int
    pts: float
    wall_time: float
    image: npt.NDArray[np.uint8] = field(repr=False)

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
