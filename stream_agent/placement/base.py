"""What the daemon and the server use of "the engine", wherever the engines run.

``placement: local`` is one :class:`~stream_agent.engine.Engine` thread in the daemon's process
(:mod:`stream_agent.placement.local`); ``placement: ray`` is a group of engine actors on a Ray
cluster behind one front (:mod:`stream_agent.placement.ray_group`). Both present the engine's own
methods (``start``, ``submit_frame``, ``ask`` returning an :class:`AnswerStream`, ``flush``,
``snapshot``, ``stop``/``aclose``), so the server and the camera feeds do not know which one they
talk to, plus :meth:`EngineFront.placement`: which engine, on which node, owns each camera.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Protocol

from stream_agent.engine import AnswerStream, EngineStatus, FrameLike, Question, ShutdownMode


@dataclass(frozen=True, slots=True)
class CameraPlacement:
    """Where a camera's frames are encoded and its memory lives."""

    camera: str
    engine: str
    node: str


class EngineFront(Protocol):
    """The engine as the daemon sees it (see the module docstring)."""

    opened: concurrent.futures.Future[None]
    """Resolves when every engine's model is loaded (or carries the error)."""

    def start(self) -> None: ...
    def submit_frame(self, frame: FrameLike) -> bool: ...
    def ask(self, question: Question) -> AnswerStream: ...
    def flush(self) -> concurrent.futures.Future[None]: ...
    def snapshot(self) -> EngineStatus: ...
    def stop(self, mode: ShutdownMode = "finish", grace_s: float | None = None) -> bool: ...
    async def aclose(self, mode: ShutdownMode = "finish", grace_s: float | None = None) -> bool: ...
    def placement(self) -> tuple[CameraPlacement, ...]: ...
    @property
    def accepting(self) -> bool: ...
    @property
    def running(self) -> bool: ...
