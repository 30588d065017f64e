"""ingest: turn any video source into a stream of sampled frames (no torch, no project imports).

Usage::

    from ingest import IngestOptions, SourceSpec, open_source

    spec = SourceSpec.parse("rtsp://user:pw@cam.local/stream", source_id="cam1")
    async with open_source(spec, IngestOptions(fps=1.0)) as source:
        async for frame in source:          # Frame(source_id, seq, pts, wall_time, image)
            ...                             # source.state, source.counters(), ...

Sources: files (replayed in real time by default, or as fast as possible), RTSP (TCP or UDP),
webcams (``/dev/videoN`` or an index) and HTTP(S) URLs FFmpeg can open. Each runs in a decode
thread of its own with a state machine (connecting, online, stalled, offline, ended) and
reconnects with capped, jittered exponential backoff. Errors: :mod:`ingest.errors`.
"""

from ingest.backoff import Backoff
from ingest.errors import (
    CorruptSourceError,
    IngestError,
    InvalidOptionsError,
    InvalidSourceError,
    MediaError,
    NoVideoStreamError,
    SourceAccessDeniedError,
    SourceNotFoundError,
    SourceStalledError,
    SourceUnreachableError,
    TruncatedSourceError,
    UnsupportedCodecError,
)
from ingest.options import BackoffPolicy, Decoder, IngestOptions, OverflowPolicy
from ingest.records import Frame, IngestCounters, SourceState, StateChange, StreamInfo
from ingest.redact import Redactor, redact_url
from ingest.sampler import FrameSampler
from ingest.source import VideoSource, open_source, probe_source, probe_source_sync
from ingest.spec import SourceKind, SourceSpec, Transport

__all__ = [
    "Backoff",
    "BackoffPolicy",
    "CorruptSourceError",
    "Decoder",
    "Frame",
    "FrameSampler",
    "IngestCounters",
    "IngestError",
    "IngestOptions",
    "InvalidOptionsError",
    "InvalidSourceError",
    "MediaError",
    "NoVideoStreamError",
    "OverflowPolicy",
    "Redactor",
    "SourceAccessDeniedError",
    "SourceKind",
    "SourceNotFoundError",
    "SourceSpec",
    "SourceStalledError",
    "SourceState",
    "SourceUnreachableError",
    "StateChange",
    "StreamInfo",
    "Transport",
    "TruncatedSourceError",
    "UnsupportedCodecError",
    "VideoSource",
    "open_source",
    "probe_source",
    "probe_source_sync",
    "redact_url",
]
