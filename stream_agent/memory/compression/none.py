"""No in-context compression: every layer sees its whole assembled context (the default)."""

from __future__ import annotations

from stream_agent.memory.compression.base import InContextCompressor


class NoCompression(InContextCompressor):
    """Identity: keeps every slot (see :class:`~.base.InContextCompressor`)."""

    name = "none"

    @property
    def active(self) -> bool:
        return False
