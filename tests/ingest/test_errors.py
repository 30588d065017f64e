"""Every bad input gives its documented error, quickly, and never a credential."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ingest import (
    BackoffPolicy,
    CorruptSourceError,
    IngestError,
    IngestOptions,
    InvalidSourceError,
    NoVideoStreamError,
    SourceNotFoundError,
    SourceSpec,
    SourceState,
    SourceUnreachableError,
    TruncatedSourceError,
    UnsupportedCodecError,
    open_source,
    probe_source,
)

from .conftest import Clips, read_barcode

QUICK = IngestOptions(
    realtime=False,
    open_timeout_s=3.0,
    read_timeout_s=2.0,
    backoff=BackoffPolicy(initial_s=0.05, max_s=0.2),
)

BAD_FILES = [
    ("missing.mp4", SourceNotFoundError, "no such file"),
    ("junk.mp4", CorruptSourceError, "not a video file"),
    ("empty.mp4", CorruptSourceError, "not a video file"),
    ("no_index.mp4", CorruptSourceError, "corrupt or truncated"),
    ("audio_only.m4a", NoVideoStreamError, "no video track"),
    ("unknown_codec.avi", UnsupportedCodecError, "cannot decode"),
]


@pytest.mark.parametrize(("name", "error", "fragment"), BAD_FILES)
async def test_bad_file_fails_at_open(
    clips: Clips, name: str, error: type[IngestError], fragment: str
) -> None:
    path = str(clips.path(name))
    with pytest.raises(error, match=fragment):
        await asyncio.wait_for(probe_source(path, QUICK), 20)
    source = open_source(SourceSpec.parse(path), QUICK)
    with pytest.raises(error, match=fragment):
        await asyncio.wait_for(source.start(), 20)
    assert source.state is SourceState.ENDED
    assert source.history[-1].reason.startswith("failed: ")
    with pytest.raises(StopAsyncIteration):  # the error was raised once; the iterator is over
        await anext(source)


async def test_directory_is_not_a_video(clips: Clips) -> None:
    with pytest.raises(InvalidSourceError, match="is a directory"):
        await asyncio.wait_for(probe_source(str(clips.root), QUICK), 20)


async def test_truncated_file_delivers_good_frames_then_raises(clips: Clips) -> None:
    frames = []
    options = IngestOptions(fps=None, realtime=False)
    source = open_source(SourceSpec.parse(str(clips.path("truncated.mp4"))), options)
    with pytest.raises(TruncatedSourceError, match="truncated"):
        async with source:
            async for frame in source:
                frames.append(frame)
    assert 5 <= len(frames) < 100  # the frames before the cut, in order
    assert [read_barcode(f.image) for f in frames] == list(range(len(frames)))
    assert source.state is SourceState.ENDED
    assert "truncated" in source.history[-1].reason


async def test_intact_files_are_not_reported_truncated(clips: Clips) -> None:
    for name in ("faststart.mp4", "cfr.mkv", "cfr.avi", "audio.mp4", "vfr.mkv"):
        async with open_source(SourceSpec.parse(str(clips.path(name))), QUICK) as source:
            assert [f async for f in source]
        assert source.history[-1].reason == "end of file", name


async def test_connection_refused_is_clear_and_redacted(free_port: int) -> None:
    url = f"rtsp://admin:Sup3rSecret@127.0.0.1:{free_port}/live"
    with pytest.raises(SourceUnreachableError) as info:
        await asyncio.wait_for(probe_source(url, QUICK), 20)
    message = str(info.value)
    assert "connection refused" in message and f"127.0.0.1:{free_port}" in message
    assert "Sup3rSecret" not in message and "admin:***@" in message


async def test_unknown_host_is_unreachable() -> None:
    with pytest.raises(SourceUnreachableError, match=r"nonexistent\.invalid"):
        await asyncio.wait_for(probe_source("rtsp://nonexistent.invalid/x", QUICK), 30)


async def test_missing_webcam(caplog: pytest.LogCaptureFixture) -> None:
    spec = SourceSpec.parse("/dev/video97")
    with pytest.raises(SourceNotFoundError, match="/dev/video97"):
        await asyncio.wait_for(probe_source(spec, QUICK), 20)
    # As a running source, a missing camera is a state (it may be plugged in later), not an error.
    caplog.set_level(logging.INFO, logger="ingest")
    async with open_source(spec, QUICK) as source:
        change = await source.wait_for_state(SourceState.OFFLINE, timeout=10)
        assert "/dev/video97" in change.reason and "retrying in" in change.reason
        while source.counters().connect_attempts < 3:
            await asyncio.sleep(0.05)
        assert source.state is SourceState.OFFLINE
    assert source.state is SourceState.ENDED
    assert any("offline" in r.getMessage() for r in caplog.records)
