"""The engine boundary: one thread owns the model and the memories; messages in and out.

The daemon builds a :class:`Worker` (the model and the ReKV memory) and an :class:`Engine` that
drives it; the server only ever calls :meth:`Engine.ask`, :meth:`Engine.snapshot` and the daemon
:meth:`Engine.submit_frame`, :meth:`Engine.flush` and :meth:`Engine.stop`.
"""

from stream_agent.engine.engine import Engine, ShutdownMode, question_received_now
from stream_agent.engine.errors import EngineBusy, EngineError, EngineStopped
from stream_agent.engine.queue import OverflowPolicy
from stream_agent.engine.records import (
    AnswerDone,
    AnswerEvent,
    CameraMemory,
    Delta,
    EngineStatus,
    Failed,
    Final,
    FrameBatch,
    FrameLike,
    Moment,
    Question,
    StreamEvent,
    TextDelta,
    WorkerStatus,
)
from stream_agent.engine.stream import AnswerStream
from stream_agent.engine.worker import Worker

__all__ = [
    "AnswerDone",
    "AnswerEvent",
    "AnswerStream",
    "CameraMemory",
    "Delta",
    "Engine",
    "EngineBusy",
    "EngineError",
    "EngineStatus",
    "EngineStopped",
    "Failed",
    "Final",
    "FrameBatch",
    "FrameLike",
    "Moment",
    "OverflowPolicy",
    "Question",
    "ShutdownMode",
    "StreamEvent",
    "TextDelta",
    "Worker",
    "WorkerStatus",
    "question_received_now",
]
