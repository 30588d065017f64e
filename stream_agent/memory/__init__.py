"""ReKV-style memory of video (or text) streams: a rolling KV cache in RAM and on disk,
retrieved per layer at question time, with answers that cite their moments.

Use :class:`Memory` (one per model; it holds any number of streams):
:meth:`Memory.append_step` each video step (text blocks: :meth:`Memory.append` with
:func:`text_chunk`), :meth:`Memory.answer` questions, read :meth:`Memory.status` for metrics,
:meth:`Memory.flush` / :meth:`Memory.close`. A new ``Memory`` over the same ``store_dir``
reloads what was stored. Settings are one :class:`MemoryOptions` record. This package (with
``stream_agent.models``) is the only one that imports transformers.
"""

from __future__ import annotations

from stream_agent.answers import AnswerDelta, AnswerEvent, AnswerFinal, AnswerTimings, Moment
from stream_agent.memory.check import CheckCondition, CheckResult, check_prompt
from stream_agent.memory.chunks import text_chunk
from stream_agent.memory.errors import (
    CorruptBlockError,
    KVMemoryError,
    MemoryClosedError,
    MemoryConfigError,
    PositionBudgetError,
    QuestionError,
    StoreError,
    StoreMismatchError,
    UnknownStreamError,
)
from stream_agent.memory.memory import Memory
from stream_agent.memory.options import MemoryOptions
from stream_agent.memory.records import (
    BlockMeta,
    FrameStamp,
    StreamStatus,
    TimeRange,
)

__all__ = [
    "AnswerDelta",
    "AnswerEvent",
    "AnswerFinal",
    "AnswerTimings",
    "BlockMeta",
    "CheckCondition",
    "CheckResult",
    "CorruptBlockError",
    "FrameStamp",
    "KVMemoryError",
    "Memory",
    "MemoryClosedError",
    "MemoryConfigError",
    "MemoryOptions",
    "Moment",
    "PositionBudgetError",
    "QuestionError",
    "StoreError",
    "StoreMismatchError",
    "StreamStatus",
    "TimeRange",
    "UnknownStreamError",
    "check_prompt",
    "text_chunk",
]
