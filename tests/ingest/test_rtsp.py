"""Live RTSP against a real GStreamer RTSP server: frames, stalls, restarts, nothing listening.

The server runs as a subprocess of Debian's /usr/bin/python3 (see tests/support/rtsp_server.py).
SIGSTOP on it simulates a stalled camera, SIGTERM a dropped one. Timeouts are short so that each
test takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest

from ingest import (
    BackoffPolicy,
    Frame,
    IngestOptions,
    SourceNotFoundError,
    SourceSpec,
    SourceState,
    Transport,
    VideoSource,
    open_source,
    probe_source,
)
from tests.support.rtsp import RtspServer

READ_TIMEOUT = 2.0
LIVE = IngestOptions(
    fps=2.0,
    open_timeout_s=2.0,
    read_timeout_s=READ_TIMEOUT,
    backoff=BackoffPolicy(initial_s=0.2, max_s=1.0, reset_after_s=1.0),
)
SECRET = "Cam3raPass"


class Collector:
    """Consumes a source in a background task, keeping every frame it gets."""

    def __init__(self, source: VideoSource) -> None:
        self.source = source
        self.frames: list[Frame] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for frame in self.source:
            self.frames.append(frame)

    async def frame_after(self, wall_time: float, timeout: float) -> Frame:
        """The first frame captured after ``wall_time``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = [f for f in self.frames if f.wall_time > wall_time]
            if fresh:
                return fresh[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no frame after {wall_time} within {timeout} s")

    async def stop(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task


@asynccontextmanager
async def watched(url: str, **parse: object) -> AsyncIterator[tuple[VideoSource, Collector]]:
    spec = SourceSpec.parse(url, source_id="cam", **parse)  # type: ignore[arg-type]
    async with open_source(spec, LIVE) as source:
        collector = Collector(source)
        try:
            yield source, collector
        finally:
            await collector.stop()


def assert_monotonic(frames: list[Frame]) -> None:
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)


@pytest.mark.rtsp
@pytest.mark.parametrize("transport", [Transport.TCP, Transport.UDP])
async def test_frames_arrive(rtsp_server: RtspServer, transport: Transport) -> None:
    url = rtsp_server.url(f"viewer:{SECRET}")
    async with watched(url, transport=transport) as (source, collector):
        await source.wait_for_state(SourceState.ONLINE, timeout=15)
        await collector.frame_after(0, 15)
        while len(collector.frames) < 4:
            await asyncio.sleep(0.05)
        info = source.info
    frames = collector.frames
    assert_monotonic(frames)
    assert frames[0].pts == 0.0
    assert [f.pts for f in frames[:4]] == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=0.06)
    assert info is not None
    assert (info.codec, info.live, info.transport, info.kind) == ("h264", True, transport, "rtsp")
    assert frames[0].image.shape == (info.height, info.width, 3)
    assert SECRET not in info.url and SECRET not in repr(source.spec)


async def stall(server: RtspServer, source: VideoSource, collector: Collector) -> Frame:
    """Freeze the server; check the stall is reported within the read timeout of the last frame.
    Returns the last frame before the stall."""
    await source.wait_for_state(SourceState.ONLINE, timeout=15)
    await collector.frame_after(time.time() + 1.0, 15)
    server.signal(signal.SIGSTOP)
    stalled = await source.wait_for_state(SourceState.STALLED, timeout=20)
    # Data already sent drains first; from the last frame on, the read timeout decides.
    last = collector.frames[-1]
    assert stalled.wall_time - last.wall_time <= READ_TIMEOUT + 1.5
    assert "no data for 2." in stalled.reason
    return last


@pytest.mark.rtsp
async def test_short_stall_recovers_on_the_same_connection(rtsp_server: RtspServer) -> None:
    async with watched(rtsp_server.url()) as (source, collector):
        before = await stall(rtsp_server, source, collector)
        resumed_at = time.time()
        rtsp_server.signal(signal.SIGCONT)  # within the second read timeout: same connection
        online = await source.wait_for_state(SourceState.ONLINE, timeout=20)
        fresh = await collector.frame_after(resumed_at, 20)
        counters = source.counters()
    assert fresh.pts > before.pts
    assert counters.stalls == 1
    if counters.reconnects == 0:
        assert online.reason == "receiving again after a stall"
    assert_monotonic(collector.frames)


