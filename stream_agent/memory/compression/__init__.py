"""In-context compression methods, one module each, behind
:class:`~.base.InContextCompressor`; chosen by ``MemoryOptions.compression`` through
:data:`COMPRESSORS` (one instance per answer)."""

from __future__ import annotations

from typing import Final

from stream_agent.memory.compression.base import (
    AttentionProbe,
    ContextBlock,
    InContextCompressor,
    LayerContext,
)
from stream_agent.memory.compression.none import NoCompression
from stream_agent.memory.errors import MemoryConfigError

COMPRESSORS: Final[dict[str, type[InContextCompressor]]] = {
    "none": NoCompression,
}


def make_compressor(name: str) -> InContextCompressor:
    """A new compressor ``name`` for one answer."""
    try:
        return COMPRESSORS[name]()
    except KeyError:
        raise MemoryConfigError(
            f"unknown compression {name!r}; choose one of {', '.join(COMPRESSORS)}"
        ) from None


__all__ = [
    "COMPRESSORS",
    "AttentionProbe",
    "ContextBlock",
    "InContextCompressor",
    "LayerContext",
    "NoCompression",
    "make_compressor",
]
