"""Evidence frames on disk: one JPEG per stored block, found by wall time, kept across a
restart, deleted with its block, counted in the disk budget."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from stream_agent.memory import FrameStamp, Memory, MemoryOptions
from stream_agent.memory.frames import BlockFrame, FrameStore, thumbnail_jpeg
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import VisualTokens

from .conftest import WALL0


def _frame(i: int) -> BlockFrame:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    return BlockFrame(thumbnail_jpeg(image), pts=float(i), wall=WALL0 + i + 0.25)


def test_a_frame_is_small_found_by_time_and_survives_a_reopen(tmp_path: Path) -> None:
    store = FrameStore(tmp_path / "frames")
    for i in range(5):
        store.put("door cam/1", i, _frame(i))
    got = store.nearest("door cam/1", WALL0 + 2.0)
    assert got is not None and got.block_id == 2 and got.pts == 2.0
    picture = Image.open(io.BytesIO(got.jpeg))
    assert picture.format == "JPEG" and max(picture.size) == 384
    assert store.nearest("door cam/1", WALL0 + 60) is None  # nothing within 2 s
    assert store.nearest("other", WALL0) is None
    again = FrameStore(tmp_path / "frames")
    assert again.count("door cam/1") == 5 and again.nbytes == store.nbytes > 0
    again.delete("door cam/1", [0, 1])
    again.retain("door cam/1", [2, 3])
    assert again.count("door cam/1") == 2
    assert FrameStore(tmp_path / "frames").count("door cam/1") == 2
    assert len(list((tmp_path / "frames").rglob("*.jpg"))) == 2


def test_the_memory_keeps_a_frame_per_block_and_drops_it_with_the_block(
    llava: VideoLLM, frame_tokens: list[VisualTokens], tmp_path: Path
) -> None:
    frames = FrameStore(tmp_path / "store" / "frames")
    options = MemoryOptions(
        store_dir=tmp_path / "store", fsync=False, retention_s=3.5, recent_blocks=2
    )
    with Memory(llava, options, frames=frames) as memory:
        for i, tokens in enumerate(frame_tokens):
            stamp = FrameStamp(seq=i, pts=float(i), wall=WALL0 + i)
            memory.append_step("cam", tokens, stamp, frame=_frame(i))
        kept = [m.block_id for m in memory.tiers.state("cam").blocks]
        assert len(kept) < len(frame_tokens)  # retention evicted the oldest blocks ...
        assert sorted(f.block_id for f in frames._streams["cam"].frames) == kept  # ... and frames
        (status,) = memory.status()
        assert status.disk_bytes == memory.store.disk_bytes(1) + frames.stream_bytes("cam")
    # a frame whose block is gone (a crash between the two) is removed when the memory reopens
    frames.put("cam", 999, _frame(0))
    frames.put("gone", 1, _frame(1))
    reopened = FrameStore(tmp_path / "store" / "frames")
    with Memory(llava, options, frames=reopened) as memory:
        assert sorted(f.block_id for f in reopened._streams["cam"].frames) == kept
        assert reopened.count("gone") == 0
        newest = memory.tiers.state("cam").blocks[-1]
        assert reopened.nearest("cam", newest.wall_start) is not None


def test_the_disk_budget_counts_the_frames(
    llava: VideoLLM, frame_tokens: list[VisualTokens], tmp_path: Path
) -> None:
    def kept(folder: str, with_frames: bool) -> int:
        frames = FrameStore(tmp_path / folder / "frames") if with_frames else None
        options = MemoryOptions(
            store_dir=tmp_path / folder,
            fsync=False,
            recent_blocks=1,
            disk_budget_bytes=128 * 1024,
            segment_bytes=4096,
        )
        with Memory(llava, options, frames=frames) as memory:
            for i, tokens in enumerate(frame_tokens):
                stamp = FrameStamp(seq=i, pts=float(i), wall=WALL0 + i)
                memory.append_step("cam", tokens, stamp, frame=_frame(i))
            blocks = len(memory.tiers.state("cam").blocks)
            if frames is not None:
                assert frames.count("cam") == blocks
                assert memory.tiers.segment_bytes() <= 128 * 1024
            return blocks

    # the same budget holds fewer blocks when their frames count too
    assert kept("with", True) < kept("without", False)
