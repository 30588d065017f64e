"""The public face of ingest: a source as an async iterator of frames with a watchable state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from ingest.counters import WorkerCounters
from ingest.errors import (
    CorruptSourceError,
    IngestError,
    SourceStalledError,
    SourceUnreachableError,
)
from ingest.handoff import FrameHandoff, HandoffClosed
from ingest.opening import open_session
from ingest.options import IngestOptions
from ingest.records import Frame, IngestCounters, SourceState, StateChange, StreamInfo
from ingest.redact import Redactor
from ingest.session import ReadTimeout, StreamLost
from ingest.spec import SourceSpec
from ingest.state import StateListener, StateTracker
from ingest.worker import DecodeWorker

logger = logging.getLogger(__name__)

# How long aclose() waits for the decode thread beyond its own timeouts before leaving it behind.
_CLOSE_GRACE_S = 2.0


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _as_spec(source: SourceSpec | str) -> SourceSpec:
    return source if isinstance(source, SourceSpec) else SourceSpec.parse(source)


class VideoSource:
    """One video source: ``async with`` it, then ``async for frame in source``.

    A decode thread of its own opens the source, decodes, samples to ``options.fps``, and hands
    frames over through a bounded queue; the event loop never blocks on it. Live sources never
    end on their own: they go ``stalled``/``offline`` and reconnect with backoff, and their frame
    iterator simply waits. A file ends (``ended``) and the iterator stops; a file that cannot be
    opened raises its :class:`~ingest.errors.IngestError` from :meth:`start` (so from
    ``async with``), one damaged further on raises it from the iterator after the good frames.
    An HTTP source whose nature is not given (``live=None``) is retried like a live one until it
    opens; once open, a declared duration makes it a recording that ends.

    Watch the state with ``state``, ``history``, :meth:`state_changes` (async iterator),
    :meth:`add_state_listener` (callback on the loop) or :meth:`wait_for_state`; read the counters
    for metrics with :meth:`counters`. Several sources can run on one loop.
    """

    def __init__(
        self,
        spec: SourceSpec,
        options: IngestOptions | None = None,
        *,
        on_state_change: StateListener | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.options = options or IngestOptions()
        self._redactor = Redactor.for_url(spec.location)
        self._tracker = StateTracker(spec.source_id, self._redactor)
        if on_state_change is not None:
            self._tracker.add_listener(on_state_change)
        self._counters = WorkerCounters()
        self._rng = rng
        self._worker: DecodeWorker | None = None
        self._handoff: FrameHandoff | None = None
        self._exited: asyncio.Future[None] | None = None
        self._error_raised = False

    # --- identity and observation -------------------------------------------------------------

    @property
    def source_id(self) -> str:
        return self.spec.source_id

    @property
    def state(self) -> SourceState:
        """The current state (``connecting`` before start)."""
        return self._tracker.state

    @property
    def history(self) -> tuple[StateChange, ...]:
        """The most recent state changes, oldest first."""
        return self._tracker.history

    @property
    def info(self) -> StreamInfo | None:
        """The properties of the current (or last) session, None until one has opened."""
        return self._worker.info if self._worker is not None else None

    def counters(self) -> IngestCounters:
        """A snapshot of the counters, for metrics."""
        c = self._counters
        handoff = self._handoff
        return IngestCounters(
            source_id=self.source_id,
            state=self.state,
            decoded=c.decoded,
            sampled=c.sampled,
            delivered=c.delivered,
            dropped_stale=handoff.dropped if handoff is not None else 0,
            decode_errors=c.decode_errors,
            connect_attempts=c.connect_attempts,
            connect_failures=c.connect_failures,
            reconnects=c.reconnects,
            stalls=c.stalls,
            state_events_dropped=self._tracker.dropped,
            queue_depth=handoff.depth if handoff is not None else 0,
            queue_capacity=handoff.capacity if handoff is not None else 0,
            last_frame_wall_time=c.last_frame_wall_time,
        )

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(change)`` on the event loop for each later change; returns a remover."""
        return self._tracker.add_listener(listener)

    def state_changes(self, *, include_history: bool = False) -> AsyncIterator[StateChange]:
        """An async iterator of state changes that ends after ``ended``.

        With ``include_history`` it first replays the changes kept so far.
        """
        return self._tracker.subscribe(include_history=include_history)

    async def wait_for_state(
        self, *states: SourceState, timeout: float | None = None
    ) -> StateChange:
        """Wait until the source is in one of ``states``; returns the change that got it there.

        Returns at once if it already is. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        wanted = set(states)
        loop = asyncio.get_running_loop()
        found: asyncio.Future[StateChange] = loop.create_future()

        def listener(change: StateChange) -> None:
            if change.state in wanted and not found.done():
                found.set_result(change)

        remove = self._tracker.add_listener(listener)
        try:
            history = self.history
            if self.state in wanted and history and history[-1].state in wanted:
                return history[-1]
            return await asyncio.wait_for(found, timeout)
        finally:
            remove()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the decode thread (idempotent).

        For a recording (a file, or HTTP with ``live=False``) this waits for the first open and
        raises its error; for a live source it returns at once and the state tells the rest.
        """
        if self._worker is not None:
            return
        loop = asyncio.get_running_loop()
        self._tracker.bind(loop)
        live_like = self.spec.live is not False or self.options.realtime
        policy, capacity = self.options.handoff_for(live_like)
        self._handoff = FrameHandoff(capacity, policy, loop)
        exited: asyncio.Future[None] = loop.create_future()
        self._exited = exited
        opened: asyncio.Future[None] | None = None
        on_first_open: Callable[[IngestError | None], None] | None = None
        if self.spec.live is False:
            opened = loop.create_future()
            waiter = opened

            def on_first_open(error: IngestError | None) -> None:
                loop.call_soon_threadsafe(_settle, waiter, error)

        def on_exit() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(_settle, exited, None)

        self._worker = DecodeWorker(
            self.spec,
            self.options,
            self._handoff,
            self._tracker,
            self._counters,
            self._redactor,
            on_first_open=on_first_open,
            on_exit=on_exit,
            rng=self._rng,
        )
        self._worker.start()
        if opened is not None:
            try:
                await opened
            except IngestError:
                self._error_raised = True  # raised here; the iterator just ends
                await self.aclose()
                raise

    async def aclose(self) -> None:
        """Stop the decode thread and wait for it (at most about one read timeout)."""
        worker, exited = self._worker, self._exited
        if worker is None or exited is None:
            self._tracker.set(SourceState.ENDED, "closed before it started")
            return
        worker.stop()
        limit = self.options.open_timeout_s + self.options.read_timeout_s + _CLOSE_GRACE_S
        try:
            await asyncio.wait_for(asyncio.shield(exited), limit)
        except TimeoutError:
            logger.warning(
                "decode thread of source %s did not stop within %.0f s; leaving it behind",
                self.source_id,
                limit,
            )

    async def __aenter__(self) -> VideoSource:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- frames --------------------------------------------------------------------------------

    def __aiter__(self) -> VideoSource:
        return self

    async def __anext__(self) -> Frame:
        if self._handoff is None:
            await self.start()
        assert self._handoff is not None
        try:
            frame = await self._handoff.get()
        except HandoffClosed as closed:
            if closed.error is not None and not self._error_raised:
                self._error_raised = True
                raise closed.error from None
            raise StopAsyncIteration from None
        self._counters.delivered += 1
        return frame


