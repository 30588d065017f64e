"""One connection to a source, as the decode thread sees it: the types every decoder shares.

A session is opened, iterated and closed by the same thread (PyAV crashes if a container is closed
while another thread is inside it). It ends in one of four ways: the iterator finishes (end of
file or of the live stream), :class:`ReadTimeout` (no data within the read timeout: a stall),
:class:`StreamLost` (the connection broke), or an :class:`~ingest.errors.IngestError`.

The backends (:mod:`ingest.pyav_backend`, :mod:`ingest.opencv_backend`) implement
:class:`DecodeSession`; :mod:`ingest.opening` picks one and opens it. This module imports neither,
so that no import circle runs through it.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ingest.options import IngestOptions
from ingest.records import StreamInfo
from ingest.spec import SourceSpec

RGBImage = npt.NDArray[np.uint8]
# (timestamp in seconds or None, decoder-specific handle for to_rgb)
FrameGenerator = Generator[tuple[float | None, Any], None, None]


class ReadTimeout(Exception):
    """No data arrived within the read timeout (internal: becomes the ``stalled`` state)."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Yielded by a live session in place of a frame when data resumed after waiting at least
    :data:`GAP_FRACTION` of the read timeout: the source stalled, even if it is back now."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Resumed:
    """Yielded by a live session after a :class:`Gap` once data arrives at its normal pace again
    on the same connection (the packet that ended a gap does not count: FFmpeg may just have
    flushed what it held)."""


# A wait for data this close to the read timeout counts as a stall. FFmpeg's RTSP client, when a
# read is interrupted, first hands out the packet it was assembling and only fails on the next
# read: without this, a stall would take two read timeouts to show.
GAP_FRACTION = 0.9


class StreamLost(Exception):
    """An open connection broke (internal: becomes the ``offline`` state and a reconnect)."""


def fit_size(width: int, height: int, box: tuple[int, int] | None) -> tuple[int, int]:
    """``(width, height)`` scaled down to fit ``box`` keeping the aspect ratio; never scaled up."""
    if box is None or (width <= box[0] and height <= box[1]):
        return width, height
    scale = min(box[0] / width, box[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class DecodeSession(ABC):
    """An open source: its properties, its decoded frames, and conversion of the kept ones."""

    spec: SourceSpec
    options: IngestOptions

    @property
    @abstractmethod
    def info(self) -> StreamInfo:
        """The stream's properties (complete once the first frame has been decoded)."""

    @property
    @abstractmethod
    def frame_interval_s(self) -> float | None:
        """The nominal time between frames, where the stream declares a rate."""

    @abstractmethod
    def frames(self) -> FrameGenerator:
        """Decoded frames as ``(timestamp in seconds or None, handle for to_rgb)``; a live
        session also yields ``(None, Gap(seconds))`` after a long wait for data and
        ``(None, Resumed())`` when data flows normally again."""

    @abstractmethod
    def to_rgb(self, handle: Any) -> RGBImage:
        """The frame as an upright RGB array of the output size (a fresh, contiguous array)."""

    def check_complete(self, decoded: int, last_pts: float | None) -> None:  # noqa: B027
        """At the end of a file that yielded ``decoded`` frames, the last of them stamped
        ``last_pts`` (``None`` where the stream carries no timestamps, as raw H.264 does): raise
        ``CorruptSourceError`` if nothing decoded, ``TruncatedSourceError`` if it stopped short."""

    @abstractmethod
    def close(self) -> None:
        """Release the container or device (from the thread that iterated it)."""


def pyav_device_format() -> str | None:
    """The PyAV input format for cameras on this platform, if this PyAV build has it."""
    import av

    wanted = {"linux": "v4l2", "darwin": "avfoundation"}.get(
        "linux" if sys.platform.startswith("linux") else sys.platform
    )
    return wanted if wanted is not None and wanted in av.formats_available else None
