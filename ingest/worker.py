"""The decode thread of one source: open, decode, sample, pace, hand off; reconnect when needed."""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable

from ingest.backoff import Backoff
from ingest.counters import WorkerCounters
from ingest.errors import IngestError, SourceStalledError, SourceUnreachableError
from ingest.handoff import FrameHandoff
from ingest.opening import open_session
from ingest.options import IngestOptions
from ingest.records import Frame, SourceState, StreamInfo
from ingest.redact import Redactor
from ingest.sampler import FrameSampler
from ingest.session import DecodeSession, Gap, ReadTimeout, Resumed, StreamLost
from ingest.spec import SourceSpec
from ingest.state import StateTracker
from ingest.timeline import PtsClock

logger = logging.getLogger(__name__)


class _Outcome(enum.Enum):
    END = "end"  # the iterator finished: end of file, or a live stream that ended
    STALLED = "stalled"
    LOST = "lost"
    STOPPED = "stopped"


class DecodeWorker:
    """Runs one source in its own thread until the source ends or :meth:`stop` is called.

    Everything that touches the decoder happens on this thread, including closing it: PyAV
    crashes if a container is closed while another thread is inside it. :meth:`stop` only sets a
    flag and releases the hand-off; the thread notices within one read timeout at worst.
    ``on_first_open`` is called (on this thread) with None or the error of the first open attempt;
    ``on_exit`` when the thread finishes.
    """

    def __init__(
        self,
        spec: SourceSpec,
        options: IngestOptions,
        handoff: FrameHandoff,
        tracker: StateTracker,
        counters: WorkerCounters,
        redactor: Redactor,
        *,
        on_first_open: Callable[[IngestError | None], None] | None = None,
        on_exit: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        self._handoff = handoff
        self._tracker = tracker
        self._counters = counters
        self._redact = redactor
        self._on_first_open = on_first_open
        self._on_exit = on_exit
        self._backoff = Backoff(options.backoff, rng)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"ingest-{spec.source_id}", daemon=True
        )
        self._sampler = FrameSampler(options.fps)
        self._clock: PtsClock | None = None
        self._seq = 0
        self._session = 0  # stamped on each frame: the number of the current connection
        self._pace_anchor: tuple[float, float] | None = None  # (monotonic, pts)
        self._stall_counted = False  # this session's stall is already reported
        self._session_online = False  # this session has delivered a frame
        self.info: StreamInfo | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (non-blocking, callable from any thread)."""
        self._stop.set()
        self._handoff.cancel()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        error: IngestError | None = None
        try:
            self._run()
        except IngestError as exc:
            error = exc
        except Exception as exc:
            # Not logger.exception: the traceback's messages may quote the URL with credentials.
            details = self._redact("".join(traceback.format_exception(exc)))
            logger.error("decode thread of source %s failed:\n%s", self.spec.source_id, details)
            error = IngestError(
                self._redact(f"reading {self.spec.display} failed unexpectedly: {exc!r}"),
                source=self.spec.display,
            )
        finally:
            if self._on_first_open is not None:  # the thread ended before any open finished
                self._first_open(error)
            if error is not None:
                self._tracker.set(SourceState.ENDED, f"failed: {error}")
            elif self._tracker.state is not SourceState.ENDED:
                self._tracker.set(SourceState.ENDED, "closed")
            self._handoff.finish(error)
            if self._on_exit is not None:
                self._on_exit()

    def _first_open(self, error: IngestError | None) -> None:
        callback, self._on_first_open = self._on_first_open, None
        if callback is not None:
            callback(error)

    def _wait(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if asked to stop meanwhile."""
        return self._stop.wait(delay)

    def _run(self) -> None:
        spec = self.spec
        opened_before = False
        self._tracker.set(SourceState.CONNECTING, f"opening {spec.display}")
        while not self._stop.is_set():
            self._counters.connect_attempts += 1
            try:
                session = open_session(spec, self.options, self._counters)
            except IngestError as exc:
                self._counters.connect_failures += 1
                if spec.live is False:
                    raise
                self._first_open(None)
                delay = self._backoff.next_delay()
                self._went_down(SourceState.OFFLINE, f"{exc}; retrying in {delay:.1f} s")
                if self._wait(delay):
                    return
                continue
            if opened_before:
                self._counters.reconnects += 1
            self._session = self._counters.reconnects
            opened_before = True
            self._first_open(None)
            live = session.info.live
            if self._clock is None:
                self._clock = PtsClock(live=live)
                policy, capacity = self.options.handoff_for(live or self.options.realtime)
                self._handoff.configure(policy, capacity)
            self._clock.new_session(session.frame_interval_s)
            self.info = session.info
            outcome, detail = self._pump(session, live)
            if outcome is _Outcome.STOPPED:
                return
            if outcome is _Outcome.END and not live:
                if self.options.loop:
                    logger.debug("source %s: end of file, replaying from the start", spec.source_id)
                    continue
                self._tracker.set(SourceState.ENDED, "end of file")
                return
            if not live:  # a recording over the network that broke off
                cls = SourceStalledError if outcome is _Outcome.STALLED else SourceUnreachableError
                raise cls(f"{spec.display}: {detail}", source=spec.display)
            delay = self._backoff.next_delay()
            if outcome is _Outcome.STALLED and not self._session_online:
                # Opened but never delivered: that is not a stall of a working stream.
                self._went_down(
                    SourceState.OFFLINE, f"opened, but {detail}; reconnecting in {delay:.1f} s"
                )
            elif outcome is _Outcome.STALLED:
                if not self._stall_counted:
                    self._counters.stalls += 1
                self._went_down(SourceState.STALLED, f"{detail}; reconnecting in {delay:.1f} s")
            elif outcome is _Outcome.LOST:
                self._went_down(SourceState.OFFLINE, f"{detail}; reconnecting in {delay:.1f} s")
            else:
                self._went_down(
                    SourceState.OFFLINE, f"the stream ended; reconnecting in {delay:.1f} s"
                )
            if self._wait(delay):
                return

    def _went_down(self, state: SourceState, reason: str) -> None:
        if self._tracker.set(state, reason) is None:
            # Already in that state: one more failed retry. Not a new lifecycle event.
            logger.debug(
                "source %s still %s: %s", self.spec.source_id, state.value, self._redact(reason)
            )

    def _pump(self, session: DecodeSession, live: bool) -> tuple[_Outcome, str]:
        """Decode one session until it ends; returns how it ended and why."""
        assert self._clock is not None
        clock = self._clock
        counters = self._counters
        sampler = self._sampler
        handoff = self._handoff
        stop = self._stop
        pace = not live and self.options.realtime
        reset_after = self.options.backoff.reset_after_s
        online_since: float | None = None
        backoff_reset = False
        last_raw_pts: float | None = None
        decoded_here = 0  # frames of this session, whether or not they carry a timestamp
        self._stall_counted = False
        self._session_online = False
        frames = session.frames()
        try:
            for raw_pts, handle in frames:
                if stop.is_set():
                    return _Outcome.STOPPED, "stopped"
                if isinstance(handle, Gap):
                    if online_since is not None and not self._stall_counted:
                        self._stall_counted = True
                        counters.stalls += 1
                        self._tracker.set(
                            SourceState.STALLED, f"no data for {handle.seconds:.1f} s"
                        )
                    continue
                if isinstance(handle, Resumed):
                    if self._stall_counted:  # data flows again on the same connection
                        self._stall_counted = False
                        self._tracker.set(SourceState.ONLINE, "receiving again after a stall")
                    continue
                now = time.time()
                counters.decoded += 1
                decoded_here += 1
                pts = clock.map(raw_pts, now)
                if raw_pts is not None:
                    last_raw_pts = raw_pts
                if online_since is None:
                    online_since = time.monotonic()
                    self._session_online = True
                    self.info = info = session.info
                    rate = f" at {info.fps:g} fps" if info.fps else ""
                    self._tracker.set(
                        SourceState.ONLINE,
                        f"receiving {info.codec} {info.width}x{info.height}{rate}",
                    )
                elif not backoff_reset and time.monotonic() - online_since >= reset_after:
                    self._backoff.reset()
                    backoff_reset = True
                if not sampler.accept(pts):
                    continue
                counters.sampled += 1
                if pace:
                    if self._pace_anchor is None:
                        self._pace_anchor = (time.monotonic(), pts)
                    due = self._pace_anchor[0] + (pts - self._pace_anchor[1]) - time.monotonic()
                    if due > 0 and stop.wait(due):
                        return _Outcome.STOPPED, "stopped"
                image = session.to_rgb(handle)
                frame = Frame(
                    self.spec.source_id, self._seq, pts, time.time(), image, self._session
                )
                self._seq += 1
                counters.last_frame_wall_time = frame.wall_time
                if not handoff.put(frame):
                    return _Outcome.STOPPED, "stopped"
            session.check_complete(decoded_here, last_raw_pts)
            return _Outcome.END, "end of stream"
        except ReadTimeout as exc:
            return _Outcome.STALLED, str(exc)
        except StreamLost as exc:
            return _Outcome.LOST, self._redact(str(exc))
        finally:
            frames.close()  # finish the generator before its container goes away
            session.close()
