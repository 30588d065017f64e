"""Retrieval methods, one module each, behind :class:`~.base.Retriever`; chosen by name
(``MemoryOptions.retrieval``, or per question) through :data:`RETRIEVERS`."""

from __future__ import annotations

from typing import Final

from stream_agent.memory.errors import MemoryConfigError
from stream_agent.memory.retrieval.base import Picks, RetrievalRequest, Retriever, RowSource
from stream_agent.memory.retrieval.embedding import EmbeddingRetriever
from stream_agent.memory.retrieval.hybrid import HybridRetriever
from stream_agent.memory.retrieval.internal import InternalRetriever

RETRIEVERS: Final[dict[str, type[Retriever]]] = {
    "internal": InternalRetriever,
    "embedding": EmbeddingRetriever,
    "hybrid": HybridRetriever,
}


def retriever_class(name: str) -> type[Retriever]:
    try:
        return RETRIEVERS[name]
    except KeyError:
        raise MemoryConfigError(
            f"unknown retrieval {name!r}; choose one of {', '.join(RETRIEVERS)}"
        ) from None


def make_retriever(name: str, request: RetrievalRequest) -> Retriever:
    """The retriever ``name`` for one question."""
    return retriever_class(name)(request)


__all__ = [
    "RETRIEVERS",
    "EmbeddingRetriever",
    "HybridRetriever",
    "InternalRetriever",
    "Picks",
    "RetrievalRequest",
    "Retriever",
    "RowSource",
    "make_retriever",
    "retriever_class",
]
