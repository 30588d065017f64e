"""Reading files: exact sampling, containers, audio, VFR, rotation, sizes, pacing, looping."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from ingest import (
    Decoder,
    Frame,
    IngestOptions,
    SourceSpec,
    SourceState,
    open_source,
    probe_source,
)

from .conftest import Clips, read_barcode, write_clip


async def read_all(path: Path, options: IngestOptions, limit: int | None = None) -> list[Frame]:
    frames: list[Frame] = []
    async with open_source(SourceSpec.parse(str(path), source_id="clip"), options) as source:
        async for frame in source:
            frames.append(frame)
            if limit is not None and len(frames) >= limit:
                break
    return frames


def fast(**kwargs: object) -> IngestOptions:
    return IngestOptions(realtime=False, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["cfr.mp4", "cfr.mkv", "cfr.avi"])
async def test_one_fps_of_a_ten_fps_clip(clips: Clips, name: str) -> None:
    frames = await asyncio.wait_for(read_all(clips.path(name), fast(fps=1.0)), 30)
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert [read_barcode(f.image) for f in frames] == [0, 10, 20, 30, 40]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert {f.source_id for f in frames} == {"clip"}
    assert all(f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3) for f in frames)


async def test_three_fps_takes_the_first_frame_at_or_after_each_tick(clips: Clips) -> None:
    frames = await read_all(clips.path("cfr.mp4"), fast(fps=3.0))
    # ticks at 0, 1/3, 2/3, 1, ...: frames at 0.0, 0.4, 0.7, 1.0, 1.4, 1.7, ...
    expected = [i for i in range(50) if i == 0 or (i * 3) // 10 > ((i - 1) * 3) // 10]
    assert [read_barcode(f.image) for f in frames] == expected
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in expected])


async def test_every_frame_when_fps_is_none(clips: Clips) -> None:
    frames = await read_all(clips.path("cfr.mkv"), fast(fps=None))
    assert [read_barcode(f.image) for f in frames] == list(range(50))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(50)])


async def test_variable_frame_rate(clips: Clips) -> None:
    frames = await read_all(clips.path("vfr.mkv"), fast(fps=1.0))
    assert [f.pts for f in frames] == pytest.approx([0.0, 1.2, 2.5, 4.0])
    assert [read_barcode(f.image) for f in frames] == [0, 4, 5, 7]
    every = await read_all(clips.path("vfr.mkv"), fast(fps=None))
    assert [f.pts for f in every] == pytest.approx([0, 0.05, 0.3, 0.31, 1.2, 2.5, 2.6, 4.0])


async def test_audio_track_is_ignored(clips: Clips) -> None:
    path = clips.path("audio.mp4")
    info = await probe_source(str(path))
    assert info.has_audio and info.codec == "h264"
    frames = await read_all(path, fast(fps=2.0))
    assert [read_barcode(f.image) for f in frames] == [0, 5, 10, 15, 20, 25]


async def test_rotation_metadata_is_applied(clips: Clips) -> None:
    path = clips.path("rotated.mp4")
    info = await probe_source(str(path))
    assert (info.rotation, info.width, info.height) == (90, 48, 64)
    frames = await read_all(path, fast(fps=None))
    assert len(frames) == 20
    assert frames[0].image.shape == (64, 48, 3)
    # The stripes were vertical; rotated a quarter turn counter-clockwise they are horizontal,
    # bit 0 (the left stripe) now at the bottom.
    for frame in frames:
        upright = np.rot90(frame.image, k=-1)
        assert read_barcode(upright) == frame.seq


async def test_odd_size(clips: Clips) -> None:
    frames = await read_all(clips.path("odd.mkv"), fast(fps=None))
    assert [f.image.shape for f in frames] == [(37, 67, 3)] * 20
    assert [read_barcode(f.image) for f in frames] == list(range(20))


@pytest.mark.parametrize(
    ("name", "box", "shape"),
    [
        ("cfr.mp4", (32, 32), (24, 32, 3)),
        ("cfr.mp4", (1000, 1000), (48, 64, 3)),  # never scaled up
        ("cfr.mp4", (64, 24), (24, 32, 3)),
        ("rotated.mp4", (32, 32), (32, 24, 3)),  # fitted after rotation
        ("odd.mkv", (33, 33), (18, 33, 3)),
    ],
)
async def test_resize_keeps_aspect(
    clips: Clips, name: str, box: tuple[int, int], shape: tuple[int, int, int]
) -> None:
    frames = await read_all(clips.path(name), fast(fps=None, max_size=box), limit=3)
    assert all(f.image.shape == shape for f in frames)
    assert all(f.image.flags.c_contiguous for f in frames)
    if name != "rotated.mp4":
        assert [read_barcode(f.image) for f in frames] == [0, 1, 2]


async def test_shared_clip_at_one_fps(shared_clip: Path) -> None:
    frames = await asyncio.wait_for(read_all(shared_clip, fast(fps=1.0)), 120)
    assert len(frames) in (139, 140)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert pts[0] == 0.0
    assert pts == pytest.approx(list(range(len(frames))))
    assert frames[0].image.shape == (432, 768, 3)


async def test_states_and_counters_of_a_file(clips: Clips) -> None:
    seen = []
    source = open_source(
        SourceSpec.parse(str(clips.path("cfr.mp4"))), fast(fps=2.0), on_state_change=seen.append
    )
    async with source:
        changes = source.state_changes(include_history=True)
        frames = [f async for f in source]
        states = [c.state async for c in changes]
    assert states == [SourceState.CONNECTING, SourceState.ONLINE, SourceState.ENDED]
    assert source.history[-1].reason == "end of file"
    await asyncio.sleep(0)  # listeners run on the loop
    assert [c.state for c in seen] == states
    assert source.state is SourceState.ENDED
    counters = source.counters()
    assert (counters.decoded, counters.sampled, counters.delivered) == (50, 10, 10)
    assert counters.dropped_stale == 0 and counters.decode_errors == 0
    assert counters.connect_attempts == 1 and counters.reconnects == 0
    assert len(frames) == 10
    assert source.info is not None and source.info.live is False


async def test_realtime_replay_is_paced_by_timestamps(clips: Clips) -> None:
    started = time.monotonic()
    frames = await read_all(clips.path("short.mp4"), IngestOptions(fps=5.0))
    elapsed = time.monotonic() - started
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    # Never delivered ahead of its timestamp (a lower bound only: a busy machine may be slower).
    assert frames[-1].wall_time - frames[0].wall_time >= 0.8 - 0.02
    assert elapsed >= 0.8 - 0.02


async def test_realtime_slow_consumer_gets_newest_frames(clips: Clips) -> None:
    """Real-time replay behaves like a live camera: a slow consumer sees the newest frames."""
    got = []
    source = open_source(SourceSpec.parse(str(clips.path("cfr.mkv"))), IngestOptions(fps=None))
    async with source:
        async for frame in source:
            got.append(frame.seq)
            await asyncio.sleep(0.35)
    counters = source.counters()
    assert counters.sampled == 50
    assert counters.dropped_stale > 0
    assert counters.delivered + counters.dropped_stale == counters.sampled
    assert got == sorted(got) and got[-1] == 49  # the last frame is never lost


async def test_fast_mode_slow_consumer_loses_nothing(clips: Clips) -> None:
    got = []
    source = open_source(SourceSpec.parse(str(clips.path("cfr.mp4"))), fast(fps=None))
    async with source:
        async for frame in source:
            got.append(read_barcode(frame.image))
            if len(got) % 10 == 0:
                await asyncio.sleep(0.05)
    assert got == list(range(50))
    assert source.counters().dropped_stale == 0


async def test_loop_replays_with_increasing_timestamps(clips: Clips) -> None:
    frames = await read_all(clips.path("short.mp4"), fast(fps=None, loop=True), limit=25)
    assert [read_barcode(f.image) for f in frames] == [i % 10 for i in range(25)]
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(25)])
    assert [f.seq for f in frames] == list(range(25))


async def test_each_frame_carries_the_session_it_was_decoded_in(clips: Clips) -> None:
    """The race of a reconnect (here: a loop restart, which opens a new session) with the
    consumer: frames decoded before it but taken after it keep the old session number."""
    options = fast(fps=None, loop=True, queue_size=32)
    spec = SourceSpec.parse(str(clips.path("short.mp4")), source_id="clip")
    frames: list[Frame] = []
    async with open_source(spec, options) as source:
        async for frame in source:
            frames.append(frame)
            if len(frames) == 1:
                # hold the consumer until the decode thread has started its second pass
                deadline = time.monotonic() + 20
                while source.counters().reconnects < 1:
                    assert time.monotonic() < deadline, "the file never looped"
                    await asyncio.sleep(0.01)
            if len(frames) >= 25:
                break
        reconnects = source.counters().reconnects
    assert reconnects >= 2
    assert [f.seq for f in frames] == list(range(25))
    assert [f.session for f in frames] == [f.seq // 10 for f in frames]


async def test_opencv_decoder_agrees_with_pyav(clips: Clips) -> None:
    for name in ("cfr.mp4", "rotated.mp4"):
        path = clips.path(name)
        via_pyav = await read_all(path, fast(fps=2.0))
        via_cv = await read_all(path, fast(fps=2.0, decoder=Decoder.OPENCV))
        assert [f.pts for f in via_cv] == pytest.approx([f.pts for f in via_pyav])
        for a, b in zip(via_pyav, via_cv, strict=True):
            assert a.image.shape == b.image.shape
            assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 3
    info = await probe_source(str(clips.path("rotated.mp4")), fast(decoder=Decoder.OPENCV))
    assert (info.decoder, info.rotation, info.width, info.height) == ("opencv", 90, 48, 64)


async def test_close_in_the_middle_is_prompt(clips: Clips) -> None:
    source = open_source(SourceSpec.parse(str(clips.path("cfr.mp4"))), IngestOptions(fps=None))
    async with source:
        first = await anext(source)
        assert first.seq == 0
    assert source.state is SourceState.ENDED
    assert source.history[-1].reason == "closed"
    with pytest.raises(StopAsyncIteration):
        await anext(source)


async def test_several_sources_on_one_loop(clips: Clips) -> None:
    names = ["cfr.mp4", "cfr.mkv", "cfr.avi", "audio.mp4"]
    results = await asyncio.gather(*(read_all(clips.path(n), fast(fps=1.0)) for n in names))
    assert [len(r) for r in results] == [5, 5, 5, 3]


@pytest.mark.parametrize("decoder", [Decoder.PYAV, Decoder.OPENCV])
async def test_raw_h264_without_timestamps_delivers_every_frame(
    tmp_path: Path, decoder: Decoder
) -> None:
    """A raw elementary stream carries no pts: all frames come out, in order, and the end of
    the file is a clean end, not a 'damaged file' error."""
    path = write_clip(tmp_path / "raw.h264", range(12), container_options={})
    frames = await read_all(path, fast(fps=None, decoder=decoder))
    assert [read_barcode(f.image) for f in frames] == list(range(12))
    assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))