def open_source(
    source: SourceSpec | str,
    options: IngestOptions | None = None,
    *,
    on_state_change: StateListener | None = None,
) -> VideoSource:
    """Make a :class:`VideoSource` (not started: use ``async with`` or ``await start()``).

    ``source`` is a :class:`SourceSpec` or the text :meth:`SourceSpec.parse` accepts.
    """
    return VideoSource(_as_spec(source), options, on_state_change=on_state_change)


def probe_source_sync(source: SourceSpec | str, options: IngestOptions | None = None) -> StreamInfo:
    """Open ``source`` once, decode its first frame, close it, and return its properties.

    Unlike a running :class:`VideoSource`, every failure is raised as its typed error, live
    sources included (connection refused -> ``SourceUnreachableError``, and so on). Blocks for at
    most about the open timeout plus the read timeout.
    """
    spec = _as_spec(source)
    opts = options or IngestOptions()
    session = open_session(spec, opts, WorkerCounters())
    frames = session.frames()
    try:
        for _pts, handle in frames:
            session.to_rgb(handle)
            return session.info
        session.check_complete(0, None)
        raise CorruptSourceError(
            f"{spec.display} ended before its first frame", source=spec.display
        )
    except ReadTimeout:
        raise SourceStalledError(
            f"{spec.display} opened but sent no frame within {opts.read_timeout_s:g} s",
            source=spec.display,
        ) from None
    except StreamLost as exc:
        raise SourceUnreachableError(
            Redactor.for_url(spec.location)(f"{spec.display}: {exc}"), source=spec.display
        ) from None
    finally:
        frames.close()
        session.close()


async def probe_source(
    source: SourceSpec | str, options: IngestOptions | None = None
) -> StreamInfo:
    """:func:`probe_source_sync` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(probe_source_sync, source, options)