@pytest.mark.rtsp
async def test_long_stall_recovers_by_reconnecting(rtsp_server: RtspServer) -> None:
    async with watched(rtsp_server.url()) as (source, collector):
        before = await stall(rtsp_server, source, collector)
        # Stay frozen until the connection is given up and a reconnect attempt has failed.
        deadline = time.monotonic() + 20
        while source.counters().connect_failures < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert source.counters().connect_failures >= 1
        assert source.state in (SourceState.STALLED, SourceState.OFFLINE)
        resumed_at = time.time()
        rtsp_server.signal(signal.SIGCONT)
        await source.wait_for_state(SourceState.ONLINE, timeout=20)
        fresh = await collector.frame_after(resumed_at, 20)
        counters = source.counters()
    assert counters.stalls == 1 and counters.reconnects >= 1
    # A new session restarts the stream's clock; the timeline bridges the outage with the wall
    # clock instead (give or take the second FFmpeg buffers while probing and the sampling step).
    assert fresh.pts - before.pts >= fresh.wall_time - before.wall_time - 3.0
    assert_monotonic(collector.frames)
    states = [c.state for c in source.history]
    assert states[:3] == [SourceState.CONNECTING, SourceState.ONLINE, SourceState.STALLED]
    assert states[-1] is SourceState.ENDED


@pytest.mark.rtsp
async def test_server_restart_reconnects_the_same_reader(rtsp_server: RtspServer) -> None:
    async with watched(rtsp_server.url()) as (source, collector):
        await source.wait_for_state(SourceState.ONLINE, timeout=15)
        await collector.frame_after(time.time() + 1.0, 15)
        rtsp_server.terminate()
        down = await source.wait_for_state(SourceState.OFFLINE, timeout=20)
        assert "reconnecting in" in down.reason or "retrying in" in down.reason
        failures = source.counters().connect_failures
        deadline = time.monotonic() + 10
        while source.counters().connect_failures < failures + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert source.counters().connect_failures >= failures + 2  # refused, and retrying
        assert source.state is SourceState.OFFLINE
        restarted_at = time.time()
        rtsp_server.start()  # same port
        await source.wait_for_state(SourceState.ONLINE, timeout=20)
        await collector.frame_after(restarted_at, 20)
        counters = source.counters()
    assert counters.reconnects >= 1
    assert_monotonic(collector.frames)


async def test_nothing_listening_stays_offline_with_backoff(
    free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """No server at all: offline, retried forever, paced by the backoff (no GStreamer needed)."""
    caplog.set_level(logging.DEBUG, logger="ingest")
    options = IngestOptions(
        open_timeout_s=2.0,
        read_timeout_s=2.0,
        backoff=BackoffPolicy(initial_s=0.1, max_s=0.4, jitter=0.25),
    )
    spec = SourceSpec.parse(f"rtsp://admin:{SECRET}@127.0.0.1:{free_port}/live", source_id="cam")
    async with open_source(spec, options) as source:
        offline = await source.wait_for_state(SourceState.OFFLINE, timeout=10)
        assert "connection refused" in offline.reason and "retrying in" in offline.reason
        await asyncio.sleep(3.0)
        counters = source.counters()
        assert source.state is SourceState.OFFLINE
    # 3 s of delays of 0.1, 0.2, then at most 0.4 each (at least 0.3 with jitter): between 4
    # and about 12 attempts; retrying without backoff would make hundreds.
    assert 4 <= counters.connect_attempts <= 14
    assert counters.connect_failures == counters.connect_attempts
    text = caplog.text + "".join(c.reason for c in source.history)
    assert SECRET not in text
    assert f"admin:***@127.0.0.1:{free_port}" in text


@pytest.mark.rtsp
async def test_wrong_path_is_not_found(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url().replace("/test", "/nothing-here")
    with pytest.raises(SourceNotFoundError, match="404"):
        await asyncio.wait_for(probe_source(url, LIVE), 20)
