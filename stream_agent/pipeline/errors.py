"""Errors of the daemon's pipeline (worker, camera feeds), under ``StreamAgentError``."""

from __future__ import annotations

from stream_agent.errors import StreamAgentError
from stream_agent.models.errors import ModelUnavailableError


class PipelineError(StreamAgentError):
    """Base of the pipeline's errors."""


class NothingSeenError(PipelineError):
    """A question names a camera (or all cameras) whose memory holds no frame yet."""

    code = "unknown_camera"


__all__ = ["ModelUnavailableError", "NothingSeenError", "PipelineError"]
