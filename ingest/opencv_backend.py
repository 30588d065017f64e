"""Decoding with OpenCV: the fallback for cameras that this platform's PyAV cannot open.

The PyPI PyAV wheels carry no ``v4l2`` input, while OpenCV's wheels read V4L2 devices directly, so
on Linux a webcam is read here. The same class also reads files and URLs through OpenCV's FFmpeg
backend when asked to (``decoder=opencv``); that is how its code path is tested without a camera.
OpenCV cannot pick the RTSP transport per source, nor report why an open failed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import cv2
import numpy as np

from ingest.counters import WorkerCounters
from ingest.errors import (
    CorruptSourceError,
    InvalidOptionsError,
    SourceNotFoundError,
    SourceUnreachableError,
)
from ingest.options import IngestOptions
from ingest.records import StreamInfo
from ingest.session import (
    GAP_FRACTION,
    DecodeSession,
    FrameGenerator,
    Gap,
    Resumed,
    RGBImage,
    StreamLost,
    fit_size,
)
from ingest.spec import SourceKind, SourceSpec, Transport


def _fourcc(value: float) -> str:
    code = int(value)
    text = code.to_bytes(4, "little").decode("ascii", errors="replace").strip("\x00 ")
    return text.lower() or "unknown"


class OpenCVSession(DecodeSession):
    """A source opened with ``cv2.VideoCapture``."""

    def __init__(self, spec: SourceSpec, options: IngestOptions, counters: WorkerCounters) -> None:
        self.spec = spec
        self.options = options
        self._counters = counters
        shown = spec.display
        if spec.kind is SourceKind.RTSP and spec.transport is Transport.UDP:
            raise InvalidOptionsError(
                "OpenCV cannot choose the RTSP transport per source; use decoder=pyav for UDP"
            )
        local = spec.kind in (SourceKind.FILE, SourceKind.WEBCAM) and not spec.location.isdigit()
        if local and not os.path.exists(spec.location):
            what = "video device" if spec.kind is SourceKind.WEBCAM else "such file"
            raise SourceNotFoundError(f"no {what}: {shown}; check the path", source=shown)
        if spec.kind is SourceKind.WEBCAM:
            target: int | str = int(spec.location) if spec.location.isdigit() else spec.location
            # Device backends reject unknown parameters, and they use their own read timeouts.
            capture = cv2.VideoCapture(target, cv2.CAP_ANY)
        else:
            capture = cv2.VideoCapture(
                spec.location,
                cv2.CAP_FFMPEG,
                [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    round(options.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    round(options.read_timeout_s * 1000),
                ],
            )
        if not capture.isOpened():
            capture.release()
            if spec.kind is SourceKind.FILE:
                raise CorruptSourceError(
                    f"OpenCV cannot read {shown}: not a video file it can decode, or corrupt",
                    source=shown,
                )
            raise SourceUnreachableError(
                f"OpenCV cannot open {shown}; check that the camera is connected and not in use",
                source=shown,
            )
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps) if fps and 0 < fps < 1000 else None
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self._live = spec.kind is SourceKind.WEBCAM or (
            spec.live if spec.live is not None else not (count and count > 0)
        )
        self._duration = None if self._live or not self._fps else float(count) / self._fps
        # OpenCV applies the rotation metadata itself (clockwise degrees in its property).
        meta = int(capture.get(cv2.CAP_PROP_ORIENTATION_META) or 0)
        self._rotation = (360 - meta) % 360
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._info = self._make_info(width, height, _fourcc(capture.get(cv2.CAP_PROP_FOURCC)))
        self._session_start_ms: float | None = None

    def _make_info(self, width: int, height: int, codec: str) -> StreamInfo:
        out = fit_size(width, height, self.options.max_size) if width and height else (0, 0)
        return StreamInfo(
            source_id=self.spec.source_id,
            url=self.spec.display,
            kind=self.spec.kind.value,
            container="opencv",
            codec=codec,
            width=width,
            height=height,
            output_width=out[0],
            output_height=out[1],
            rotation=self._rotation,
            fps=self._fps,
            duration_s=self._duration,
            has_audio=False,
            live=self._live,
            transport=self.spec.transport.value if self.spec.transport else None,
            decoder="opencv",
        )

    @property
    def info(self) -> StreamInfo:
        return self._info

    @property
    def frame_interval_s(self) -> float | None:
        return 1.0 / self._fps if self._fps else None

    def frames(self) -> FrameGenerator:
        first = True
        after_gap = False
        stall_after = self.options.read_timeout_s * GAP_FRACTION
        while True:
            started = time.monotonic()
            ok, image = self._capture.read()
            waited = time.monotonic() - started
            if self._live and not first:
                if waited >= stall_after:
                    after_gap = True
                    yield None, Gap(waited)
                elif after_gap:
                    after_gap = False
                    yield None, Resumed()
            if not ok:
                if self._live:
                    raise StreamLost(f"{self.spec.display} stopped delivering frames")
                return
            if first:
                first = False
                height, width = image.shape[:2]
                if (width, height) != (self._info.width, self._info.height):
                    self._info = self._make_info(width, height, self._info.codec)
            # POS_MSEC is the frame's timestamp; cameras and raw elementary streams report 0
            # (-> None: the timeline steps by the frame interval, or the wall clock when live).
            # A file's genuine 0 for its first frame maps to 0 either way.
            msec = self._capture.get(cv2.CAP_PROP_POS_MSEC)
            pts = msec / 1000.0 if msec > 0 else None
            yield pts, image

    def to_rgb(self, handle: Any) -> RGBImage:
        image = cv2.cvtColor(handle, cv2.COLOR_BGR2RGB)
        out = (self._info.output_width, self._info.output_height)
        if out != (image.shape[1], image.shape[0]):
            image = cv2.resize(image, out, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def check_complete(self, decoded: int, last_pts: float | None) -> None:
        if not self._live and decoded == 0:
            raise CorruptSourceError(
                f"{self.spec.display} contains no decodable video frame; the file is damaged",
                source=self.spec.display,
            )

    def close(self) -> None:
        self._capture.release()
