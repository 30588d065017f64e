"""The frame record the daemon hands to the engine: ingest's frame plus its source session."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stream_agent.engine.records import FrameLike


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """A sampled frame (``FrameLike``) tagged with the source ``session`` it was decoded in.

    ``session`` counts the source's reconnects: when it changes between two frames of a camera,
    the picture may have jumped, so the worker drops the camera's cacher reference and pruner
    history before encoding the new frame. Riding on the frames keeps the signal in order with
    them and the engine boundary message-based (no call back into the worker).
    """

    source_id: str
    seq: int
    pts: float
    wall_time: float
    image: npt.NDArray[np.uint8] = field(repr=False)
    session: int = 0

    @classmethod
    def tagged(cls, frame: FrameLike, session: int) -> CameraFrame:
        return cls(frame.source_id, frame.seq, frame.pts, frame.wall_time, frame.image, session)


def session_of(frame: FrameLike) -> int:
    """The frame's source session (0 for frames that carry none, such as ingest's own)."""
    session = getattr(frame, "session", 0)
    return session if isinstance(session, int) else 0
