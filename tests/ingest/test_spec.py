"""Parsing source text into a SourceSpec, and validating options."""

from __future__ import annotations

import sys

import pytest

from ingest import (
    BackoffPolicy,
    IngestOptions,
    InvalidOptionsError,
    InvalidSourceError,
    OverflowPolicy,
    SourceKind,
    SourceSpec,
    Transport,
)


@pytest.mark.parametrize(
    ("text", "kind", "location", "source_id", "live"),
    [
        (
            "rtsp://cam.local:8554/live",
            SourceKind.RTSP,
            "rtsp://cam.local:8554/live",
            "cam.local-live",
            True,
        ),
        ("RTSPS://cam/x", SourceKind.RTSP, "RTSPS://cam/x", "cam-x", True),
        (
            "http://10.0.0.2/video.mjpg",
            SourceKind.HTTP,
            "http://10.0.0.2/video.mjpg",
            "10.0.0.2-video.mjpg",
            None,
        ),
        (
            "https://example.org/a/clip.mp4",
            SourceKind.HTTP,
            "https://example.org/a/clip.mp4",
            "example.org-clip.mp4",
            None,
        ),
        ("/data/front door.mp4", SourceKind.FILE, "/data/front door.mp4", "front-door", False),
        ("clip.mkv", SourceKind.FILE, "clip.mkv", "clip", False),
        ("file:///data/my%20clip.avi", SourceKind.FILE, "/data/my clip.avi", "my-clip", False),
        ("/dev/video2", SourceKind.WEBCAM, "/dev/video2", "video2", True),
        ("C:\\clips\\a.mp4", SourceKind.FILE, "C:\\clips\\a.mp4", "C-clips-a", False),
    ],
)
def test_parse_kinds(
    text: str, kind: SourceKind, location: str, source_id: str, live: bool | None
) -> None:
    spec = SourceSpec.parse(text)
    assert (spec.kind, spec.location, spec.live) == (kind, location, live)
    if not text.startswith("C:"):  # PurePath on POSIX keeps backslashes in the stem
        assert spec.source_id == source_id
    assert spec.transport == (Transport.TCP if kind is SourceKind.RTSP else None)


def test_webcam_index() -> None:
    spec = SourceSpec.parse("0")
    assert spec.kind is SourceKind.WEBCAM
    assert spec.source_id == "video0"
    expected = "/dev/video0" if sys.platform.startswith("linux") else "0"
    assert spec.location == expected


def test_transport_and_source_id() -> None:
    spec = SourceSpec.parse("rtsp://u:p@cam/s", source_id="cam1", transport="UDP")
    assert spec.transport is Transport.UDP
    assert spec.source_id == "cam1"


def test_http_live_override() -> None:
    assert SourceSpec.parse("http://h/x", live=True).live is True
    assert SourceSpec.parse("http://h/x", live=False).live is False


def test_credentials_stay_out_of_repr_and_str() -> None:
    spec = SourceSpec.parse("rtsp://admin:hunter22@cam:554/live?token=abcdef")
    assert spec.location == "rtsp://admin:hunter22@cam:554/live?token=abcdef"
    for text in (repr(spec), str(spec), spec.display):
        assert "hunter22" not in text and "abcdef" not in text
    assert spec.display == "rtsp://admin:***@cam:554/live?token=***"


@pytest.mark.parametrize(
    ("text", "kwargs", "fragment"),
    [
        ("", {}, "empty"),
        ("   ", {}, "empty"),
        ("ftp://host/a.mp4", {}, "unsupported source scheme 'ftp'"),
        ("rtmp://host/live", {}, "unsupported source scheme 'rtmp'"),
        ("rtsp:cam", {}, "not a URL"),
        ("rtsp:///path", {}, "no host"),
        ("rtsp://cam:99999/x", {}, "invalid host or port"),
        ("rtsp://cam:abc/x", {}, "invalid host or port"),
        ("http://host/a b.mp4", {}, "spaces"),
        ("file://server/share/a.mp4", {}, "not a local file URL"),
        ("rtsp://cam/x\n", {"source_id": "bad id"}, "source id"),
        ("rtsp://cam/x", {"source_id": "a/b"}, "source id"),
        ("rtsp://cam/x", {"transport": "sctp"}, "unknown RTSP transport"),
        ("clip.mp4", {"transport": "tcp"}, "only to RTSP"),
        ("clip.mp4", {"live": True}, "only for HTTP"),
        ("rtsp://cam/x", {"live": False}, "only for HTTP"),
        ("rtsp://cam/\x01", {}, "control characters"),
    ],
)
def test_bad_sources(text: str, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidSourceError, match=fragment) as info:
        SourceSpec.parse(text, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_bad_source_message_is_redacted() -> None:
    with pytest.raises(InvalidSourceError) as info:
        SourceSpec.parse("rtmp://user:s3cr3tpw@host/live")
    assert "s3cr3tpw" not in str(info.value)
    assert "user:***@host" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fps": 0},
        {"fps": -1.0},
        {"fps": float("nan")},
        {"max_size": (0, 10)},
        {"max_size": (10,)},
        {"open_timeout_s": 0},
        {"read_timeout_s": float("inf")},
        {"queue_size": 0},
        {"overflow": "spill"},
        {"decoder": "gstreamer"},
        {"decoder_threads": -1},
    ],
)
def test_bad_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidOptionsError):
        IngestOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0},
        {"max_s": 0.1, "initial_s": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"reset_after_s": -1},
    ],
)
def test_bad_backoff(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidOptionsError):
        BackoffPolicy(**kwargs)


def test_handoff_defaults() -> None:
    options = IngestOptions()
    assert options.handoff_for(live_like=True) == (OverflowPolicy.DROP_OLDEST, 1)
    assert options.handoff_for(live_like=False) == (OverflowPolicy.BLOCK, 8)
    forced = IngestOptions(overflow="drop_oldest", queue_size=3)  # type: ignore[arg-type]
    assert forced.handoff_for(live_like=False) == (OverflowPolicy.DROP_OLDEST, 3)
