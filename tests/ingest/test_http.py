"""HTTP(S) sources, against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ingest import (
    BackoffPolicy,
    IngestOptions,
    OverflowPolicy,
    SourceNotFoundError,
    SourceSpec,
    SourceState,
    open_source,
    probe_source,
)

from .conftest import Clips, read_barcode


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_base(clips: Clips) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(clips.root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


FAST = IngestOptions(realtime=False, open_timeout_s=5, read_timeout_s=5)


async def test_http_recording_ends(http_base: str) -> None:
    spec = SourceSpec.parse(f"{http_base}/cfr.mkv", source_id="web")
    info = await probe_source(spec, FAST)
    assert (info.kind, info.live, info.codec) == ("http", False, "h264")
    async with open_source(spec, FAST) as source:
        frames = [f async for f in source]
    assert [read_barcode(f.image) for f in frames] == [0, 10, 20, 30, 40]
    assert source.history[-1].state is SourceState.ENDED
    assert source.history[-1].reason == "end of file"


async def test_http_forced_live_reconnects_at_the_end(http_base: str) -> None:
    spec = SourceSpec.parse(f"{http_base}/short.mp4", live=True)
    # BLOCK: this test is about the reconnect, not about a slow consumer losing frames.
    options = IngestOptions(
        fps=None,
        overflow=OverflowPolicy.BLOCK,
        queue_size=4,
        backoff=BackoffPolicy(initial_s=0.05, max_s=0.1),
    )
    frames = []
    async with open_source(spec, options) as source:
        async for frame in source:
            frames.append(frame)
            if len(frames) == 15:
                break
        assert source.counters().reconnects >= 1
        assert any(c.state is SourceState.OFFLINE for c in source.history)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert [read_barcode(f.image) for f in frames][9:12] == [9, 0, 1]


async def test_http_not_found(http_base: str) -> None:
    with pytest.raises(SourceNotFoundError, match="404"):
        await asyncio.wait_for(probe_source(f"{http_base}/nothing.mp4", FAST), 20)
