"""Time bounds hold for everything an answer sees: the retrieved blocks and the recent ones, in
every retrieval mode, for one stream and for all; an empty range says so; a question too long
for the model's positions fits fewer blocks (and says so) or is refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_agent.memory import (
    AnswerDelta,
    AnswerFinal,
    FrameStamp,
    Memory,
    MemoryOptions,
    QuestionError,
    TimeRange,
)
from stream_agent.memory.memory import NO_MOMENTS_NOTE
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens
from stream_agent.protocol import MAX_QUESTION_CHARS

from .conftest import WALL0

QUESTION = "What happens at the door?"


@pytest.fixture(scope="module")
def two_streams(
    llava: VideoLLM, frame_tokens: list[VisualTokens], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Memory]:
    """Streams ``a`` (walls WALL0 + 0, 2, 4, ...) and ``b`` (WALL0 + 1, 3, 5, ...)."""
    options = MemoryOptions(
        store_dir=tmp_path_factory.mktemp("bounds"), fsync=False, top_k=3, recent_blocks=2
    )
    memory = Memory(llava, options)
    for i, tokens in enumerate(frame_tokens):
        stream = "ab"[i % 2]
        memory.append_step(stream, tokens, FrameStamp(seq=i, pts=float(i), wall=WALL0 + i))
    yield memory
    memory.close()


def _inside(meta_start: float, meta_end: float, time_range: TimeRange) -> bool:
    return (time_range.since is None or meta_start >= time_range.since) and (
        time_range.until is None or meta_end <= time_range.until
    )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    since=st.one_of(st.none(), st.floats(-5, 12)),
    length=st.one_of(st.none(), st.floats(0, 12)),
    stream=st.sampled_from([None, "a", "b"]),
    mode=st.sampled_from(["internal", "embedding", "hybrid"]),
)
def test_every_block_an_answer_sees_lies_in_its_range(
    two_streams: Memory,
    since: float | None,
    length: float | None,
    stream: str | None,
    mode: str,
) -> None:
    start = None if since is None else WALL0 + since
    until = None if length is None else (start if start is not None else WALL0) + length
    time_range = TimeRange(start, until)
    _, prepared = two_streams.prepare(
        QUESTION, stream=stream, time_range=time_range, retrieval=mode, max_new_tokens=2
    )
    for layer in prepared.selections:  # the KV every layer attends to
        for cand in layer:
            assert _inside(cand.meta.wall_start, cand.meta.wall_end, time_range), cand.meta
            assert stream is None or cand.meta.stream == stream
    events = list(
        two_streams.answer(
            QUESTION,
            stream=stream,
            time_range=time_range,
            retrieval=mode,
            options=DecodeOptions(max_new_tokens=2),
        )
    )
    final = events[-1]
    assert isinstance(final, AnswerFinal)
    for e in final.evidence:
        assert _inside(e.start_wall, e.end_wall, time_range), e
    kept = [
        m
        for s in (["a", "b"] if stream is None else [stream])
        for m in two_streams.tiers.state(s).blocks
        if _inside(m.wall_start, m.wall_end, time_range)
    ]
    if kept:
        assert final.evidence and NO_MOMENTS_NOTE not in final.notes
    else:
        assert final.evidence == () and final.notes == (NO_MOMENTS_NOTE,)
        assert final.text == "".join(e.text for e in events if isinstance(e, AnswerDelta))
        assert final.text


def test_a_range_before_the_stream_answers_no_moments(two_streams: Memory) -> None:
    final = list(two_streams.answer(QUESTION, time_range=TimeRange(WALL0 - 100, WALL0 - 50)))[-1]
    assert isinstance(final, AnswerFinal)
    assert final.evidence == () and final.notes == (NO_MOMENTS_NOTE,)
    assert "Nothing was recorded" in final.text


def test_a_long_question_fits_fewer_blocks_and_says_so(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, top_k=4, recent_blocks=2)
    for i, tokens in enumerate(frame_tokens):
        memory.append_step("cam", tokens, FrameStamp(seq=i, pts=float(i), wall=WALL0 + i))
    new = 4
    # within the protocol's 4000 characters, but about 4000 tokens for this tokenizer: beside
    # the six blocks the answer would use it does not fit the model's 4096 positions
    question = "x" * MAX_QUESTION_CHARS
    events = list(memory.answer(question, options=DecodeOptions(max_new_tokens=new)))
    final = events[-1]
    assert isinstance(final, AnswerFinal)
    assert final.notes and "fewer moments" in final.notes[0], final.notes
    assert final.evidence  # some blocks still fitted
    _, prepared = memory.prepare(question, max_new_tokens=new)
    assert prepared.notes == final.notes
    assert all(0 < len(layer) < 6 for layer in prepared.selections)  # fewer than asked
    # 4000 characters of two tokens each do not fit even alone: refused as the client's error
    with pytest.raises(QuestionError, match="too long"):
        list(memory.answer("é" * MAX_QUESTION_CHARS, options=DecodeOptions(max_new_tokens=new)))


def test_bounds_of_a_reopened_memory(
    llava: VideoLLM, frame_tokens: list[VisualTokens], tmp_path: Path
) -> None:
    """After a restart the recent blocks are of the new run; a range over the first run's span
    sees none of them."""
    store = tmp_path / "store"
    options = MemoryOptions(store_dir=store, fsync=False, top_k=2, recent_blocks=2)
    with Memory(llava, options) as memory:
        for i, tokens in enumerate(frame_tokens[:5]):
            memory.append_step("cam", tokens, FrameStamp(seq=i, pts=float(i), wall=WALL0 + i))
    with Memory(llava, options) as memory:
        for i, tokens in enumerate(frame_tokens[5:], start=5):
            memory.append_step("cam", tokens, FrameStamp(seq=i, pts=float(i), wall=WALL0 + 50 + i))
        final = list(memory.answer(QUESTION, time_range=TimeRange(WALL0, WALL0 + 4)))[-1]
        assert isinstance(final, AnswerFinal)
        assert final.evidence and all(e.end_wall <= WALL0 + 4 for e in final.evidence)
        assert {e.seq for e in final.evidence if e.recent} == {3, 4}


def test_a_still_scene_answers_for_a_range_inside_its_span(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """A block the change gate extended (nothing changed for 100 s) serves a question bounded to
    a part of that still period, cited clipped to the range; a plain block partly outside a
    range still does not."""
    memory = make_memory(llava, top_k=2, recent_blocks=2)
    memory.append_step("cam", frame_tokens[0], FrameStamp(seq=0, pts=0.0, wall=WALL0))
    memory.append_step("cam", frame_tokens[1], FrameStamp(seq=1, pts=1.0, wall=WALL0 + 1))
    memory.extend_last("cam", FrameStamp(seq=101, pts=101.0, wall=WALL0 + 101))
    bounded = TimeRange(WALL0 + 40, WALL0 + 60)
    final = list(memory.answer(QUESTION, time_range=bounded))[-1]
    assert isinstance(final, AnswerFinal)
    assert [m.seq for m in final.evidence] == [1]
    (moment,) = final.evidence
    assert (moment.start_wall, moment.end_wall) == (WALL0 + 40, WALL0 + 60)
    assert (moment.start_pts, moment.end_pts) == (40.0, 60.0)
    # the first block (one frame at WALL0) is outside; a range ending inside the still span
    # but starting before the stream's first frame sees only the still block, clipped
    early = list(memory.answer(QUESTION, time_range=TimeRange(WALL0 + 0.5, WALL0 + 30)))[-1]
    assert isinstance(early, AnswerFinal)
    assert [(m.seq, m.start_wall, m.end_wall) for m in early.evidence] == [
        (1, WALL0 + 1, WALL0 + 30)
    ]
