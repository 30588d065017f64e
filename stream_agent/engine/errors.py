"""Errors the engine raises to its callers (on the event-loop side)."""

from __future__ import annotations

from stream_agent.errors import StreamAgentError


class EngineError(StreamAgentError):
    """Base of the engine's errors; ``code`` is the protocol error code a client sees."""

    code = "internal"


class EngineBusy(EngineError):
    """The question queue is full: ask again when an answer has finished."""

    code = "busy"


class EngineStopped(EngineError):
    """The engine is shutting down (or has stopped) and takes no more work."""

    code = "busy"


class CheckDropped(EngineError):
    """A queued rule check (or description) was shed by the check queue's overflow policy
    (``drop_oldest``: a newer one took its place); the next check will be newer anyway."""

    code = "busy"
