"""One camera's feed: real ingest on generated clips, the real camera board and engine, with a
worker that records what it was given."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ingest import IngestOptions
from stream_agent.cameras import CameraBoard
from stream_agent.config import CameraConfig, EngineConfig
from stream_agent.engine import Engine, FrameBatch, FrameLike
from stream_agent.pipeline import CameraFeed
from tests.ingest.conftest import read_barcode, write_clip
from tests.stream_agent.engine.fake_worker import FakeWorker

CLIP_FRAMES = 10


class RecordingWorker(FakeWorker):
    """The fake worker, keeping every frame it was asked to encode (in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[FrameLike] = []
        self._lock = threading.Lock()

    def encode(self, batch: FrameBatch) -> None:
        with self._lock:
            self.received.extend(batch.frames)
        super().encode(batch)

    def seen(self) -> list[FrameLike]:
        with self._lock:
            return list(self.received)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("feed") / "short.mp4", range(CLIP_FRAMES))


@pytest.fixture
async def engine() -> AsyncIterator[tuple[Engine, RecordingWorker]]:
    worker = RecordingWorker()
    engine = Engine(worker, EngineConfig(frame_queue_per_camera=256))
    engine.start()
    try:
        yield engine, worker
    finally:
        await engine.aclose("cancel", grace_s=5)


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def fast(**kwargs: object) -> IngestOptions:
    return IngestOptions(fps=None, realtime=False, **kwargs)  # type: ignore[arg-type]


async def test_frames_reach_the_engine_and_the_board(
    clip: Path, engine: tuple[Engine, RecordingWorker]
) -> None:
    eng, worker = engine
    board = CameraBoard(["dock"], evidence_max_side=32)
    feed = CameraFeed(
        CameraConfig(name="dock", path=clip), str(clip), engine=eng, board=board, options=fast()
    )
    await asyncio.wait_for(feed.run(), 30)  # a recording ends by itself
    await _until(lambda: len(worker.seen()) == CLIP_FRAMES)
    got = worker.seen()
    assert [f.seq for f in got] == list(range(CLIP_FRAMES))
    assert [read_barcode(f.image) for f in got] == list(range(CLIP_FRAMES))
    assert {f.source_id for f in got} == {"dock"} and {f.session for f in got} == {0}
    latest = board.latest_frame("dock")
    assert latest is not None and latest.seq == CLIP_FRAMES - 1
    (view,) = board.views()
    assert view.state == "ended" and view.frames == CLIP_FRAMES
    assert board.frame_at("dock", got[3].wall_time, tolerance_s=0.0) is not None


async def test_a_source_that_cannot_be_parsed_ends_with_a_reason(
    engine: tuple[Engine, RecordingWorker],
) -> None:
    eng, worker = engine
    board = CameraBoard(["dock"])
    camera = CameraConfig(name="dock", url="rtsp://user:hunter22@cam.local:99999/x")
    feed = CameraFeed(camera, camera.location, engine=eng, board=board)
    await asyncio.wait_for(feed.run(), 10)  # returns: the failure is a state, not an exception
    (view,) = board.views()
    assert view.state == "ended" and view.reason
    assert "hunter22" not in view.reason and "hunter22" not in feed.display
    assert worker.seen() == []


class HoldingBoard(CameraBoard):
    """A board whose first ``offer_frame`` waits until ``release()`` returns True: it holds the
    feed between taking a frame from ingest and submitting it to the engine."""

    def __init__(self, names: list[str], release: Callable[[], bool]) -> None:
        super().__init__(names, evidence_bytes=0)
        self._release = release
        self.held = False

    def offer_frame(self, frame: FrameLike) -> None:
        if not self.held:
            self.held = True
            deadline = time.monotonic() + 20
            while not self._release():
                if time.monotonic() > deadline:
                    raise AssertionError("the source never started a new session")
                time.sleep(0.01)
        super().offer_frame(frame)


async def test_a_frame_decoded_before_a_reconnect_keeps_the_old_session(
    clip: Path, engine: tuple[Engine, RecordingWorker]
) -> None:
    """The race: a frame decoded in session 0 and consumed after the source opened session 1
    must reach the engine as session 0, or it would become the cacher's reference after the
    reset. A looped file opens a new session at each pass, like a reconnect."""
    eng, worker = engine
    feed: CameraFeed | None = None

    def reconnected() -> bool:
        source = feed._source if feed is not None else None
        return source is not None and source.counters().reconnects >= 1

    board = HoldingBoard(["dock"], reconnected)
    feed = CameraFeed(
        CameraConfig(name="dock", path=clip),
        str(clip),
        engine=eng,
        board=board,
        options=fast(loop=True, queue_size=4 * CLIP_FRAMES),
    )
    task = asyncio.create_task(feed.run())
    try:
        await _until(lambda: len(worker.seen()) >= 2 * CLIP_FRAMES + 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    got = worker.seen()
    assert board.held
    assert [f.seq for f in got] == list(range(len(got)))
    assert [f.session for f in got] == [f.seq // CLIP_FRAMES for f in got]
