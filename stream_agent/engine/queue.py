"""The engine's bounded priority queue: questions first, then control, then rule checks, then
frames.

Rule checks (and event descriptions) wait in one bounded FIFO; when it is full its named policy
``drop_oldest`` sheds the oldest waiting check (its future fails with ``CheckDropped``; the
caller counts it): a check is a look at the present, so the newer one is worth more.

Frames wait in one bounded deque per camera, so that a busy camera cannot push out another's
frames, and are taken round-robin across cameras in batches of consecutive frames. When a camera's
deque is full the named overflow policy decides which frame is shed: ``drop_oldest`` (the newest
frame wins: what the engine encodes stays close to live) or ``drop_newest`` (what is queued
stays; the incoming frame is refused). The caller counts every shed frame.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeAlias

from stream_agent.engine.checks import DescribeRequest, RuleCondition
from stream_agent.engine.records import FrameBatch, FrameLike, Question, StreamEvent


class OverflowPolicy(StrEnum):
    """What a full per-camera frame queue does with one more frame."""

    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class QueueFull(Exception):
    """The bounded queue has no room for this item."""


@dataclass(frozen=True, eq=False)
class QuestionItem:
    """A question waiting for the engine, with its cancel flag and the way back to the loop."""

    question: Question
    cancel: threading.Event
    deliver: Callable[[StreamEvent], None] = field(repr=False)


@dataclass(frozen=True, eq=False)
class ControlItem:
    """``flush`` (write the memories to disk) or ``stop`` (end the engine thread)."""

    kind: Literal["flush", "stop"]
    done: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


@dataclass(frozen=True, eq=False)
class CheckItem:
    """A rule check (``conditions``) or a description (``describe``) of one camera; ``done``
    resolves with the worker's result (or fails; or is cancelled by the caller)."""

    camera: str
    conditions: tuple[RuleCondition, ...] = ()
    describe: DescribeRequest | None = None
    done: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


WorkItem: TypeAlias = QuestionItem | ControlItem | CheckItem | FrameBatch

CONTROL_CAPACITY = 16
CHECK_CAPACITY = 8
CHECK_OVERFLOW = "drop_oldest"


class WorkQueue:
    """Thread-safe; ``put_*`` never block, ``get`` blocks until work (or the timeout)."""

    def __init__(
        self,
        *,
        frames_per_camera: int,
        frame_policy: OverflowPolicy,
        question_capacity: int,
        max_batch_frames: int,
        check_capacity: int = CHECK_CAPACITY,
    ) -> None:
        if min(frames_per_camera, question_capacity, max_batch_frames, check_capacity) < 1:
            raise ValueError("queue capacities and the batch size must be at least 1")
        self._frames_per_camera = frames_per_camera
        self._policy = OverflowPolicy(frame_policy)
        self._question_capacity = question_capacity
        self._max_batch = max_batch_frames
        self._questions: deque[QuestionItem] = deque()
        self._control: deque[ControlItem] = deque()
        self._check_capacity = check_capacity
        self._checks: deque[CheckItem] = deque()
        self._frames: dict[str, deque[FrameLike]] = {}
        self._rotation: deque[str] = deque()  # cameras in round-robin order
        self._cond = threading.Condition()

    def put_question(self, item: QuestionItem) -> None:
        with self._cond:
            if len(self._questions) >= self._question_capacity:
                raise QueueFull(f"{len(self._questions)} questions are already waiting")
            self._questions.append(item)
            self._cond.notify()

    def put_control(self, item: ControlItem, *, force: bool = False) -> None:
        """``force`` skips the bound (for ``stop``, which must always get through)."""
        with self._cond:
            if not force and len(self._control) >= CONTROL_CAPACITY:
                raise QueueFull("too many flush requests are already waiting")
            self._control.append(item)
            self._cond.notify()

    def put_check(self, item: CheckItem) -> CheckItem | None:
        """Queue a rule check; return the check shed by ``drop_oldest``, if any (the caller
        fails its future and counts it)."""
        with self._cond:
            shed = self._checks.popleft() if len(self._checks) >= self._check_capacity else None
            self._checks.append(item)
            self._cond.notify()
            return shed

    def take_check(self) -> CheckItem | None:
        """The oldest waiting rule check, without blocking; None when none waits (served
        between vision layer groups after the waiting questions)."""
        with self._cond:
            return self._checks.popleft() if self._checks else None

    def drain_checks(self) -> list[CheckItem]:
        with self._cond:
            items = list(self._checks)
            self._checks.clear()
            return items

    def check_depth(self) -> int:
        with self._cond:
            return len(self._checks)

    def put_frame(self, frame: FrameLike) -> FrameLike | None:
        """Queue a frame; return the frame shed by the overflow policy, if any."""
        camera = frame.source_id
        with self._cond:
            frames = self._frames.get(camera)
            if frames is None:
                frames = self._frames[camera] = deque()
                self._rotation.append(camera)
            shed: FrameLike | None = None
            if len(frames) >= self._frames_per_camera:
                if self._policy is OverflowPolicy.DROP_NEWEST:
                    return frame
                shed = frames.popleft()
            frames.append(frame)
            self._cond.notify()
            return shed

    def get(self, timeout: float | None = None) -> WorkItem | None:
        """The next item by priority; None when ``timeout`` passes with nothing to do."""
        with self._cond:
            if not self._cond.wait_for(self._has_work, timeout):
                return None
            if self._questions:
                return self._questions.popleft()
            if self._control:
                return self._control.popleft()
            if self._checks:
                return self._checks.popleft()
            return self._next_batch()

    def take_question(self) -> QuestionItem | None:
        """The oldest waiting question, without blocking; None when none waits (the engine asks
        between vision layer groups of a frame's encode)."""
        with self._cond:
            return self._questions.popleft() if self._questions else None

    def _has_work(self) -> bool:
        return bool(self._questions or self._control or self._checks or any(self._frames.values()))

    def _next_batch(self) -> FrameBatch:
        for _ in range(len(self._rotation)):
            camera = self._rotation[0]
            self._rotation.rotate(-1)
            frames = self._frames[camera]
            if frames:
                count = min(len(frames), self._max_batch)
                return FrameBatch(camera, tuple(frames.popleft() for _ in range(count)))
        raise AssertionError("_next_batch called without queued frames")

    def drain_frames(self) -> dict[str, int]:
        """Remove every queued frame; return how many per camera (to count them as shed)."""
        with self._cond:
            counts = {cam: len(q) for cam, q in self._frames.items() if q}
            for q in self._frames.values():
                q.clear()
            return counts

    def drain_questions(self) -> list[QuestionItem]:
        with self._cond:
            items = list(self._questions)
            self._questions.clear()
            return items

    def questions(self) -> list[QuestionItem]:
        with self._cond:
            return list(self._questions)

    def depth(self) -> tuple[int, int]:
        """(queued frames, queued questions)."""
        with self._cond:
            return sum(len(q) for q in self._frames.values()), len(self._questions)
