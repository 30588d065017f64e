"""The engine's priority queue: order, round-robin, overflow policies, bounds."""

from __future__ import annotations

import threading

import pytest

from stream_agent.engine import FrameBatch, Question
from stream_agent.engine.queue import (
    ControlItem,
    OverflowPolicy,
    QuestionItem,
    QueueFull,
    WorkQueue,
)
from tests.stream_agent.engine.fake_worker import make_frame


def _queue(policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST, **kw: int) -> WorkQueue:
    args = {"frames_per_camera": 3, "question_capacity": 2, "max_batch_frames": 2, **kw}
    return WorkQueue(frame_policy=policy, **args)


def _question(name: str) -> QuestionItem:
    return QuestionItem(Question(name, "q?"), threading.Event(), lambda event: None)


def test_questions_come_before_control_and_control_before_frames() -> None:
    q = _queue()
    q.put_frame(make_frame("a", 0))
    flush = ControlItem("flush")
    q.put_control(flush)
    question = _question("q1")
    q.put_question(question)
    assert q.get(0) is question
    assert q.get(0) is flush
    batch = q.get(0)
    assert isinstance(batch, FrameBatch) and batch.camera == "a"
    assert q.get(0) is None  # empty: the timeout passes


def test_frames_are_batched_per_camera_and_taken_round_robin() -> None:
    q = _queue(frames_per_camera=5, max_batch_frames=2)
    for i in range(3):
        q.put_frame(make_frame("a", i))
    q.put_frame(make_frame("b", 0))
    got = []
    while (item := q.get(0)) is not None:
        assert isinstance(item, FrameBatch)
        got.append((item.camera, [f.seq for f in item.frames]))
    assert got == [("a", [0, 1]), ("b", [0]), ("a", [2])]


def test_drop_oldest_keeps_the_newest_frames() -> None:
    q = _queue(OverflowPolicy.DROP_OLDEST, frames_per_camera=3, max_batch_frames=10)
    shed = [q.put_frame(make_frame("a", i)) for i in range(5)]
    assert [s.seq if s is not None else None for s in shed] == [None, None, None, 0, 1]
    batch = q.get(0)
    assert isinstance(batch, FrameBatch)
    assert [f.seq for f in batch.frames] == [2, 3, 4]


def test_drop_newest_keeps_what_is_queued() -> None:
    q = _queue(OverflowPolicy.DROP_NEWEST, frames_per_camera=2, max_batch_frames=10)
    frames = [make_frame("a", i) for i in range(4)]
    shed = [q.put_frame(f) for f in frames]
    assert shed == [None, None, frames[2], frames[3]]
    batch = q.get(0)
    assert isinstance(batch, FrameBatch)
    assert [f.seq for f in batch.frames] == [0, 1]


def test_one_camera_cannot_push_out_another_cameras_frames() -> None:
    q = _queue(frames_per_camera=2, max_batch_frames=10)
    q.put_frame(make_frame("quiet", 0))
    for i in range(10):
        q.put_frame(make_frame("busy", i))
    cams = {}
    while (item := q.get(0)) is not None:
        assert isinstance(item, FrameBatch)
        cams[item.camera] = [f.seq for f in item.frames]
    assert cams == {"quiet": [0], "busy": [8, 9]}


def test_question_capacity_is_enforced() -> None:
    q = _queue(question_capacity=2)
    q.put_question(_question("1"))
    q.put_question(_question("2"))
    with pytest.raises(QueueFull):
        q.put_question(_question("3"))
    assert q.depth() == (0, 2)


def test_stop_is_forced_past_the_control_bound() -> None:
    q = _queue()
    for _ in range(16):
        q.put_control(ControlItem("flush"))
    with pytest.raises(QueueFull):
        q.put_control(ControlItem("flush"))
    q.put_control(ControlItem("stop"), force=True)  # does not raise


def test_get_wakes_up_when_work_arrives_from_another_thread() -> None:
    q = _queue()
    timer = threading.Timer(0.05, lambda: q.put_frame(make_frame("a", 0)))
    timer.start()
    item = q.get(5)
    timer.join()
    assert isinstance(item, FrameBatch)


def test_drain_counts_frames_per_camera() -> None:
    q = _queue(frames_per_camera=5)
    for i in range(3):
        q.put_frame(make_frame("a", i))
    q.put_frame(make_frame("b", 0))
    assert q.drain_frames() == {"a": 3, "b": 1}
    assert q.depth() == (0, 0)
