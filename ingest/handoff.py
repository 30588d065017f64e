"""The bounded queue between a decode thread and the asyncio consumer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from ingest.options import OverflowPolicy
from ingest.records import Frame

# BLOCK (batch) mode wakes the consumer once per this many frames at most, and no later than
# this long after a frame was queued: a cross-thread wake-up per frame costs about a tenth of
# the decoding time of a small frame.
_BATCH_WAIT_S = 0.02


class HandoffClosed(Exception):
    """Raised by :meth:`FrameHandoff.get` once the producer finished and the queue is empty.

    ``error`` is what ended the producer, or None for a clean end.
    """

    def __init__(self, error: BaseException | None) -> None:
        super().__init__("the frame hand-off is closed")
        self.error = error


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class FrameHandoff:
    """A bounded frame queue written by one thread and read by one coroutine.

    When full, ``DROP_OLDEST`` discards the oldest frame (counted in ``dropped``) and
    ``BLOCK`` makes the producer wait. The producer wakes the event loop only when the consumer
    is waiting: at once under ``DROP_OLDEST`` (live: latency matters), and under ``BLOCK``
    (batch work: throughput matters) once half the queue is full, when the producer finishes, or
    at most ``_BATCH_WAIT_S`` after the first queued frame. Likewise a blocked producer is
    released once the consumer has emptied half the queue, not after every frame.
    """

    def __init__(
        self, capacity: int, policy: OverflowPolicy, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._loop = loop
        self._items: deque[Frame] = deque()
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._finished = False
        self._cancelled = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.capacity = 1
        self.policy = policy
        self._batch = 1
        self.configure(policy, capacity)

    def configure(self, policy: OverflowPolicy, capacity: int) -> None:
        """Set the policy and capacity (the decode thread may change them before the first
        frame, once it knows whether an HTTP source is live)."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._lock:
            self.policy = policy
            self.capacity = capacity
            self._batch = 1 if policy is OverflowPolicy.DROP_OLDEST else max(1, capacity // 2)
            self._space.notify_all()

    @property
    def depth(self) -> int:
        return len(self._items)

    def _wake(self, waiter: asyncio.Future[None] | None) -> None:
        if waiter is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to wake
            self._loop.call_soon_threadsafe(_resolve, waiter)

    def put(self, frame: Frame) -> bool:
        """Producer side: queue ``frame``; False if the consumer has gone (stop producing)."""
        with self._lock:
            while len(self._items) >= self.capacity and not self._cancelled:
                if self.policy is OverflowPolicy.DROP_OLDEST:
                    self._items.popleft()
                    self.dropped += 1
                else:
                    self._space.wait()
            if self._cancelled:
                return False
            self._items.append(frame)
            waiter = None
            if len(self._items) >= self._batch:
                waiter, self._waiter = self._waiter, None
        self._wake(waiter)
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """Producer side: no more frames; the consumer gets the queued ones, then ``error``."""
        with self._lock:
            self._finished = True
            self._error = error
            waiter, self._waiter = self._waiter, None
        self._wake(waiter)

    def cancel(self) -> None:
        """Consumer side: stop now; drop queued frames and release a blocked producer."""
        with self._lock:
            self._cancelled = True
            self._items.clear()
            self._space.notify_all()
            waiter, self._waiter = self._waiter, None
        self._wake(waiter)

    async def get(self) -> Frame:
        """Consumer side: the next frame; raises :class:`HandoffClosed` at the end."""
        while True:
            with self._lock:
                if self._items:
                    frame = self._items.popleft()
                    if len(self._items) <= self.capacity - self._batch:
                        self._space.notify()
                    return frame
                if self._finished or self._cancelled:
                    raise HandoffClosed(None if self._cancelled else self._error)
                waiter: asyncio.Future[None] = self._loop.create_future()
                self._waiter = waiter
                batched = self._batch > 1
            # Frames below the batch size do not wake us: look again after a short while.
            timer = self._loop.call_later(_BATCH_WAIT_S, _resolve, waiter) if batched else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
