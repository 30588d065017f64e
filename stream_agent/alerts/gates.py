"""Cheap gates in front of the model, and the per-rule counters of what stopped each check.

* Motion, for free: the cacher reports per frame the share of visual tokens it had to recompute
  (its changed-token share). :class:`MotionLog` keeps the recent shares per camera; a rule asks
  the model only when the largest share since its last check on that camera reaches the rule's
  ``gates.motion``. A still scene costs no model call. A frame with an unknown share (cacher off)
  counts as motion; no new frame at all stops the check (``no_new_frames``).
* Person: OpenCV's built-in HOG + linear SVM people detector (the weights ship inside OpenCV 4.x;
  OpenCV 5 removed it). :class:`PersonDetector` runs it on a downscaled grey copy of the newest
  frame; it is CPU work of ~0.1 s per 768x432 frame here, so callers run it off the event loop
  and share one result per frame between rules.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

MOTION = "motion"
PERSON = "person"
NO_NEW_FRAMES = "no_new_frames"
PAUSED = "paused"
INACTIVE_HOURS = "inactive_hours"
CAMERA_OFFLINE = "camera_offline"
ENGINE_ERROR = "engine_error"
ASKED = "asked"
"""Counter key of checks that reached the model."""


class MotionLog:
    """Per camera, the changed share of recent frames in the order they were reported, bounded
    per camera.

    Reads go by arrival, not by capture time: a frame is reported when the engine has encoded
    it, seconds after its capture on a slow machine (or on another Ray node), so "frames since
    my last check" is "frames reported after the mark I took then" (:meth:`motion_since`), and
    a frame reported late is still seen by the next check.
    """

    def __init__(self, max_frames: int = 600) -> None:
        self._max = max_frames
        self._lock = threading.Lock()
        self._frames: dict[str, deque[tuple[int, float, float | None]]] = {}
        self._reported: dict[str, int] = {}  # frames reported so far, per camera

    def note(self, camera: str, wall_time: float, changed_share: float | None) -> None:
        """Record one frame's changed share (None: unknown, e.g. the change gate is off)."""
        with self._lock:
            frames = self._frames.setdefault(camera, deque(maxlen=self._max))
            seq = self._reported.get(camera, 0) + 1
            self._reported[camera] = seq
            frames.append((seq, wall_time, changed_share))

    def motion_since(self, camera: str, mark: int | None) -> tuple[int, float | None, int]:
        """(frames reported after ``mark``, the largest share among them, None if any was
        unknown; the mark to pass next time). ``mark`` None: every frame still kept."""
        with self._lock:
            frames = list(self._frames.get(camera, ()))
            now = self._reported.get(camera, 0)
        fresh = [s for seq, _, s in frames if mark is None or seq > mark]
        if not fresh:
            return 0, 0.0, now
        if any(s is None for s in fresh):
            return len(fresh), None, now
        return len(fresh), max(s for s in fresh if s is not None), now

    def latest_wall(self, camera: str) -> float | None:
        """The capture time of the newest frame reported (None: none yet)."""
        with self._lock:
            frames = self._frames.get(camera)
            return frames[-1][1] if frames else None

    def forget(self, camera: str) -> None:
        with self._lock:
            self._frames.pop(camera, None)


def motion_gate(frames: int, share: float | None, min_share: float | None) -> str | None:
    """The reason the motion gate stops a check, or None to go on."""
    if frames == 0:
        return NO_NEW_FRAMES
    if min_share is None or share is None:
        return None
    return MOTION if share < min_share else None


@dataclass(frozen=True, slots=True)
class PersonResult:
    count: int
    best_weight: float

    @property
    def present(self) -> bool:
        return self.count > 0


class PersonDetector:
    """OpenCV's default HOG people detector with settings measured on the shared clip.

    The frame is downscaled to ``width`` pixels wide (people of 150-400 px height then fit the
    detector's 64x128 window after few pyramid levels) and scanned with ``stride``; a window
    counts as a person when the SVM's weight reaches ``min_weight``. One instance is used from
    one thread at a time (the OpenCV object is not shared across threads).
    """

    def __init__(
        self, *, width: int = 512, stride: int = 4, scale: float = 1.05, min_weight: float = 0.3
    ) -> None:
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector()))
        self._width = width
        self._stride = stride
        self._scale = scale
        self._min_weight = min_weight
        self._lock = threading.Lock()

    def detect(self, image: npt.NDArray[np.uint8]) -> PersonResult:
        """People in an RGB ``uint8`` (H, W, 3) image."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        h, w = image.shape[:2]
        small = image
        if w > self._width:
            size = (self._width, max(1, round(h * self._width / w)))
            small = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        if grey.shape[0] < 128 or grey.shape[1] < 64:
            return PersonResult(0, 0.0)
        with self._lock:
            _, weights = self._hog.detectMultiScale(
                grey,
                winStride=(self._stride, self._stride),
                padding=(8, 8),
                scale=self._scale,
            )
        found = [float(x) for x in np.asarray(weights).ravel() if float(x) >= self._min_weight]
        return PersonResult(len(found), max(found, default=0.0))


class GateCounters:
    """Per rule, how many checks each gate stopped and how many reached the model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    def count(self, rule: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts.setdefault(rule, Counter())[reason] += n

    def forget(self, rule: str) -> None:
        with self._lock:
            self._counts.pop(rule, None)

    def snapshot(self) -> Mapping[str, Mapping[str, int]]:
        with self._lock:
            return {rule: dict(c) for rule, c in self._counts.items()}
