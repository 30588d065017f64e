"""A source's state machine as callers see it: current state, history, listeners, subscriptions.

The decode thread calls :meth:`StateTracker.set`; the current state changes at once (readable
from any thread), and the change is delivered to listeners and subscribers on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from ingest.records import SourceState, StateChange
from ingest.redact import Redactor

logger = logging.getLogger(__name__)

StateListener = Callable[[StateChange], None]

_QUIET_STATES = (SourceState.CONNECTING, SourceState.ONLINE, SourceState.ENDED)


class StateTracker:
    """Holds one source's state and fans its changes out on the event loop.

    Listeners are plain callables run on the loop (keep them short; an exception is logged and
    does not stop the others). Subscribers are async iterators with a bounded queue each: a
    subscriber that falls ``queue_size`` changes behind loses the oldest ones, counted in
    ``dropped``. ``history`` keeps the last ``history_size`` changes.
    """

    def __init__(
        self,
        source_id: str,
        redactor: Redactor,
        *,
        history_size: int = 64,
        queue_size: int = 64,
    ) -> None:
        self._source_id = source_id
        self._redact = redactor
        self._state = SourceState.CONNECTING
        self._lock = threading.Lock()
        self._count = 0  # number of changes so far; a change's index orders it
        self._history: deque[tuple[int, StateChange]] = deque(maxlen=history_size)
        self._listeners: list[StateListener] = []
        self._subscribers: set[asyncio.Queue[tuple[int, StateChange]]] = set()
        self._queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def history(self) -> tuple[StateChange, ...]:
        with self._lock:
            return tuple(change for _, change in self._history)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver changes on ``loop`` from now on."""
        self._loop = loop

    def set(self, state: SourceState, reason: str = "") -> StateChange | None:
        """Move to ``state`` (from any thread); returns the change, or None if already there."""
        reason = self._redact(reason)
        with self._lock:
            previous = self._state
            if previous is state and self._count:
                return None
            change = StateChange(
                source_id=self._source_id,
                state=state,
                previous=previous if self._count else None,
                wall_time=time.time(),
                reason=reason,
            )
            self._state = state
            index = self._count
            self._count += 1
            self._history.append((index, change))
        level = logging.INFO if state in _QUIET_STATES else logging.WARNING
        logger.log(level, "source %s is %s: %s", self._source_id, state.value, reason or "-")
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(self._dispatch, index, change)
        return change

    def _dispatch(self, index: int, change: StateChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("state listener of source %s failed", self._source_id)
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait((index, change))

    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(change)`` on the loop for every later change; returns a remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def subscribe(self, *, include_history: bool = False) -> AsyncIterator[StateChange]:
        """An async iterator of changes; it ends after the ``ended`` change.

        With ``include_history`` it first replays the kept history, so that a subscriber that
        arrives late still sees how the source got to its current state.
        """
        queue: asyncio.Queue[tuple[int, StateChange]] = asyncio.Queue(self._queue_size)
        with self._lock:
            replay = list(self._history) if include_history else []
            seen = self._count - 1
            ended = self._state is SourceState.ENDED
        self._subscribers.add(queue)
        return self._iterate(queue, replay, seen, ended)

    async def _iterate(
        self,
        queue: asyncio.Queue[tuple[int, StateChange]],
        replay: list[tuple[int, StateChange]],
        seen: int,
        ended: bool,
    ) -> AsyncIterator[StateChange]:
        try:
            for _, change in replay:
                yield change
            if ended:
                return
            while True:
                index, change = await queue.get()
                if index <= seen:  # already replayed from the history
                    continue
                yield change
                if change.state is SourceState.ENDED:
                    return
        finally:
            self._subscribers.discard(queue)
