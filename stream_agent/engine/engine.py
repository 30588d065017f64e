"""The engine: one thread that owns the :class:`~stream_agent.engine.worker.Worker`.

Everything that touches the model goes through here, one item at a time, in priority order
(questions, then flush/stop, then frames; see :mod:`stream_agent.engine.queue`). The event loop
talks to the engine only through messages: frames and questions in, :class:`AnswerStream` events
out (handed over with ``loop.call_soon_threadsafe``), plus a status snapshot that any thread can
read without waiting for the engine. A worker exception fails only the request it happened in;
the thread carries on. A worker that offers ``attach_yield_point`` also lets questions in
between the vision layer groups of a frame's encode (see :mod:`stream_agent.engine.worker`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from stream_agent.answers import (
    AnswerDelta,
    AnswerFailed,
    AnswerFinal,
    AnswerTimings,
    FailureCode,
)
from stream_agent.config import EngineConfig
from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore
from stream_agent.engine.errors import CheckDropped, EngineBusy, EngineStopped
from stream_agent.engine.queue import (
    CHECK_CAPACITY,
    CheckItem,
    ControlItem,
    OverflowPolicy,
    QuestionItem,
    QueueFull,
    WorkQueue,
)
from stream_agent.engine.records import (
    EngineStatus,
    FrameBatch,
    FrameLike,
    Question,
    WorkerStatus,
)
from stream_agent.engine.status_metrics import publish_status
from stream_agent.engine.stream import AnswerStream
from stream_agent.engine.worker import Worker
from stream_agent.errors import StreamAgentError
from stream_agent.metrics import DaemonMetrics

log = logging.getLogger(__name__)

ShutdownMode = Literal["finish", "cancel"]
_REFUSAL_CODES: dict[str, FailureCode] = {
    "bad_request": "bad_request",
    "unknown_camera": "unknown_camera",
    "busy": "busy",
}


def refusal_code(exc: BaseException) -> FailureCode | None:
    """The protocol code of a worker error that refuses a question as asked (a
    :class:`~stream_agent.errors.StreamAgentError` whose ``code`` is ``bad_request``,
    ``unknown_camera`` or ``busy``); None for a failure (reported as ``internal``)."""
    if isinstance(exc, StreamAgentError):
        return _REFUSAL_CODES.get(exc.code)
    return None


class Engine:
    """Feeds a :class:`Worker` from a bounded priority queue on its own thread.

    ``submit_frame`` may be called from any thread; ``ask`` from the event loop's thread;
    ``stop`` blocks (call it through ``asyncio.to_thread`` or use :meth:`aclose`).
    """

    def __init__(
        self,
        worker: Worker,
        config: EngineConfig,
        *,
        metrics: DaemonMetrics | None = None,
        check_capacity: int = CHECK_CAPACITY,
    ) -> None:
        self._worker = worker
        self._config = config
        self._metrics = metrics
        self._queue = WorkQueue(
            frames_per_camera=config.frame_queue_per_camera,
            frame_policy=OverflowPolicy(config.frame_overflow),
            question_capacity=config.question_queue,
            max_batch_frames=config.max_batch_frames,
            check_capacity=check_capacity,
        )
        self._checks_dropped: dict[str, int] = {}
        self._lock = threading.Lock()
        self._accepting = False
        self._opened = False
        self._thread: threading.Thread | None = None
        self._live: dict[int, QuestionItem] = {}  # queued or being answered
        self._answering = 0
        self._worker_status = WorkerStatus(ready=False, reason="the engine has not started")
        self._dropped: dict[str, int] = {}
        self._drops: dict[tuple[str, str], int] = {}  # (camera, reason) -> frames
        self._encoded: dict[str, int] = {}
        self._lag: dict[str, float] = {}
        self._encode_failures: dict[str, int] = {}
        if metrics is not None:
            metrics.registry.add_collector(self._collect_metrics)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread; the worker's ``open`` runs there first."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the engine was already started")
            self._accepting = True
            self._worker_status = WorkerStatus(ready=False, reason="loading the model")
            self._thread = threading.Thread(
                target=self._run, name="stream-agent-engine", daemon=True
            )
        self._thread.start()
        log.info("engine started")

    def stop(self, mode: ShutdownMode = "finish", grace_s: float | None = None) -> bool:
        """Stop taking work, finish (or cancel) the questions in flight, flush, close.

        With ``finish``, questions already accepted are answered; if that takes longer than
        ``grace_s`` they are cancelled. Returns True when the thread has ended.
        """
        grace = self._config.shutdown_grace_s if grace_s is None else grace_s
        with self._lock:
            thread = self._thread
            already = not self._accepting
            self._accepting = False
        if thread is None:
            return True
        if not already:
            log.info("engine stopping (%s questions in flight: %s)", mode, len(self._live))
            if mode == "cancel":
                self._cancel_all()
            self._queue.put_control(ControlItem("stop"), force=True)
        thread.join(grace)
        if thread.is_alive() and mode == "finish":
            log.warning("engine: answers still running after %.1f s; cancelling them", grace)
            self._cancel_all()
            thread.join(grace)
        if thread.is_alive():
            log.error("engine thread did not end within %.1f s of being cancelled", grace)
            return False
        return True

    async def aclose(self, mode: ShutdownMode = "finish", grace_s: float | None = None) -> bool:
        """:meth:`stop` without blocking the event loop."""
        return await asyncio.to_thread(self.stop, mode, grace_s)

    @property
    def accepting(self) -> bool:
        """True between ``start`` and ``stop``: frames and questions are taken."""
        return self._accepting

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    # --- inbound -------------------------------------------------------------------------------

    def submit_frame(self, frame: FrameLike) -> bool:
        """Queue a frame for encoding; returns False if this frame itself was shed."""
        if not self._accepting:
            self._count_drop(frame.source_id, "shutdown")
            return False
        shed = self._queue.put_frame(frame)
        if shed is not None:
            self._count_drop(shed.source_id, "overflow")
        return shed is not frame

    def ask(self, question: Question) -> AnswerStream:
        """Queue a question; its events arrive on the returned stream (on this event loop).

        Raises :class:`EngineBusy` when the question queue is full and :class:`EngineStopped`
        when the engine is shutting down.
        """
        cancel = threading.Event()
        stream = AnswerStream(
            question.request_id,
            cancel,
            capacity=self._config.answer_buffer_events,
            on_coalesce=self._count_coalesce,
            loop=asyncio.get_running_loop(),
        )
        item = QuestionItem(question, cancel, stream.put_threadsafe)
        with self._lock:
            if not self._accepting:
                raise EngineStopped("the server is shutting down and takes no new questions")
            try:
                self._queue.put_question(item)
            except QueueFull:
                raise EngineBusy(
                    f"the engine already has {self._config.question_queue} questions waiting; "
                    "ask again when one is answered"
                ) from None
            self._live[id(item)] = item
        return stream

    def check_rules(
        self, camera: str, conditions: Sequence[RuleCondition]
    ) -> concurrent.futures.Future[tuple[RuleScore, ...]]:
        """Queue a rule check of ``camera`` (behind questions, ahead of frames); the future
        resolves with one :class:`RuleScore` per condition. It fails with
        :class:`EngineStopped` at shutdown, :class:`CheckDropped` when a newer check pushed it
        out of the full queue, or with the worker's error; ``future.cancel()`` withdraws it
        while it waits (any thread may call this)."""
        return self._put_check(CheckItem(camera, conditions=tuple(conditions)))

    def describe(self, request: DescribeRequest) -> concurrent.futures.Future[str]:
        """Queue a description (the answer path with a one-sentence prompt, at most
        ``request.max_new_tokens`` tokens); queued and failed like :meth:`check_rules`."""
        return self._put_check(CheckItem(request.camera, describe=request))

    def _put_check(self, item: CheckItem) -> concurrent.futures.Future[Any]:
        with self._lock:
            accepting = self._accepting
        if not accepting:
            item.done.set_exception(EngineStopped("the engine is not running; no rule checks"))
            self._count_check_drop("shutdown")
            return item.done
        shed = self._queue.put_check(item)
        if shed is not None:
            self._count_check_drop("overflow")
            if shed.done.set_running_or_notify_cancel():
                shed.done.set_exception(CheckDropped("a newer rule check took this one's place"))
        return item.done

    @property
    def checks_dropped(self) -> dict[str, int]:
        """Rule checks shed, by reason (``overflow``, ``shutdown``)."""
        with self._lock:
            return dict(self._checks_dropped)

    def flush(self) -> concurrent.futures.Future[None]:
        """Ask the worker to write its memories to disk; the future resolves when done."""
        item = ControlItem("flush")
        if not self.running:
            item.done.set_exception(EngineStopped("the engine is not running"))
            return item.done
        try:
            self._queue.put_control(item)
        except QueueFull as exc:
            item.done.set_exception(EngineBusy(str(exc)))
        return item.done

    def snapshot(self) -> EngineStatus:
        """The engine's state now, without waiting for the engine thread."""
        frames, questions = self._queue.depth()
        with self._lock:
            return EngineStatus(
                worker=self._worker_status,
                running=self.running,
                queued_frames=frames,
                queued_questions=questions,
                answering=self._answering,
                frames_dropped=dict(self._dropped),
                frames_encoded=dict(self._encoded),
                frame_lag_s=dict(self._lag),
                queued_checks=self._queue.check_depth(),
                drops=dict(self._drops),
            )

    # --- the engine thread ---------------------------------------------------------------------

    def _serve_waiting(self) -> None:
        """Answer the questions waiting now, then run the waiting rule checks (questions that
        arrive meanwhile first), on this thread, in the middle of a frame's encode (the worker
        calls this between vision layer groups): a question waits at most one layer group, not
        one frame. Never encodes frames."""
        while True:
            question = self._queue.take_question()
            if question is not None:
                self._answer(question)
                continue
            check = self._queue.take_check()  # rule checks after questions, before frames
            if check is None:
                return
            self._check(check)

    def _run(self) -> None:
        attach = getattr(self._worker, "attach_yield_point", None)
        if callable(attach):  # optional: a worker that encodes in one piece has no such hook
            attach(self._serve_waiting)
        try:
            self._worker.open()
            self._opened = True
            log.info("engine: worker ready")
        except Exception as exc:
            if isinstance(exc, StreamAgentError):  # expected (no model there): one line
                log.error("engine: the worker could not start: %s", exc)
                log.debug("engine: the worker's start-up failure", exc_info=True)
            else:  # a bug or an unexpected library failure: keep its traceback
                log.exception("engine: the worker could not start")
            reason = f"the model could not be loaded: {exc}"
            with self._lock:
                self._worker_status = WorkerStatus(ready=False, reason=reason)
        self._refresh_status()
        stop_item: ControlItem | None = None
        try:
            while stop_item is None:
                item = self._queue.get()
                if item is None:
                    continue
                if isinstance(item, FrameBatch):
                    self._encode(item)  # refreshes the status itself
                    continue
                if isinstance(item, QuestionItem):
                    self._answer(item)
                elif isinstance(item, CheckItem):
                    self._check(item)
                elif item.kind == "flush":
                    self._flush(item)
                else:
                    stop_item = item
                self._refresh_status()
        finally:
            self._shutdown(stop_item)

    def _shutdown(self, stop_item: ControlItem | None) -> None:
        for item in self._queue.drain_questions():
            self._finish_unanswered(item, "the server is shutting down")
        for check in self._queue.drain_checks():
            self._count_check_drop("shutdown")
            if check.done.set_running_or_notify_cancel():
                check.done.set_exception(EngineStopped("the engine stopped before this check"))
        for camera, count in self._queue.drain_frames().items():
            self._count_drop(camera, "shutdown", count)
        if self._opened:
            try:
                self._worker.flush()
                log.info("engine: memories flushed")
            except Exception:
                log.exception("engine: flushing the memories failed")
            try:
                self._worker.close()
            except Exception:
                log.exception("engine: closing the worker failed")
        with self._lock:
            self._accepting = False
            self._worker_status = WorkerStatus(ready=False, reason="the engine has stopped")
        if stop_item is not None:
            stop_item.done.set_result(None)
        log.info("engine stopped")

    def _refresh_status(self) -> None:
        if not self._opened:
            return
        try:
            status = self._worker.status()
        except Exception:
            log.exception("engine: the worker's status() failed")
            return
        with self._lock:
            self._worker_status = status

    def _encode(self, batch: FrameBatch) -> None:
        camera = batch.camera
        if not self._opened:
            self._count_drop(camera, "not_ready", len(batch.frames))
            return
        try:
            self._worker.encode(batch)
        except Exception:
            failures = self._encode_failures.get(camera, 0) + 1
            self._encode_failures[camera] = failures
            if failures == 1:  # one log line per streak of failures, not one per frame
                log.exception("engine: encoding frames of camera %s failed", camera)
            self._count_drop(camera, "error", len(batch.frames))
            if self._metrics is not None:
                self._metrics.engine_encode_errors.inc(camera=camera)
            return
        failures = self._encode_failures.pop(camera, 0)
        if failures:
            log.info("engine: camera %s encodes again after %d failed batches", camera, failures)
        lag = max(0.0, time.time() - batch.frames[-1].wall_time)
        # Metrics and memory status first: whoever sees the frames counted sees their effect.
        if self._metrics is not None:
            self._metrics.engine_frames_encoded.inc(len(batch.frames), camera=camera)
        self._refresh_status()
        with self._lock:
            self._encoded[camera] = self._encoded.get(camera, 0) + len(batch.frames)
            self._lag[camera] = lag

    def _flush(self, item: ControlItem) -> None:
        if not self._opened:
            item.done.set_exception(EngineStopped("the model is not loaded; nothing to flush"))
            return
        try:
            self._worker.flush()
        except Exception as exc:
            log.exception("engine: flushing the memories failed")
            item.done.set_exception(exc)
        else:
            item.done.set_result(None)

    def _check(self, item: CheckItem) -> None:
        done = item.done
        if not done.set_running_or_notify_cancel():
            return  # withdrawn by the caller while it waited
        if not self._opened:
            reason = self._worker_status.reason or "the model is not loaded"
            done.set_exception(EngineStopped(f"no rule check: {reason}"))
            return
        try:
            if item.describe is not None:
                result: Any = self._worker.describe(item.describe)
            else:
                scores = tuple(self._worker.check(item.camera, item.conditions))
                if len(scores) != len(item.conditions):
                    raise RuntimeError(
                        f"the worker scored {len(scores)} of {len(item.conditions)} conditions"
                    )
                result = scores
        except Exception as exc:
            log.debug("engine: rule check of %s failed: %s", item.camera, exc)
            done.set_exception(exc)
        else:
            done.set_result(result)

    def _answer(self, item: QuestionItem) -> None:
        question = item.question
        with self._lock:
            self._answering += 1
        try:
            if item.cancel.is_set():
                self._finish_unanswered(item, None)
            elif not self._opened:
                reason = self._worker_status.reason or "the model is not loaded"
                self._fail(item, f"no answer: {reason}")
            else:
                self._generate(item)
        except BaseException:  # the thread is going down: the question still gets its end
            self._fail(item, "the engine stopped while answering this question")
            raise
        finally:
            with self._lock:
                self._answering -= 1
                self._live.pop(id(item), None)
        log.debug("engine: finished question %s", question.request_id)

    def _generate(self, item: QuestionItem) -> None:
        question = item.question
        parts: list[str] = []
        final: AnswerFinal | None = None
        try:
            events = self._worker.answer(question, item.cancel)
            try:
                overdue = False
                for event in events:
                    if isinstance(event, AnswerDelta):
                        if event.text:
                            parts.append(event.text)
                            item.deliver(event)
                    elif isinstance(event, AnswerFinal):
                        final = event
                        break
                    else:
                        raise TypeError(f"the worker yielded {type(event).__name__}")
                    if item.cancel.is_set():
                        # the worker ends with its cancelled final at its next event; one
                        # that does not is cut off
                        if overdue:
                            break
                        overdue = True
            finally:
                close = getattr(events, "close", None)
                if callable(close):
                    close()
        except Exception as exc:
            code = refusal_code(exc)
            if code is None:
                log.exception("engine: answering question %s failed", question.request_id)
                self._fail(item, f"the answer failed: {type(exc).__name__}: {exc}")
            else:  # the worker refused the question as asked: the client's error, not ours
                log.info("engine: question %s refused (%s): %s", question.request_id, code, exc)
                self._fail(item, str(exc), code=code)
            return
        if final is None:  # the worker stopped without its final (cut off, or it broke off)
            final = AnswerFinal(
                text="".join(parts),
                evidence=(),
                tokens=len(parts),
                finish_reason="cancelled" if item.cancel.is_set() else "stop",
                timings=AnswerTimings(ttft_s=None, tokens_per_s=None, total_s=0.0),
            )
        self._deliver_final(item, final)

    def _deliver_final(self, item: QuestionItem, final: AnswerFinal) -> None:
        """Deliver the worker's final, its timings counted from receipt: the engine adds the
        time the question waited before the worker's clock started (and nothing else)."""
        waited = time.monotonic() - item.question.received_at - final.timings.total_s
        timings = final.timings.after_wait(waited)
        evidence = () if final.finish_reason == "cancelled" else final.evidence
        final = replace(final, evidence=evidence, timings=timings)
        # Count before delivering, so that whoever sees the answer also sees it counted.
        if self._metrics is not None:
            self._metrics.observe_answer(final.finish_reason, timings)
        item.deliver(final)

    def _finish_unanswered(self, item: QuestionItem, failure: str | None) -> None:
        """End a question that never reached the worker: cancelled, or failed with a reason."""
        if failure is not None and not item.cancel.is_set():
            self._fail(item, failure, code="busy")
            return
        if self._metrics is not None:
            self._metrics.answers.inc(outcome="cancelled")
        waited = max(0.0, time.monotonic() - item.question.received_at)
        item.deliver(
            AnswerFinal(
                text="",
                evidence=(),
                tokens=0,
                finish_reason="cancelled",
                timings=AnswerTimings(ttft_s=None, tokens_per_s=None, total_s=0.0).after_wait(
                    waited
                ),
            )
        )
        with self._lock:
            self._live.pop(id(item), None)

    def _fail(self, item: QuestionItem, message: str, code: FailureCode = "internal") -> None:
        if self._metrics is not None:
            self._metrics.answers.inc(outcome="failed")
        item.deliver(AnswerFailed(code=code, message=message))
        with self._lock:
            self._live.pop(id(item), None)

    # --- helpers -------------------------------------------------------------------------------

    def _cancel_all(self) -> None:
        with self._lock:
            items = list(self._live.values())
        for item in items:
            item.cancel.set()

    def _count_drop(self, camera: str, reason: str, count: int = 1) -> None:
        with self._lock:
            self._dropped[camera] = self._dropped.get(camera, 0) + count
            key = (camera, reason)
            self._drops[key] = self._drops.get(key, 0) + count
        if self._metrics is not None:
            self._metrics.engine_frames_dropped.inc(count, camera=camera, reason=reason)

    def _count_check_drop(self, reason: str) -> None:
        with self._lock:
            self._checks_dropped[reason] = self._checks_dropped.get(reason, 0) + 1
        if self._metrics is not None:
            self._metrics.engine_checks_dropped.inc(reason=reason)

    def _count_coalesce(self) -> None:
        if self._metrics is not None:
            self._metrics.answer_deltas_coalesced.inc()

    def _collect_metrics(self) -> None:
        assert self._metrics is not None
        publish_status(self._metrics, self.snapshot())


def question_received_now() -> float:
    """The clock ``Question.received_at`` uses."""
    return time.monotonic()
