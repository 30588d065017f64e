"""The errors ``ingest`` raises, one class per thing a user can get wrong or meet.

Hierarchy (every message names the source with its credentials redacted and says what to do)::

    IngestError                         base of everything below
    ├── InvalidSourceError              (also ValueError) the source text is not a usable URL, path,
    │                                   device or source id: bad syntax, unsupported scheme
    ├── InvalidOptionsError             (also ValueError) an ``IngestOptions`` value is out of range
    ├── SourceNotFoundError             no such file or device; the server has no such stream (404)
    ├── SourceUnreachableError          connection refused, unknown host, no answer in time
    ├── SourceAccessDeniedError         authentication failed (401/403) or no permission to read
    ├── SourceStalledError              opened, but no frame arrived within the read timeout
    └── MediaError                      the bytes arrived but are not a video ingest can decode
        ├── CorruptSourceError          not a media file, or damaged beyond what decoding skips
        │   └── TruncatedSourceError    a file that stops before the duration it declares
        ├── NoVideoStreamError          a media file or stream without a video track
        └── UnsupportedCodecError       a video codec this FFmpeg build cannot decode

For a live source (RTSP, webcam, live HTTP) the connection errors are not raised from the frame
iterator: the source goes ``offline`` with the error's message as the reason and keeps retrying.
They are raised by one-shot opens (``probe_source``) and, for files, by ``VideoSource.start``.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error raised by ``ingest``.

    ``source`` is the redacted source text (never a password), or ``""`` where none applies.
    """

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.source = source

    def __str__(self) -> str:
        return self.message


class InvalidSourceError(IngestError, ValueError):
    """The source text cannot be used: bad syntax, unsupported scheme, bad source id."""


class InvalidOptionsError(IngestError, ValueError):
    """An ingest option is out of its valid range."""


class SourceNotFoundError(IngestError):
    """The file or device does not exist, or the server has no stream at that path."""


class SourceUnreachableError(IngestError):
    """Nothing answered: connection refused, unknown host, or no answer within the timeout."""


class SourceAccessDeniedError(IngestError):
    """The server refused the credentials, or the process may not read the file or device."""


class SourceStalledError(IngestError):
    """The source opened but delivered no frame within the read timeout."""


class MediaError(IngestError):
    """The data arrived but is not a video that ingest can decode."""


class CorruptSourceError(MediaError):
    """Not a media file, or damaged beyond what decoding can skip over."""


class TruncatedSourceError(CorruptSourceError):
    """A file that ends before the duration its header declares (an interrupted copy or write).

    The frames before the cut have already been delivered when this is raised.
    """


class NoVideoStreamError(MediaError):
    """The file or stream has no video track (audio only, data only)."""


class UnsupportedCodecError(MediaError):
    """The video track uses a codec that the bundled FFmpeg (or OpenCV) cannot decode."""
