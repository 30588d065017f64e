"""``placement: ray``: engine actors on a Ray cluster behind one front in the daemon.

The front joins the cluster (or starts a local one), starts ``engines`` actors with the
configured resources, places the cameras on them by load
(:func:`~stream_agent.placement.policy.assign`) and then behaves like one engine:

* ``submit_frame`` sends the frame to the actor owning its camera (the decoded array travels in
  the call; Ray puts it in its object store when large). In-flight sends per camera are bounded
  by ``engine.frame_queue_per_camera``; a frame that finds the bound reached is dropped and
  counted (``overflow``), like the local queue's drop.
* ``ask`` for one camera streams the owner's answer events back unchanged (a Ray streaming
  generator); for all cameras it asks every engine that owns a camera and keeps the answer of
  the engine with the best-scoring moment, with the evidence of all
  (:mod:`~stream_agent.placement.merge`). Time to first token is measured here, at the front.
* A health thread checks the actors every ``health_interval_s`` and refreshes their status; an
  actor that does not answer is dead: its cameras move to the survivors
  (:func:`~stream_agent.placement.policy.reassign`), which open their memory stores from the
  shared ``memory.store_dir`` (written at each flush, every ``flush_interval_s`` and at stop).
* The same health pass collects each actor's frame notes (every frame's changed share, what the
  alerts' motion gate reads) and hands them to ``on_frame`` here, so rules gate on Ray as they
  do locally, about ``health_interval_s`` later; and it mirrors the actors' counters (frames
  encoded and shed, by camera and reason) into the front's metrics. Answers are counted and
  timed at the front, as the local engine counts them.
* ``stop`` stops every engine (each flushes its memories), then leaves the cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from stream_agent.answers import AnswerDelta, AnswerFailed, AnswerFinal, AnswerTimings
from stream_agent.config import DaemonConfig
from stream_agent.engine import (
    AnswerStream,
    EngineBusy,
    EngineStatus,
    EngineStopped,
    FrameLike,
    Question,
    ShutdownMode,
    WorkerStatus,
)
from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore
from stream_agent.engine.records import StreamEvent
from stream_agent.engine.status_metrics import publish_status
from stream_agent.metrics import DaemonMetrics
from stream_agent.pipeline.stages import FrameNote
from stream_agent.placement.base import CameraPlacement
from stream_agent.placement.merge import Candidate, from_final, pick
from stream_agent.placement.policy import CameraLoad, assign, reassign
from stream_agent.placement.ray_actor import EngineActor

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05
READY_TIMEOUT_S = 600.0
NAMESPACE = "stream-agent"
"""The Ray namespace of the engine actors (named ``engine-0`` ...: ``ray.get_actor``)."""


def camera_loads(config: DaemonConfig) -> list[CameraLoad]:
    """Each enabled camera's load: its fps times the pruner's tokens per frame."""
    tokens = config.pruner.tokens_per_frame or 196
    return [CameraLoad(c.name, c.fps, tokens) for c in config.enabled_cameras]


class _Engine:
    def __init__(self, engine_id: str, handle: Any) -> None:
        self.id = engine_id
        self.handle = handle
        self.node = "?"
        self.alive = True
        self.status: EngineStatus | None = None


class RayEngineGroup:
    """Engine actors on Ray behind the engine's interface (see the module docstring)."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        metrics: DaemonMetrics | None = None,
        on_frame: FrameNote | None = None,
    ) -> None:
        """``on_frame`` hears of every frame an engine's vision chain took (see the module)."""
        self._config = config
        self._on_frame = on_frame
        self._metrics: DaemonMetrics | None = metrics
        self._seen_encoded: dict[tuple[str, str], int] = {}  # (engine, camera) -> mirrored
        self._seen_drops: dict[tuple[str, str, str], int] = {}  # (engine, camera, reason)
        self.notes_lost = 0  # frame notes an actor dropped before the front collected them
        self._ray = config.engine.placement.ray
        self._loads = camera_loads(config)
        self.opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._engines: dict[str, _Engine] = {}
        self._owner: dict[str, str] = {}
        self._inflight: dict[str, deque[Any]] = {}
        self._dropped: dict[str, int] = {}
        self._accepting = False
        self._started_ray = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.moves = 0
        self.last_move_s: float | None = None
        if metrics is not None:
            self._gauge = metrics.registry.scraped_gauge(
                "stream_agent_camera_engine",
                "1 for the engine (and Ray node) that owns the camera",
                ("camera", "engine", "node"),
            )
            metrics.registry.add_collector(self._collect_metrics)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Join the cluster and start the engines; ``opened`` resolves when all are ready."""
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="stream-agent-ray", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._connect()
            self._wait_ready()
        except BaseException as exc:
            log.error("ray placement: the engines could not start: %s", exc)
            self.opened.set_exception(exc)
            return
        self.opened.set_result(None)
        last_flush = time.monotonic()
        flushing: concurrent.futures.Future[None] | None = None
        while not self._stop.wait(self._ray.health_interval_s):
            try:
                self._check()
            except Exception:  # keep checking: a failed move is retried at the next check
                log.exception("ray placement: the health check failed")
            # a flush waits behind the engines' questions: never let it hold up the checks
            if flushing is not None and flushing.done():
                if flushing.exception() is not None:
                    log.warning("ray placement: a periodic flush failed: %s", flushing.exception())
                flushing = None
            if flushing is None and time.monotonic() - last_flush >= self._ray.flush_interval_s:
                last_flush = time.monotonic()
                flushing = self.flush()

    def _connect(self) -> None:
        if not ray.is_initialized():
            address = self._ray.address
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self._started_ray = True  # ours to shut down (the cluster itself stays if joined)
        names = [f"engine-{i}" for i in range(self._ray.engines)]
        owner = assign(self._loads, names)
        remote = ray.remote(EngineActor)
        with self._lock:
            self._owner = owner
            for name in names:
                cams = tuple(c for c, e in owner.items() if e == name)
                handle = remote.options(
                    name=name,
                    namespace=NAMESPACE,
                    num_cpus=self._ray.num_cpus,
                    num_gpus=self._ray.num_gpus,
                    max_restarts=0,
                ).remote(name, self._config, cams)
                self._engines[name] = _Engine(name, handle)
        log.info(
            "ray placement: %d engines; %s",
            len(names),
            ", ".join(f"{c} on {e}" for c, e in sorted(owner.items())),
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for engine in list(self._engines.values()):
            engine.node = ray.get(engine.handle.node.remote(), timeout=READY_TIMEOUT_S)
        while time.monotonic() < deadline:
            self._check()
            statuses = [e.status for e in self._engines.values() if e.alive]
            if statuses and all(s is not None and s.worker.ready for s in statuses):
                return
            failed = [
                s.worker.reason
                for s in statuses
                if s is not None and not s.worker.ready and s.worker.reason.startswith("the model")
            ]
            if failed:
                raise RuntimeError(failed[0])
            time.sleep(0.1)
        raise TimeoutError("the engines did not load their model in time")

    def _check(self) -> None:
        """Refresh every live engine's status and collect its frame notes; move the cameras
        of one that is gone."""
        engines = [e for e in self._engines.values() if e.alive]
        if not engines:
            return
        refs = [e.handle.snapshot.remote() for e in engines]
        notes = [e.handle.frame_notes.remote() for e in engines]
        dead: list[_Engine] = []
        # A slow answer is not a death: only an actor Ray reports dead has its cameras moved
        # (an engine busy past the wait keeps its last status until the next check).
        wait = max(5.0, 5 * self._ray.health_interval_s)
        ready, _ = ray.wait(refs + notes, num_returns=len(refs) + len(notes), timeout=wait)
        landed = set(ready)
        for engine, ref, note_ref in zip(engines, refs, notes, strict=True):
            if ref not in landed:
                log.debug("ray placement: engine %s is slow to report its status", engine.id)
                continue
            try:
                engine.status = ray.get(ref)
                if note_ref in landed:
                    self._deliver_notes(*ray.get(note_ref))
            except RayActorError as exc:
                log.error("ray placement: engine %s is gone (%s)", engine.id, type(exc).__name__)
                dead.append(engine)
                continue
            except RayError as exc:
                log.warning("ray placement: engine %s status failed: %s", engine.id, exc)
                continue
            self._mirror_counters(engine)
        if dead:
            self._move_from(dead)

    def _deliver_notes(self, notes: Sequence[tuple[str, float, float | None]], lost: int) -> None:
        if lost:
            self.notes_lost += lost
            log.warning("ray placement: %d frame notes were dropped before collection", lost)
        if self._on_frame is None:
            return
        for camera, wall_time, share in notes:
            self._on_frame(camera, wall_time, share)

    def _mirror_counters(self, engine: _Engine) -> None:
        """Add what an engine encoded and shed since its last status to the front's counters."""
        m, status = self._metrics, engine.status
        if m is None or status is None:
            return
        for camera, total in status.frames_encoded.items():
            key = (engine.id, camera)
            delta = total - self._seen_encoded.get(key, 0)
            self._seen_encoded[key] = total
            if delta > 0:
                m.engine_frames_encoded.inc(delta, camera=camera)
        for (camera, reason), total in status.drops.items():
            dkey = (engine.id, camera, reason)
            delta = total - self._seen_drops.get(dkey, 0)
            self._seen_drops[dkey] = total
            if delta > 0:
                m.engine_frames_dropped.inc(delta, camera=camera, reason=reason)

    def _move_from(self, dead: list[_Engine]) -> None:
        started = time.monotonic()
        with self._lock:
            for engine in dead:
                engine.alive = False
            alive = [e.id for e in self._engines.values() if e.alive]
            before = dict(self._owner)
            after = reassign(before, self._loads, alive)
            moved = {c: e for c, e in after.items() if before.get(c) != e}
        for camera, engine_id in moved.items():
            ray.get(self._engines[engine_id].handle.adopt.remote(camera))
            with self._lock:
                self._owner[camera] = engine_id
            log.info("ray placement: camera %s moved to %s", camera, engine_id)
        self.moves += len(moved)
        self.last_move_s = time.monotonic() - started
        for engine_id in set(moved.values()):  # their status shows the moved cameras now
            engine = self._engines[engine_id]
            engine.status = ray.get(engine.handle.snapshot.remote())

    def kill_engine(self, engine_id: str) -> None:
        """Kill one engine actor (as a crash would); the health check moves its cameras."""
        ray.kill(self._engines[engine_id].handle, no_restart=True)

    def stop(self, mode: ShutdownMode = "finish", grace_s: float | None = None) -> bool:
        grace = self._config.engine.shutdown_grace_s if grace_s is None else grace_s
        self._accepting = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(30.0, grace))
        engines = [e for e in self._engines.values() if e.alive]
        refs = [e.handle.stop.remote(mode, grace) for e in engines]
        ended = True
        for engine, ref in zip(engines, refs, strict=True):
            try:
                ended = bool(ray.get(ref, timeout=grace * 3 + 60)) and ended
            except (RayError, TimeoutError) as exc:
                log.error("ray placement: engine %s did not stop cleanly: %s", engine.id, exc)
                ended = False
            ray.kill(engine.handle, no_restart=True)
            engine.alive = False
        if self._started_ray:
            ray.shutdown()
        log.info("ray placement: engines stopped")
        return ended

    async def aclose(self, mode: ShutdownMode = "finish", grace_s: float | None = None) -> bool:
        return await asyncio.to_thread(self.stop, mode, grace_s)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def running(self) -> bool:
        return self.opened.done() and any(e.alive for e in self._engines.values())

    # --- inbound -------------------------------------------------------------------------------

    def _owner_of(self, camera: str) -> _Engine | None:
        with self._lock:
            engine_id = self._owner.get(camera)
            return None if engine_id is None else self._engines[engine_id]

    def submit_frame(self, frame: FrameLike) -> bool:
        camera = frame.source_id
        engine = self._owner_of(camera) if self._accepting else None
        if engine is None or not engine.alive:
            self._drop(camera)
            return False
        pending = self._inflight.setdefault(camera, deque())
        while pending:  # forget the sends that have landed
            ready, _ = ray.wait([pending[0]], timeout=0)
            if not ready:
                break
            pending.popleft()
        if len(pending) >= self._config.engine.frame_queue_per_camera:
            self._drop(camera)
            return False
        pending.append(engine.handle.submit_frame.remote(frame))
        return True

    def _drop(self, camera: str) -> None:
        with self._lock:
            self._dropped[camera] = self._dropped.get(camera, 0) + 1
        if self._metrics is not None:
            reason = "overflow" if self._accepting else "shutdown"
            self._metrics.engine_frames_dropped.inc(camera=camera, reason=reason)

    def ask(self, question: Question) -> AnswerStream:
        if not self._accepting:
            raise EngineStopped("the server is shutting down and takes no new questions")
        cancel = threading.Event()
        stream = AnswerStream(
            question.request_id,
            cancel,
            capacity=self._config.engine.answer_buffer_events,
            loop=asyncio.get_running_loop(),
        )
        if question.camera is not None:
            engine = self._owner_of(question.camera)
            if engine is None:
                raise EngineBusy(f"no engine owns camera {question.camera!r}")
            coro = self._pump_one(engine, question, stream)
        else:
            with self._lock:
                owners = sorted(set(self._owner.values()))
                engines = [self._engines[e] for e in owners if self._engines[e].alive]
            coro = self._pump_all(engines, question, stream)
        task = asyncio.get_running_loop().create_task(coro, name=f"ray-{question.request_id}")
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
        return stream

    async def _watch_cancel(
        self, engines: list[_Engine], question: Question, stream: AnswerStream
    ) -> None:
        while not stream.cancel_requested:
            await asyncio.sleep(CANCEL_POLL_S)
        for engine in engines:
            engine.handle.cancel.remote(question.request_id)

    async def _events(self, engine: _Engine, question: Question) -> Any:
        gen = engine.handle.ask.options(num_returns="streaming").remote(question)
        async for ref in gen:
            yield await ref

    async def _pump_one(self, engine: _Engine, question: Question, stream: AnswerStream) -> None:
        watcher = asyncio.create_task(self._watch_cancel([engine], question, stream))
        first: float | None = None
        try:
            async for event in self._events(engine, question):
                if isinstance(event, AnswerDelta) and first is None:
                    first = time.monotonic()
                event = self._timed(event, question, first)
                self._count(event)
                stream.push(event)
        except RayActorError:
            self._fail(
                stream,
                AnswerFailed(
                    "internal",
                    f"the engine owning camera {question.camera} died while answering; ask again",
                ),
            )
        except Exception as exc:
            self._fail(
                stream,
                AnswerFailed("internal", f"the answer failed: {type(exc).__name__}: {exc}"),
            )
        finally:
            watcher.cancel()

    def _count(self, event: StreamEvent) -> None:
        """Count a finished answer at the front, as the local engine does."""
        if self._metrics is None:
            return
        if isinstance(event, AnswerFinal):
            self._metrics.observe_answer(event.finish_reason, event.timings)
        elif isinstance(event, AnswerFailed):
            self._metrics.answers.inc(outcome="failed")

    def _fail(self, stream: AnswerStream, failed: AnswerFailed) -> None:
        self._count(failed)
        stream.push(failed)

    @staticmethod
    def _timed(event: StreamEvent, question: Question, first: float | None) -> StreamEvent:
        """The engine's final with the front's clock (the actor's clock is another machine's)."""
        if not isinstance(event, AnswerFinal):
            return event
        now = time.monotonic()
        ttft = None if first is None else max(0.0, first - question.received_at)
        timings = dataclasses.replace(
            event.timings, ttft_s=ttft, total_s=max(0.0, now - question.received_at)
        )
        return dataclasses.replace(event, timings=timings)

    async def _pump_all(
        self, engines: list[_Engine], question: Question, stream: AnswerStream
    ) -> None:
        watcher = asyncio.create_task(self._watch_cancel(engines, question, stream))

        async def one(engine: _Engine) -> StreamEvent | None:
            last: StreamEvent | None = None
            async for event in self._events(engine, question):
                last = event
            return last

        try:
            results = await asyncio.gather(*(one(e) for e in engines), return_exceptions=True)
            candidates: list[Candidate] = []
            failures: list[str] = []
            cancelled = False
            tokens = 0
            for engine, result in zip(engines, results, strict=True):
                if isinstance(result, AnswerFinal):
                    tokens += result.tokens
                    cancelled = cancelled or result.finish_reason == "cancelled"
                    if result.evidence or result.text:
                        candidates.append(from_final(engine.id, result))
                elif isinstance(result, AnswerFailed):
                    failures.append(result.message)
                else:
                    failures.append(f"engine {engine.id}: {result}")
            if not candidates:
                message = failures[0] if failures else "no engine had anything to answer from"
                nothing = "not delivered" in message or "not owned" in message
                self._fail(
                    stream, AnswerFailed("unknown_camera" if nothing else "internal", message)
                )
                return
            best = pick(candidates)
            first = time.monotonic()
            if best.text:
                stream.push(AnswerDelta(best.text))
            end = time.monotonic()
            final = AnswerFinal(
                text=best.text,
                evidence=best.evidence,
                tokens=best.tokens,
                finish_reason="cancelled" if cancelled else "stop",
                timings=AnswerTimings(
                    ttft_s=max(0.0, first - question.received_at) if best.text else None,
                    tokens_per_s=None,
                    total_s=max(0.0, end - question.received_at),
                ),
                notes=best.notes,
            )
            self._count(final)
            stream.push(final)
        finally:
            watcher.cancel()

    def check_rules(
        self, camera: str, conditions: Sequence[RuleCondition]
    ) -> concurrent.futures.Future[tuple[RuleScore, ...]]:
        """A rule check of ``camera`` on the engine that owns it (see ``Engine.check_rules``)."""
        engine = self._owner_of(camera) if self._accepting else None
        if engine is None or not engine.alive:
            failed: concurrent.futures.Future[tuple[RuleScore, ...]] = concurrent.futures.Future()
            failed.set_exception(EngineStopped(f"no live engine owns camera {camera!r}"))
            return failed
        ref = engine.handle.check_rules.remote(camera, tuple(conditions))
        future: concurrent.futures.Future[tuple[RuleScore, ...]] = ref.future()
        return future

    def describe(self, request: DescribeRequest) -> concurrent.futures.Future[str]:
        """An event's description on the engine that owns its camera."""
        engine = self._owner_of(request.camera) if self._accepting else None
        if engine is None or not engine.alive:
            failed: concurrent.futures.Future[str] = concurrent.futures.Future()
            failed.set_exception(EngineStopped(f"no live engine owns camera {request.camera!r}"))
            return failed
        future: concurrent.futures.Future[str] = engine.handle.describe.remote(request).future()
        return future

    def flush(self) -> concurrent.futures.Future[None]:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        engines = [e for e in self._engines.values() if e.alive]
        if not engines:
            done.set_exception(EngineStopped("no engine is running"))
            return done

        def wait() -> None:
            try:
                ray.get([e.handle.flush.remote() for e in engines])
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        threading.Thread(target=wait, name="stream-agent-ray-flush", daemon=True).start()
        return done

    # --- status --------------------------------------------------------------------------------

    def placement(self) -> tuple[CameraPlacement, ...]:
        with self._lock:
            return tuple(
                CameraPlacement(c, e, self._engines[e].node) for c, e in sorted(self._owner.items())
            )

    def snapshot(self) -> EngineStatus:
        with self._lock:
            statuses = [e.status for e in self._engines.values() if e.alive and e.status]
            dropped = dict(self._dropped)
        for s in statuses:
            for camera, n in s.frames_dropped.items():
                dropped[camera] = dropped.get(camera, 0) + n
        ready = bool(statuses) and all(s.worker.ready for s in statuses)
        reason = (
            ""
            if ready
            else next(
                (s.worker.reason for s in statuses if not s.worker.ready),
                "the engines are starting",
            )
        )
        return EngineStatus(
            worker=WorkerStatus(
                ready=ready,
                reason=reason,
                model=self._config.model.source if ready else None,
                cameras=tuple(c for s in statuses for c in s.worker.cameras),
            ),
            running=self.running,
            queued_frames=sum(s.queued_frames for s in statuses),
            queued_questions=sum(s.queued_questions for s in statuses),
            queued_checks=sum(s.queued_checks for s in statuses),
            answering=sum(s.answering for s in statuses),
            frames_dropped=dropped,
            frames_encoded={k: v for s in statuses for k, v in s.frames_encoded.items()},
            frame_lag_s={k: v for s in statuses for k, v in s.frame_lag_s.items()},
        )

    def _collect_metrics(self) -> None:
        assert self._metrics is not None
        self._gauge.clear()
        for p in self.placement():
            self._gauge.set(1.0, camera=p.camera, engine=p.engine, node=p.node)
        publish_status(self._metrics, self.snapshot())
