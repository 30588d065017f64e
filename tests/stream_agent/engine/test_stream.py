"""AnswerStream: bounded, lossless hand-off of answer events to the event loop."""

from __future__ import annotations

import asyncio
import threading

from stream_agent.engine import (
    AnswerDelta,
    AnswerFailed,
    AnswerFinal,
    AnswerStream,
    AnswerTimings,
)


def _final(text: str = "") -> AnswerFinal:
    return AnswerFinal(text, (), 0, "stop", AnswerTimings(None, None, 0.0))


async def test_events_arrive_in_order_and_end_with_the_terminal_event() -> None:
    stream = AnswerStream("r", threading.Event(), capacity=8)
    for word in ("a", "b", "c"):
        stream.push(AnswerDelta(word))
    stream.push(_final("abc"))
    stream.push(AnswerDelta("ignored after the end"))
    text, terminal = await stream.collect()
    assert text == "abc"
    assert terminal == _final("abc")
    assert stream.finished


async def test_a_full_buffer_merges_deltas_instead_of_growing() -> None:
    merged = []
    stream = AnswerStream("r", threading.Event(), capacity=3, on_coalesce=lambda: merged.append(1))
    for i in range(10):
        stream.push(AnswerDelta(str(i)))
    stream.push(AnswerFailed("internal", "boom"))  # the terminal event always fits
    events = [e async for e in stream]
    assert len(events) == 3
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == "0123456789"
    assert events[-1] == AnswerFailed("internal", "boom")
    assert stream.coalesced == len(merged) == 8


async def test_events_put_from_another_thread_wake_the_reader() -> None:
    stream = AnswerStream("r", threading.Event(), capacity=4)

    def produce() -> None:
        for word in ("x", "y"):
            stream.put_threadsafe(AnswerDelta(word))
        stream.put_threadsafe(_final("xy"))

    thread = threading.Thread(target=produce)
    thread.start()
    text, terminal = await asyncio.wait_for(stream.collect(), 5)
    thread.join()
    assert (text, terminal) == ("xy", _final("xy"))


async def test_the_hand_off_stays_bounded_while_the_loop_is_busy() -> None:
    """The loop does not run while a producer floods the stream: the inbox merges."""
    stream = AnswerStream("r", threading.Event(), capacity=4)
    thread = threading.Thread(
        target=lambda: [stream.put_threadsafe(AnswerDelta(f"{i},")) for i in range(1000)]
    )
    thread.start()
    thread.join()  # blocks the loop thread: no drain can run meanwhile
    assert stream.backlog <= 4
    stream.put_threadsafe(_final())
    text, terminal = await stream.collect()
    assert text == "".join(f"{i}," for i in range(1000))
    assert terminal == _final()
    assert stream.coalesced >= 996


async def test_cancel_sets_the_engine_side_flag() -> None:
    flag = threading.Event()
    stream = AnswerStream("r", flag, capacity=2)
    assert not stream.cancel_requested
    stream.cancel()
    assert flag.is_set() and stream.cancel_requested
