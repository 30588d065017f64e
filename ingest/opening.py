"""Opening a source with the right decoder backend (PyAV, or OpenCV where PyAV cannot reach)."""

from __future__ import annotations

from ingest.counters import WorkerCounters
from ingest.options import Decoder, IngestOptions
from ingest.session import DecodeSession, pyav_device_format
from ingest.spec import SourceKind, SourceSpec


def choose_decoder(spec: SourceSpec, options: IngestOptions) -> Decoder:
    """PyAV, except where PyAV cannot reach the source (a webcam without a device input)."""
    if options.decoder is not Decoder.AUTO:
        return options.decoder
    if spec.kind is SourceKind.WEBCAM and pyav_device_format() is None:
        return Decoder.OPENCV
    return Decoder.PYAV


def open_session(
    spec: SourceSpec, options: IngestOptions, counters: WorkerCounters
) -> DecodeSession:
    """Open ``spec`` with the right decoder; raises a typed ``IngestError`` on failure."""
    if choose_decoder(spec, options) is Decoder.OPENCV:
        from ingest.opencv_backend import OpenCVSession

        return OpenCVSession(spec, options, counters)
    from ingest.pyav_backend import PyAVSession

    return PyAVSession(spec, options, counters)
