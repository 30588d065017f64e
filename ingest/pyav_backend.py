"""Decoding with PyAV (FFmpeg): files, RTSP, HTTP(S), and cameras where PyAV has a device input."""

from __future__ import annotations

import errno
import time
from fractions import Fraction
from typing import Any, cast

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import Interpolation
from av.video.stream import VideoStream

from ingest.counters import WorkerCounters
from ingest.errors import (
    CorruptSourceError,
    IngestError,
    InvalidSourceError,
    NoVideoStreamError,
    SourceAccessDeniedError,
    SourceNotFoundError,
    SourceUnreachableError,
    TruncatedSourceError,
    UnsupportedCodecError,
)
from ingest.options import IngestOptions
from ingest.records import StreamInfo
from ingest.session import (
    GAP_FRACTION,
    DecodeSession,
    FrameGenerator,
    Gap,
    ReadTimeout,
    Resumed,
    RGBImage,
    StreamLost,
    fit_size,
    pyav_device_format,
)
from ingest.spec import SourceKind, SourceSpec

# FFmpeg's probing of a live stream buffers this much media before the first frame (the default,
# 5 s, delays every connect and reconnect by seconds). One second still finds the parameters of
# the usual H.264/H.265 camera streams, whose SPS/PPS arrive in-band or in the SDP.
_LIVE_ANALYZE_US = "1000000"
# A file counts as truncated when its video stops this much before the declared duration (and
# at least this many frame intervals): smaller gaps are rounding and muxer slack.
_TRUNCATION_MIN_S = 1.0
_TRUNCATION_MIN_FRAMES = 3
# An open that failed after this fraction of the open timeout was cut short by the timeout.
_TIMED_OUT_FRACTION = 0.95


def _strerror(exc: BaseException) -> str:
    """FFmpeg's error text without the URL PyAV appends (it may carry credentials)."""
    text = getattr(exc, "strerror", None)
    return str(text) if text else type(exc).__name__


def _network_target(spec: SourceSpec) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(spec.location)
    port = parts.port or {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.hostname}:{port}"


def open_error(exc: BaseException, spec: SourceSpec, options: IngestOptions) -> IngestError:
    """Translate an exception from ``av.open`` into the ingest error a user can act on."""
    shown = spec.display
    reason = _strerror(exc)
    network = spec.kind in (SourceKind.RTSP, SourceKind.HTTP)
    err: IngestError
    if isinstance(exc, av.error.ExitError):
        err = SourceUnreachableError(
            f"{shown} did not answer within {options.open_timeout_s:g} s; check that the camera "
            "or server is running and the address is right",
            source=shown,
        )
    elif isinstance(exc, av.error.HTTPNotFoundError):
        err = SourceNotFoundError(
            f"the server has no stream at {shown} (404 Not Found); check the path", source=shown
        )
    elif isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        err = SourceAccessDeniedError(
            f"the server refused access to {shown} ({reason}); check the user name and password",
            source=shown,
        )
    elif isinstance(exc, av.error.PermissionError):
        err = SourceAccessDeniedError(
            f"no permission to read {shown}; check the file or device permissions (for a webcam, "
            "membership of the 'video' group)",
            source=shown,
        )
    elif isinstance(exc, av.error.IsADirectoryError):
        err = InvalidSourceError(f"{shown} is a directory, not a video file", source=shown)
    elif isinstance(exc, av.error.FileNotFoundError):
        if spec.kind is SourceKind.WEBCAM:
            err = SourceNotFoundError(
                f"no video device at {shown}; check that the camera is plugged in (ls /dev/video*)",
                source=shown,
            )
        elif network:
            err = SourceNotFoundError(f"the server has no stream at {shown}", source=shown)
        else:
            err = SourceNotFoundError(f"no such file: {shown}; check the path", source=shown)
    elif isinstance(exc, av.error.ConnectionRefusedError):
        err = SourceUnreachableError(
            f"connection refused by {_network_target(spec)} ({shown}); check that the camera or "
            "server is running and the port is right",
            source=shown,
        )
    elif isinstance(exc, av.error.InvalidDataError):
        if network:
            err = CorruptSourceError(
                f"{shown} answered, but not with a stream FFmpeg can read ({reason})", source=shown
            )
        else:
            err = CorruptSourceError(
                f"{shown} is not a video file FFmpeg can read, or it is corrupt or truncated "
                f"({reason})",
                source=shown,
            )
    elif isinstance(exc, av.error.ProtocolNotFoundError | av.error.DemuxerNotFoundError):
        err = InvalidSourceError(f"this FFmpeg build cannot open {shown} ({reason})", source=shown)
    elif network and isinstance(exc, OSError):
        hint = (
            "check the host name"
            if getattr(exc, "errno", None) == errno.EIO
            else "check the address and the network"
        )
        err = SourceUnreachableError(
            f"cannot reach {_network_target(spec)} for {shown} ({reason}); {hint}", source=shown
        )
    elif network:
        err = SourceUnreachableError(f"cannot open {shown} ({reason})", source=shown)
    else:
        err = CorruptSourceError(f"cannot read {shown} ({reason})", source=shown)
    return err


