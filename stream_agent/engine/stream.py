"""The event-loop side of one answer: an async iterator fed from the engine thread.

The engine thread never touches asyncio objects: :meth:`AnswerStream.put_threadsafe` puts the
event in a locked inbox and, unless one is already pending, schedules one drain on the loop with
``loop.call_soon_threadsafe`` (so the loop's own callback queue holds at most one entry per
answer). Inbox and buffer are bounded in events: when the reader falls behind, a new text delta
is merged into the last queued one (lossless, counted) rather than queued, so the engine thread
never waits for a client and nothing grows without bound but the answer's own text.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

from stream_agent.answers import AnswerDelta, StreamEvent


class AnswerStream:
    """``async for event in stream``: ``AnswerDelta``s, then exactly one ``AnswerFinal`` or
    ``AnswerFailed``."""

    def __init__(
        self,
        request_id: str,
        cancel_event: threading.Event,
        *,
        capacity: int,
        on_coalesce: Callable[[], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if capacity < 2:
            raise ValueError("an answer buffer needs room for at least two events")
        self._loop = loop or asyncio.get_running_loop()
        self._inbox: deque[list[str] | StreamEvent] = deque()
        self._inbox_lock = threading.Lock()
        self._drain_scheduled = False
        self.request_id = request_id
        self._cancel = cancel_event
        self._capacity = capacity
        self._on_coalesce = on_coalesce
        # A queued delta is a list of text parts (merged deltas); anything else is terminal.
        self._buffer: deque[list[str] | StreamEvent] = deque()
        self._wakeup = asyncio.Event()
        self._ended = False  # a terminal event was pushed
        self._delivered_end = False  # ... and the reader has taken it
        self.coalesced = 0

    def cancel(self) -> None:
        """Ask the engine to stop this answer; the stream still ends with its ``AnswerFinal``."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._delivered_end

    @property
    def backlog(self) -> int:
        """Events waiting (inbox and buffer): never more than twice the capacity."""
        with self._inbox_lock:
            return len(self._inbox) + len(self._buffer)

    def put_threadsafe(self, event: StreamEvent) -> None:
        """Hand an event over from any thread (the engine's)."""
        with self._inbox_lock:
            self._add(self._inbox, event)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancel.set()

    def _drain(self) -> None:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._drain_scheduled = False
        for item in items:
            self.push(AnswerDelta("".join(item)) if isinstance(item, list) else item)

    def push(self, event: StreamEvent) -> None:
        """Add an event on the loop thread; events after the terminal one are ignored."""
        if self._ended:
            return
        with self._inbox_lock:  # _add also counts merges, which the engine thread does too
            self._add(self._buffer, event)
        if not isinstance(event, AnswerDelta):
            self._ended = True
        self._wakeup.set()

    def _add(self, queue: deque[list[str] | StreamEvent], event: StreamEvent) -> None:
        if not isinstance(event, AnswerDelta):
            queue.append(event)  # the terminal event always fits: capacity - 1 below
            return
        last = queue[-1] if queue else None
        if len(queue) >= self._capacity - 1 and isinstance(last, list):
            # Merge into the last queued delta; its parts are joined once, when read.
            last.append(event.text)
            self.coalesced += 1
            if self._on_coalesce is not None:
                self._on_coalesce()
        else:
            queue.append([event.text])

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while not self._buffer:
            if self._delivered_end:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._buffer.popleft()
        if isinstance(item, list):
            return AnswerDelta("".join(item))
        self._delivered_end = True
        return item

    async def collect(self) -> tuple[str, StreamEvent]:
        """Read to the end: (the text of all deltas, the terminal event). For tests and tools."""
        parts: list[str] = []
        terminal: StreamEvent | None = None
        async for event in self:
            if isinstance(event, AnswerDelta):
                parts.append(event.text)
            else:
                terminal = event
        assert terminal is not None
        return "".join(parts), terminal
