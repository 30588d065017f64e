"""The cheap gates: motion from the cacher's changed-token share, and OpenCV's HOG people
detector on real frames of the shared clip."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from stream_agent.alerts.gates import (
    MOTION,
    NO_NEW_FRAMES,
    GateCounters,
    MotionLog,
    PersonDetector,
    motion_gate,
)

CLIP = (
    Path(__file__).resolve().parents[3]
    / ".."
    / "shared"
    / "data"
    / "one-by-one-person-detection.mp4"
)
# Frame numbers picked by looking at them: people walk in one at a time and stand at the table.
PERSON_FRAMES = (80, 100, 240, 340, 400, 800)
EMPTY_FRAMES = (0, 40, 200, 500, 900)


def test_opencv_is_4x_with_the_hog_people_detector() -> None:
    assert cv2.__version__.startswith("4.")
    assert np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector()).size == 3781


def test_motion_log_and_gate() -> None:
    log = MotionLog(max_frames=4)
    assert log.motion_since("cam", None) == (0, 0.0, 0)
    assert motion_gate(0, 0.0, 0.02) == NO_NEW_FRAMES
    log.note("cam", 1.0, 0.001)
    log.note("cam", 2.0, 0.004)
    frames, share, mark = log.motion_since("cam", None)
    assert (frames, share, mark) == (2, 0.004, 2)
    assert motion_gate(2, 0.004, 0.02) == MOTION  # still scene: no model call
    log.note("cam", 3.0, 0.3)
    assert log.motion_since("cam", mark) == (1, 0.3, 3)
    assert motion_gate(1, 0.3, 0.02) is None
    assert motion_gate(1, 0.001, None) is None  # gate off
    log.note("cam", 4.0, None)
    assert log.motion_since("cam", 3) == (1, None, 4)
    assert motion_gate(1, None, 0.02) is None  # unknown share counts as motion
    log.note("cam", 5.0, 0.0)
    assert log.motion_since("cam", None)[0] == 4  # bounded
    assert log.motion_since("cam", 5) == (0, 0.0, 5)
    assert log.latest_wall("cam") == 5.0


def test_a_frame_reported_late_is_seen_by_the_next_check() -> None:
    """Frames are reported when encoded, seconds after capture: a check between capture and
    report must not make the next check miss the frame (reads go by arrival)."""
    log = MotionLog()
    log.note("cam", 10.0, 0.001)
    _, _, mark = log.motion_since("cam", None)  # a check at t = 12 sees the still frame
    log.note("cam", 11.0, 0.5)  # captured before that check, reported after it
    assert log.motion_since("cam", mark) == (1, 0.5, 2)
    assert log.motion_since("other", None) == (0, 0.0, 0)


def test_counters() -> None:
    c = GateCounters()
    c.count("r", "motion")
    c.count("r", "motion")
    c.count("r", "asked")
    assert c.snapshot() == {"r": {"motion": 2, "asked": 1}}
    c.forget("r")
    assert c.snapshot() == {}


@cache
def clip_frames() -> dict[int, npt.NDArray[np.uint8]]:
    import av

    wanted = set(PERSON_FRAMES) | set(EMPTY_FRAMES)
    out: dict[int, npt.NDArray[np.uint8]] = {}
    with av.open(str(CLIP)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break
    return out


needs_clip = pytest.mark.skipif(not CLIP.exists(), reason=f"shared clip {CLIP} is absent")


@needs_clip
@pytest.mark.parametrize("index", PERSON_FRAMES)
def test_hog_finds_the_person(index: int) -> None:
    result = PersonDetector().detect(clip_frames()[index])
    assert result.present and result.best_weight >= 0.3


@needs_clip
@pytest.mark.parametrize("index", EMPTY_FRAMES)
def test_hog_finds_nobody_in_the_empty_room(index: int) -> None:
    assert not PersonDetector().detect(clip_frames()[index]).present


def test_hog_refuses_a_grey_image_and_handles_a_tiny_one() -> None:
    with pytest.raises(ValueError, match="RGB"):
        PersonDetector().detect(np.zeros((10, 10), np.uint8))
    assert not PersonDetector().detect(np.zeros((32, 32, 3), np.uint8)).present