def _first_video_stream(container: InputContainer) -> VideoStream | None:
    for stream in container.streams.video:
        # Cover art in audio files is a one-picture "video" stream: not a video.
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        return stream
    return None


def _declared_duration_s(container: InputContainer, stream: VideoStream) -> float | None:
    """The video track's duration as the file declares it, if it says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska writes one per track
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    others = [s for s in container.streams if s.type in ("audio", "video", "subtitle")]
    if len(others) == 1 and container.duration is not None:
        return container.duration / 1_000_000
    return None


class PyAVSession(DecodeSession):
    """A source opened with ``av.open``; decodes its first video track."""

    def __init__(self, spec: SourceSpec, options: IngestOptions, counters: WorkerCounters) -> None:
        self.spec = spec
        self.options = options
        self._counters = counters
        kwargs: dict[str, Any] = {}
        av_options: dict[str, str] = {}
        if spec.kind is SourceKind.RTSP:
            assert spec.transport is not None
            av_options = {
                "rtsp_transport": spec.transport.value,
                "analyzeduration": _LIVE_ANALYZE_US,
            }
        elif spec.kind is SourceKind.WEBCAM:
            device_format = pyav_device_format()
            if device_format is None:
                raise InvalidSourceError(
                    f"this PyAV build has no camera input for {spec.display}; use decoder=auto "
                    "or opencv",
                    source=spec.display,
                )
            kwargs["format"] = device_format
        started = time.monotonic()
        try:
            container = av.open(
                spec.location,
                options=av_options,
                timeout=(options.open_timeout_s, options.read_timeout_s),
                **kwargs,
            )
        except av.error.FFmpegError as exc:
            # FFmpeg's RTSP client reports an interrupted handshake as "invalid data": a server
            # that accepted the connection but never answered. Tell it by the time it took.
            if time.monotonic() - started >= options.open_timeout_s * _TIMED_OUT_FRACTION:
                raise SourceUnreachableError(
                    f"{spec.display} accepted the connection but did not answer within "
                    f"{options.open_timeout_s:g} s; check that the camera or server is not hung",
                    source=spec.display,
                ) from None
            raise open_error(exc, spec, options) from None
        assert isinstance(container, InputContainer)
        self._container = container
        try:
            stream = _first_video_stream(container)
            if stream is None:
                kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["no"]
                raise NoVideoStreamError(
                    f"{spec.display} has no video track (it has {', '.join(kinds)} streams); "
                    "give a source with video",
                    source=spec.display,
                )
            if stream.codec_context is None:
                raise UnsupportedCodecError(
                    f"the video track of {spec.display} uses a codec this FFmpeg build cannot "
                    "decode; convert it, e.g. ffmpeg -i SOURCE -c:v libx264 out.mp4",
                    source=spec.display,
                )
        except IngestError:
            container.close()
            raise
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = options.decoder_threads
        self._stream = stream
        self._time_base: Fraction | None = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        self._fps = float(rate) if rate else None
        self._rotation = 0
        self._size: tuple[int, int] | None = None  # reformat size before rotation
        self._decoded_any = False
        if spec.live is None:  # HTTP: a stream that declares its length is a recording
            self._live = container.duration is None
        else:
            self._live = spec.live
        duration = None if self._live or container.duration is None else container.duration / 1e6
        self._duration = duration
        self._has_audio = bool(container.streams.audio)
        self._info = self._make_info(stream.codec_context.width, stream.codec_context.height)

    def _make_info(self, coded_w: int, coded_h: int) -> StreamInfo:
        upright = (coded_h, coded_w) if self._rotation % 180 else (coded_w, coded_h)
        out = fit_size(*upright, self.options.max_size) if coded_w and coded_h else (0, 0)
        return StreamInfo(
            source_id=self.spec.source_id,
            url=self.spec.display,
            kind=self.spec.kind.value,
            container=self._container.format.name,
            codec=self._stream.codec_context.name,
            width=upright[0],
            height=upright[1],
            output_width=out[0],
            output_height=out[1],
            rotation=self._rotation,
            fps=self._fps,
            duration_s=self._duration,
            has_audio=self._has_audio,
            live=self._live,
            transport=self.spec.transport.value if self.spec.transport else None,
            decoder="pyav",
        )

    @property
    def info(self) -> StreamInfo:
        return self._info

    @property
    def frame_interval_s(self) -> float | None:
        return 1.0 / self._fps if self._fps else None

    def _learn_from_first_frame(self, frame: VideoFrame) -> None:
        self._decoded_any = True
        # Display-matrix rotation, counter-clockwise degrees; only right angles are applied.
        self._rotation = round(frame.rotation / 90) * 90 % 360
        self._info = self._make_info(frame.width, frame.height)
        out_w, out_h = self._info.output_width, self._info.output_height
        size = (out_h, out_w) if self._rotation % 180 else (out_w, out_h)
        self._size = None if size == (frame.width, frame.height) else size

    def frames(self) -> FrameGenerator:
        counters = self._counters
        live = self._live
        stall_after = self.options.read_timeout_s * GAP_FRACTION
        clock = time.monotonic
        packets = self._container.demux(self._stream)
        after_gap = False
        try:
            while True:
                # Time only the wait for data: the consumer may hold this generator suspended.
                started = clock()
                packet = next(packets, None)
                if packet is None:
                    return
                if live:
                    waited = clock() - started
                    if waited >= stall_after:
                        after_gap = True
                        yield None, Gap(waited)
                    elif after_gap:
                        after_gap = False
                        yield None, Resumed()
                try:
                    decoded = packet.decode()
                except av.error.ExitError:
                    raise
                except av.error.FFmpegError:
                    counters.decode_errors += 1
                    continue
                for frame in decoded:
                    if not self._decoded_any:
                        self._learn_from_first_frame(frame)
                    yield frame.time, frame
        except av.error.ExitError:
            raise ReadTimeout(f"no data for {self.options.read_timeout_s:.1f} s") from None
        except av.error.FFmpegError as exc:
            if live or self.spec.kind is SourceKind.HTTP:
                raise StreamLost(f"the connection broke ({_strerror(exc)})") from None
            raise CorruptSourceError(
                f"{self.spec.display} is damaged and cannot be read further ({_strerror(exc)})",
                source=self.spec.display,
            ) from None

    def to_rgb(self, handle: Any) -> RGBImage:
        frame: VideoFrame = handle
        image: np.ndarray[Any, Any]
        if self._size is None:
            image = frame.to_ndarray(format="rgb24")
        else:
            image = frame.to_ndarray(
                format="rgb24",
                width=self._size[0],
                height=self._size[1],
                interpolation=Interpolation.AREA,
            )
        if self._rotation:
            image = np.rot90(image, k=self._rotation // 90)
        # Rows of odd widths come back padded (a strided view); hand out a plain array. This is
        # a no-op for the usual already-contiguous case.
        return cast(RGBImage, np.ascontiguousarray(image))

    def check_complete(self, decoded: int, last_pts: float | None) -> None:
        if self._live:
            return
        if decoded == 0:
            raise CorruptSourceError(
                f"{self.spec.display} contains no decodable video frame; the file is damaged",
                source=self.spec.display,
            )
        if last_pts is None:  # no timestamps (a raw elementary stream): nothing to compare
            return
        declared = _declared_duration_s(self._container, self._stream)
        if declared is None:
            return
        interval = self.frame_interval_s or 0.0
        start = 0.0
        if self._stream.start_time is not None and self._time_base is not None:
            start = float(self._stream.start_time * self._time_base)
        reached = last_pts - start + interval
        missing = declared - reached
        if missing > max(_TRUNCATION_MIN_S, _TRUNCATION_MIN_FRAMES * interval):
            raise TruncatedSourceError(
                f"{self.spec.display} stops at {reached:.1f} s but declares {declared:.1f} s: "
                "the file is truncated (an interrupted copy or recording?)",
                source=self.spec.display,
            )

    def close(self) -> None:
        self._container.close()
