"""The bounded hand-off between a decode thread and the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from ingest import Frame, OverflowPolicy
from ingest.handoff import FrameHandoff, HandoffClosed


def frame(seq: int) -> Frame:
    return Frame("t", seq, seq / 10, time.time(), np.zeros((2, 2, 3), np.uint8))


async def test_drop_oldest_keeps_the_newest_and_counts() -> None:
    handoff = FrameHandoff(2, OverflowPolicy.DROP_OLDEST, asyncio.get_running_loop())
    for seq in range(10):
        assert handoff.put(frame(seq))
    assert handoff.dropped == 8
    assert handoff.depth == 2
    handoff.finish()
    assert [(await handoff.get()).seq for _ in range(2)] == [8, 9]
    with pytest.raises(HandoffClosed) as info:
        await handoff.get()
    assert info.value.error is None


async def test_block_loses_nothing_with_a_slow_consumer() -> None:
    handoff = FrameHandoff(2, OverflowPolicy.BLOCK, asyncio.get_running_loop())

    def produce() -> None:
        for seq in range(50):
            handoff.put(frame(seq))
        handoff.finish()

    producer = threading.Thread(target=produce)
    producer.start()
    got = []
    while True:
        try:
            got.append((await handoff.get()).seq)
        except HandoffClosed:
            break
        if len(got) % 10 == 0:
            await asyncio.sleep(0.01)
            assert handoff.depth <= 2
    producer.join(5)
    assert got == list(range(50))
    assert handoff.dropped == 0


async def test_consumer_wakes_when_a_frame_arrives() -> None:
    handoff = FrameHandoff(1, OverflowPolicy.DROP_OLDEST, asyncio.get_running_loop())
    timer = threading.Timer(0.05, handoff.put, args=(frame(7),))
    timer.start()
    got = await asyncio.wait_for(handoff.get(), 5)
    assert got.seq == 7


async def test_finish_with_error_after_the_queued_frames() -> None:
    handoff = FrameHandoff(4, OverflowPolicy.BLOCK, asyncio.get_running_loop())
    handoff.put(frame(0))
    boom = RuntimeError("damaged")
    handoff.finish(boom)
    assert (await handoff.get()).seq == 0
    with pytest.raises(HandoffClosed) as info:
        await handoff.get()
    assert info.value.error is boom


async def test_cancel_releases_a_blocked_producer() -> None:
    handoff = FrameHandoff(1, OverflowPolicy.BLOCK, asyncio.get_running_loop())
    results: list[bool] = []

    def produce() -> None:
        results.append(handoff.put(frame(0)))
        results.append(handoff.put(frame(1)))  # blocks: the queue is full

    producer = threading.Thread(target=produce)
    producer.start()
    await asyncio.sleep(0.05)
    assert producer.is_alive()
    handoff.cancel()
    producer.join(5)
    assert not producer.is_alive()
    assert results == [True, False]
    with pytest.raises(HandoffClosed):
        await handoff.get()


async def test_batched_mode_never_strands_a_lone_frame() -> None:
    """BLOCK mode wakes the consumer per half queue; a single frame still arrives."""
    handoff = FrameHandoff(8, OverflowPolicy.BLOCK, asyncio.get_running_loop())
    waiting = asyncio.ensure_future(handoff.get())
    await asyncio.sleep(0.01)
    threading.Thread(target=handoff.put, args=(frame(3),)).start()
    got = await asyncio.wait_for(waiting, 5)
    assert got.seq == 3


async def test_configure_switches_policy() -> None:
    handoff = FrameHandoff(8, OverflowPolicy.BLOCK, asyncio.get_running_loop())
    handoff.configure(OverflowPolicy.DROP_OLDEST, 1)
    for seq in range(3):
        handoff.put(frame(seq))
    assert (handoff.capacity, handoff.dropped, (await handoff.get()).seq) == (1, 2, 2)
