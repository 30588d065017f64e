"""The Ray actor that is one engine: a model, the memories of the cameras it owns, one engine
thread, fed by messages from the front (:mod:`stream_agent.placement.ray_group`).

The actor is asynchronous (its methods run on the actor's event loop, concurrently), so that a
question's answer streams back (a Ray streaming generator of the engine's own answer events)
while frames keep arriving and another question can be cancelled. Everything model-side is the
local engine unchanged: :class:`~stream_agent.engine.Engine` driving a
:class:`~stream_agent.placement.camera_set.CameraSetWorker`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator

import ray

from stream_agent.config import DaemonConfig
from stream_agent.engine import AnswerStream, Engine, EngineStatus, FrameLike, Question
from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore
from stream_agent.engine.records import StreamEvent
from stream_agent.models.loading import model_loader
from stream_agent.placement.camera_set import CameraSetWorker

log = logging.getLogger(__name__)

FRAME_NOTES = 4096
"""Frame notes an actor keeps for the front between two collections (about 1 s apart); older
ones are dropped first and counted (:meth:`EngineActor.frame_notes`)."""

FrameNoteRecord = tuple[str, float, float | None]
"""(camera, capture wall time, changed share or None): one frame the vision chain took."""


class EngineActor:
    """One engine on the cluster (wrapped with ``ray.remote`` by the front, with its resources)."""

    def __init__(self, engine_id: str, config: DaemonConfig, cameras: tuple[str, ...]) -> None:
        logging.basicConfig(level=config.logging.level)
        self.engine_id = engine_id
        self._notes: deque[FrameNoteRecord] = deque(maxlen=FRAME_NOTES)
        self._notes_lock = threading.Lock()
        self._notes_lost = 0
        self._worker = CameraSetWorker(
            config,
            load=model_loader(config.model),
            model_name=config.model.source,
            cameras=cameras,
            on_frame=self._note_frame,
        )
        self._engine = Engine(self._worker, config.engine)
        self._answers: dict[str, AnswerStream] = {}
        self._engine.start()
        log.info("engine actor %s started with cameras %s", engine_id, ", ".join(cameras))

    def _note_frame(self, camera: str, wall_time: float, changed_share: float | None) -> None:
        """On the engine thread: keep the note until the front collects it."""
        with self._notes_lock:
            if len(self._notes) == self._notes.maxlen:
                self._notes_lost += 1
            self._notes.append((camera, wall_time, changed_share))

    async def frame_notes(self) -> tuple[tuple[FrameNoteRecord, ...], int]:
        """The frame notes since the last call (oldest first), and how many were dropped
        since then because the front did not collect them in time."""
        with self._notes_lock:
            notes, lost = tuple(self._notes), self._notes_lost
            self._notes.clear()
            self._notes_lost = 0
        return notes, lost

    async def node(self) -> str:
        """The Ray node this engine runs on."""
        return str(ray.get_runtime_context().get_node_id())

    async def snapshot(self) -> EngineStatus:
        return self._engine.snapshot()

    async def adopt(self, camera: str) -> None:
        """Own ``camera`` from now on; its memory is opened (and loaded) on the engine thread."""
        self._worker.adopt(camera)
        await asyncio.wrap_future(self._engine.flush())  # opens the adopted store now
        log.info("engine actor %s adopted camera %s", self.engine_id, camera)

    async def submit_frame(self, frame: FrameLike) -> bool:
        return self._engine.submit_frame(frame)

    async def ask(self, question: Question) -> AsyncIterator[StreamEvent]:
        """The answer's events (a streaming generator: ``num_returns="streaming"``)."""
        stream = self._engine.ask(question)
        self._answers[question.request_id] = stream
        try:
            async for event in stream:
                yield event
        finally:
            self._answers.pop(question.request_id, None)
            if not stream.finished:
                stream.cancel()

    async def cancel(self, request_id: str) -> bool:
        stream = self._answers.get(request_id)
        if stream is None:
            return False
        stream.cancel()
        return True

    async def check_rules(
        self, camera: str, conditions: tuple[RuleCondition, ...]
    ) -> tuple[RuleScore, ...]:
        """A rule check of an owned camera (queued behind questions, ahead of frames)."""
        return await asyncio.wrap_future(self._engine.check_rules(camera, conditions))

    async def describe(self, request: DescribeRequest) -> str:
        """An event's one-sentence description over an owned camera's memory."""
        return await asyncio.wrap_future(self._engine.describe(request))

    async def flush(self) -> None:
        await asyncio.wrap_future(self._engine.flush())

    async def stop(self, mode: str, grace_s: float) -> bool:
        return await self._engine.aclose("cancel" if mode == "cancel" else "finish", grace_s)
