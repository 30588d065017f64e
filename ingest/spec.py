"""What a source is: parsing the text a user writes (a URL, a path, a device) into a typed spec."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePath
from urllib.parse import unquote, urlsplit

from ingest.errors import InvalidSourceError
from ingest.redact import redact_url


class SourceKind(StrEnum):
    """The four families of sources, which differ in how they open and whether they end."""

    FILE = "file"
    RTSP = "rtsp"
    HTTP = "http"
    WEBCAM = "webcam"


class Transport(StrEnum):
    """RTSP's media transport: TCP (interleaved, works through NAT; the default) or UDP."""

    TCP = "tcp"
    UDP = "udp"


_SCHEMES: dict[str, SourceKind] = {
    "rtsp": SourceKind.RTSP,
    "rtsps": SourceKind.RTSP,
    "http": SourceKind.HTTP,
    "https": SourceKind.HTTP,
}
_SOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_SUPPORTED = (
    "rtsp://, rtsps://, http://, https://, a file path or file:// URL, "
    "/dev/videoN or a webcam index"
)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed source. Build it with :meth:`parse`.

    ``location`` is what the decoder opens (a path, a URL with its credentials, a device path or
    index) and is kept out of ``repr``; use ``display`` for anything a person reads.
    ``live`` is True for RTSP and webcams (they never end; they reconnect), False for files, and
    for HTTP either what the caller said or None: decided when the stream opens (a stream that
    declares a duration is a recording and ends; one that does not is live).
    """

    source_id: str
    kind: SourceKind
    location: str = field(repr=False)
    transport: Transport | None = None
    live: bool | None = False
    display: str = ""

    @classmethod
    def parse(
        cls,
        text: str,
        source_id: str | None = None,
        *,
        transport: Transport | str | None = None,
        live: bool | None = None,
    ) -> SourceSpec:
        """Parse ``text`` into a spec.

        Accepted: ``rtsp://`` / ``rtsps://`` URLs (``transport`` tcp by default, or udp),
        ``http(s)://`` URLs FFmpeg can open, file paths and ``file://`` URLs, ``/dev/...`` video
        devices and webcam indexes (``0`` means ``/dev/video0`` on Linux). ``source_id`` names
        the source in frames, logs and metrics; it is derived from the text when omitted.
        ``live`` overrides the auto-detection for HTTP sources only.
        Raises :class:`InvalidSourceError` with a sentence saying what is wrong.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidSourceError(f"the source is empty; give {_SUPPORTED}")
        text = text.strip()
        shown = redact_url(text)
        if any(ord(ch) < 32 for ch in text):
            raise InvalidSourceError(f"the source {shown!r} contains control characters")
        kind, location, default_id = _classify(text, shown)

        if transport is not None and kind is not SourceKind.RTSP:
            raise InvalidSourceError(
                f"a transport (tcp/udp) applies only to RTSP sources, not to {shown!r}",
                source=shown,
            )
        resolved_transport: Transport | None = None
        if kind is SourceKind.RTSP:
            try:
                resolved_transport = (
                    Transport(str(transport).lower()) if transport else Transport.TCP
                )
            except ValueError:
                raise InvalidSourceError(
                    f"unknown RTSP transport {transport!r}; use 'tcp' or 'udp'", source=shown
                ) from None

        resolved_live: bool | None
        if kind is SourceKind.HTTP:
            resolved_live = live
        else:
            resolved_live = kind in (SourceKind.RTSP, SourceKind.WEBCAM)
            if live is not None and live != resolved_live:
                what = "live" if resolved_live else "a recording"
                raise InvalidSourceError(
                    f"{shown!r} is always {what}; 'live' can be chosen only for HTTP sources",
                    source=shown,
                )

        sid = _check_source_id(source_id, shown) if source_id is not None else default_id
        return cls(
            source_id=sid,
            kind=kind,
            location=location,
            transport=resolved_transport,
            live=resolved_live,
            display=shown,
        )

    def __post_init__(self) -> None:
        if not self.display:
            object.__setattr__(self, "display", redact_url(self.location))

    def __str__(self) -> str:
        return f"{self.source_id} ({self.display})"

    def __repr__(self) -> str:
        return (
            f"SourceSpec(source_id={self.source_id!r}, kind={self.kind.value!r}, "
            f"display={self.display!r}, transport={self.transport}, live={self.live})"
        )


def _check_source_id(source_id: str, shown: str) -> str:
    if not _SOURCE_ID.fullmatch(source_id):
        raise InvalidSourceError(
            f"source id {source_id!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            source=shown,
        )
    return source_id


def _derive_id(raw: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", raw).strip("-._")[:64]
    return cleaned if cleaned and _SOURCE_ID.fullmatch(cleaned) else fallback


def _classify(text: str, shown: str) -> tuple[SourceKind, str, str]:
    """Return (kind, location to open, default source id)."""
    if text.isdigit():
        index = int(text)
        device = f"/dev/video{index}" if sys.platform.startswith("linux") else str(index)
        return SourceKind.WEBCAM, device, f"video{index}"
    if text.startswith("/dev/"):
        return SourceKind.WEBCAM, text, _derive_id(PurePath(text).name, "webcam")

    scheme_match = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):", text)
    # A one-letter "scheme" is a Windows drive letter (C:\clips\a.mp4): a path.
    if scheme_match is None or len(scheme_match.group(1)) == 1:
        return SourceKind.FILE, text, _derive_id(PurePath(text).stem, "file")
    scheme = scheme_match.group(1).lower()
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise InvalidSourceError(
                f"{shown!r} is not a local file URL; write file:///absolute/path", source=shown
            )
        path = unquote(parts.path)
        return SourceKind.FILE, path, _derive_id(PurePath(path).stem, "file")
    if scheme not in _SCHEMES:
        raise InvalidSourceError(
            f"unsupported source scheme {scheme!r} in {shown!r}; use {_SUPPORTED}", source=shown
        )
    if not text.lower().startswith(f"{scheme}://"):
        raise InvalidSourceError(
            f"{shown!r} is not a URL; write {scheme}://host/path", source=shown
        )
    parts = urlsplit(text)
    try:
        host = parts.hostname
        _port = parts.port
    except ValueError as exc:
        raise InvalidSourceError(
            f"{shown!r} has an invalid host or port: {exc}", source=shown
        ) from None
    if not host:
        raise InvalidSourceError(f"{shown!r} has no host name", source=shown)
    if any(ch.isspace() for ch in text):
        raise InvalidSourceError(
            f"{shown!r} contains spaces; percent-encode them (%20)", source=shown
        )
    tail = PurePath(parts.path).name
    default_id = _derive_id(f"{host}-{tail}" if tail else host, scheme)
    return _SCHEMES[scheme], text, default_id
