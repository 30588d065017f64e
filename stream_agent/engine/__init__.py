"""The engine boundary: one thread owns the model and the memories; messages in and out.

The daemon builds a :class:`Worker` (the model and the ReKV memory) and an :class:`Engine` that
drives it; the server only ever calls :meth:`Engine.ask`, :meth:`Engine.snapshot` and the daemon
:meth:`Engine.submit_frame`, :meth:`Engine.flush` and :meth:`Engine.stop`.
"""

from stream_agent.engine.engine import Engine, ShutdownMode, question_received_now
from stream_agent.engine.errors import EngineBusy, EngineError, EngineStopped
from stream_agent.engine.queue import OverflowPolicy
from stream_agent.engine.records import (
    AnswerDelta,
    AnswerEvent,
    AnswerFailed,
    AnswerFinal,
    AnswerTimings,
    CameraMemory,
    EngineStatus,
    FrameBatch,
    FrameLike,
    Moment,
    Question,
    StreamEvent,
    WorkerStatus,
)
from stream_agent.engine.stream import AnswerStream
from stream_agent.engine.worker import Worker

__all__ = [
    "AnswerDelta",
    "AnswerEvent",
    "AnswerFailed",
    "AnswerFinal",
    "AnswerStream",
    "AnswerTimings",
    "CameraMemory",
    "Engine",
    "EngineBusy",
    "EngineError",
    "EngineStatus",
    "EngineStopped",
    "FrameBatch",
    "FrameLike",
    "Moment",
    "OverflowPolicy",
    "Question",
    "ShutdownMode",
    "StreamEvent",
    "Worker",
    "WorkerStatus",
    "question_received_now",
]
