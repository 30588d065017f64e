"""The check queue inside the engine's priority queue, as properties: whatever arrives in
whatever order, a question is taken before any check, a check before any frame; checks keep
their order; a full check queue sheds exactly the oldest."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_agent.engine import FrameBatch, Question
from stream_agent.engine.checks import RuleCondition
from stream_agent.engine.queue import CheckItem, OverflowPolicy, QuestionItem, WorkQueue
from tests.stream_agent.engine.fake_worker import make_frame

KINDS = st.lists(st.sampled_from(["question", "check", "frame"]), max_size=30)


def _queue(check_capacity: int) -> WorkQueue:
    return WorkQueue(
        frames_per_camera=100,
        frame_policy=OverflowPolicy.DROP_OLDEST,
        question_capacity=100,
        max_batch_frames=1,
        check_capacity=check_capacity,
    )


def _rank(item: object) -> int:
    if isinstance(item, QuestionItem):
        return 0
    if isinstance(item, CheckItem):
        return 1
    assert isinstance(item, FrameBatch)
    return 2


@settings(max_examples=60, deadline=None)
@given(kinds=KINDS, capacity=st.integers(1, 5))
def test_questions_then_checks_then_frames(kinds: list[str], capacity: int) -> None:
    q = _queue(capacity)
    checks: list[CheckItem] = []
    shed: list[CheckItem] = []
    for i, kind in enumerate(kinds):
        if kind == "question":
            q.put_question(QuestionItem(Question(f"q{i}", "?"), threading.Event(), print))
        elif kind == "check":
            item = CheckItem("cam", conditions=(RuleCondition(f"c{i}"),))
            checks.append(item)
            dropped = q.put_check(item)
            if dropped is not None:
                shed.append(dropped)
        else:
            q.put_frame(make_frame("cam", i))
    taken = []
    while (item := q.get(0)) is not None:
        taken.append(item)
    ranks = [_rank(item) for item in taken]
    assert ranks == sorted(ranks)
    kept = [item for item in taken if isinstance(item, CheckItem)]
    assert shed == checks[: len(checks) - len(kept)]  # the oldest went
    assert kept == checks[len(shed) :]  # the rest in arrival order
    assert len(kept) == min(len(checks), capacity)
