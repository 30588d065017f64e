"""The camera board on its own: states, counters, newest frame, snapshots, kept evidence frames
within their byte budget, and the metrics it reports at scrape time."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ingest.records import Frame
from stream_agent.cameras import STATES, CameraBoard
from stream_agent.jpeg import encode_jpeg
from stream_agent.metrics import DaemonMetrics, Registry
from tests.support.prometheus import sample


def frame(seq: int, *, camera: str = "dock", wall: float | None = None, size: int = 64) -> Frame:
    rng = np.random.default_rng(seq)  # noise: JPEGs of a realistic size
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Frame(camera, seq, float(seq), 1000.0 + seq if wall is None else wall, image)


def test_names_are_fixed_and_unique() -> None:
    board = CameraBoard(["dock", "door"])
    assert board.names == ("dock", "door")
    assert "dock" in board and "yard" not in board
    with pytest.raises(ValueError, match="unique"):
        CameraBoard(["dock", "dock"])
    with pytest.raises(KeyError, match="yard"):
        board.set_state("yard", "online")


def test_states_and_counters_show_in_the_views() -> None:
    board = CameraBoard(["dock", "door"])
    assert {v.state for v in board.views()} == {"connecting"}
    board.set_state("dock", "online", "receiving h264 64x64")
    board.set_counters("dock", frames=10, dropped=2, reconnects=1, fps=0.5)
    with pytest.raises(ValueError, match="unknown camera state"):
        board.set_state("dock", "asleep")
    dock, door = board.views()
    assert (dock.name, dock.state, dock.reason) == ("dock", "online", "receiving h264 64x64")
    assert (dock.frames, dock.dropped, dock.reconnects, dock.fps) == (10, 2, 1, 0.5)
    assert door.state == "connecting" and door.last_frame_wall is None
    since = dock.state_since
    board.set_state("dock", "online", "receiving h264 64x64")  # the same state: no new event
    assert board.views()[0].state_since == since


def test_the_newest_frame_and_its_snapshot() -> None:
    board = CameraBoard(["dock"], evidence_bytes=0)
    assert board.latest_frame("dock") is None and board.snapshot_jpeg("dock") is None
    assert not board.keeps_evidence
    board.offer_frame(frame(0))
    board.offer_frame(frame(1))
    latest = board.latest_frame("dock")
    assert latest is not None and latest.seq == 1
    view = board.views()[0]
    assert (view.last_frame_pts, view.last_frame_wall) == (1.0, 1001.0)
    snap = board.snapshot_jpeg("dock")
    assert snap is not None
    shot, jpeg = snap
    assert shot.seq == 1 and Image.open(io.BytesIO(jpeg)).size == (64, 64)
    again = board.snapshot_jpeg("dock")
    assert again is not None and again[1] is jpeg  # encoded once per frame
    assert board.frame_at("dock", 1001.0) is None  # nothing kept without a budget


def test_evidence_frames_are_found_by_wall_time_within_the_tolerance() -> None:
    board = CameraBoard(["dock"], evidence_max_side=32)
    for seq in range(5):
        board.offer_frame(frame(seq))
    kept = board.frame_at("dock", 1002.4)
    assert kept is not None and kept.wall_time == 1002.0 and kept.pts == 2.0
    assert Image.open(io.BytesIO(kept.jpeg)).size == (32, 32)  # downscaled
    nearest = board.frame_at("dock", 1010.0, tolerance_s=6.0)
    assert nearest is not None and nearest.wall_time == 1004.0
    assert board.frame_at("dock", 1010.0, tolerance_s=2.0) is None
    board.offer_frame(frame(9, wall=1001.5))  # older than the last kept one: not kept
    found = board.frame_at("dock", 1001.5, tolerance_s=0.0)
    assert found is None


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=12), st.integers(min_value=0, max_value=3))
def test_the_byte_budget_holds_and_evictions_are_counted(frames: int, budget_frames: int) -> None:
    one = len(encode_jpeg(frame(0).image, max_side=48, quality=80))
    metrics = DaemonMetrics(Registry())
    budget = budget_frames * one + one // 2
    board = CameraBoard(["dock"], evidence_bytes=budget, evidence_max_side=48, metrics=metrics)
    for seq in range(frames):
        board.offer_frame(frame(seq))
    kept = [board.frame_at("dock", 1000.0 + s, tolerance_s=0.0) for s in range(frames)]
    present = [k for k in kept if k is not None]
    # the newest frames are kept, within the budget (one frame is always kept)
    assert present and present[-1].pts == frames - 1
    assert len(present) == 1 or sum(len(k.jpeg) for k in present) <= budget
    assert [k.pts for k in present] == [float(s) for s in range(frames - len(present), frames)]
    evicted = metrics.evidence_frames_evicted.value(camera="dock")
    assert evicted == frames - len(present)


def test_the_board_reports_its_metrics_at_scrape_time() -> None:
    metrics = DaemonMetrics(Registry())
    board = CameraBoard(["dock", "door"], metrics=metrics)
    board.set_state("dock", "stalled", "no data for 5.0 s")
    board.set_counters("dock", frames=7, dropped=1, reconnects=2, fps=0.25)
    text = metrics.registry.render()
    for state in STATES:
        expected = 1 if state == "stalled" else 0
        assert sample(text, "stream_agent_camera_state", camera="dock", state=state) == expected
    assert sample(text, "stream_agent_camera_state", camera="door", state="connecting") == 1
    assert sample(text, "stream_agent_camera_frames_per_second", camera="dock") == 0.25
    assert sample(text, "stream_agent_camera_frames_total", camera="dock") == 7
    assert sample(text, "stream_agent_camera_dropped_frames_total", camera="dock") == 1
    assert sample(text, "stream_agent_camera_reconnects_total", camera="dock") == 2
    board.set_state("dock", "online")
    text = metrics.registry.render()
    assert sample(text, "stream_agent_camera_state", camera="dock", state="online") == 1
    assert sample(text, "stream_agent_camera_state", camera="dock", state="stalled") == 0


def test_offers_from_many_threads() -> None:
    board = CameraBoard(["a", "b"], evidence_max_side=16)

    def offer(camera: str) -> None:
        for seq in range(30):
            board.offer_frame(frame(seq, camera=camera, size=16))

    threads = [threading.Thread(target=offer, args=(c,)) for c in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for camera in ("a", "b"):
        latest = board.latest_frame(camera)
        assert latest is not None and latest.seq == 29 and latest.source_id == camera
        assert board.frame_at(camera, 1029.0, tolerance_s=0.0) is not None
