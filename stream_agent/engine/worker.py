"""The model side of the engine: what the engine thread drives.

A :class:`Worker` owns the model and every camera's memory. All its methods are called on the one
engine thread, never concurrently, so it needs no locks. The ReKV memory implements it:
``encode`` prefills a batch of frames into the camera's memory (sliding-window attention, KV
blocks to RAM and disk); ``answer`` retrieves the blocks relevant to the question within its
camera and time range and streams the generated text, ending with the moments it used.

Optional: a worker with ``attach_yield_point(serve)`` is handed the engine's ``serve`` callable
before ``open``; calling it in the middle of a frame's encode (between vision layer groups)
answers the questions waiting then, on the engine thread, so that a question never waits for a
whole frame.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore
from stream_agent.engine.records import AnswerEvent, FrameBatch, Question, WorkerStatus


class Worker(Protocol):
    """The interface the engine thread drives (see the module docstring)."""

    def open(self) -> None:
        """Load the model and the stored memories; raise (with a sentence) if impossible.

        Called once, on the engine thread, before anything else. Until it returns, the engine
        reports ``ready=False`` with the reason "loading the model".
        """
        ...

    def encode(self, batch: FrameBatch) -> None:
        """Add a batch of one camera's consecutive frames to that camera's memory."""
        ...

    def answer(self, question: Question, cancel: threading.Event) -> Iterator[AnswerEvent]:
        """Stream the answer: ``AnswerDelta``s, then one ``AnswerFinal`` with the evidence
        (best first) and the timings measured from the call.

        Check ``cancel`` between tokens and, when it is set, end early with an ``AnswerFinal``
        whose ``finish_reason`` is ``cancelled`` (the engine reads on until that final, then
        closes the iterator). Raising fails only this question: a
        ``StreamAgentError`` whose ``code`` is ``bad_request``, ``unknown_camera`` or ``busy``
        reaches the client with that code and its message (the question was refused as asked),
        anything else as ``internal``.
        """
        ...

    def check(self, camera: str, conditions: Sequence[RuleCondition]) -> Sequence[RuleScore]:
        """Score yes/no ``conditions`` over ``camera``'s newest memory (one score per
        condition, in order). Raising fails only this check."""
        ...

    def describe(self, request: DescribeRequest) -> str:
        """A short answer (about one sentence) describing what happened."""
        ...

    def status(self) -> WorkerStatus:
        """The memory sizes per camera; must be cheap (called after each work item)."""
        ...

    def flush(self) -> None:
        """Write everything needed to resume after a restart to disk."""
        ...

    def close(self) -> None:
        """Release the model; called once, last, on the engine thread."""
        ...
