"""Both at once: every layer takes the embedding retrieval's best half of ``top_k`` (rounded
up), the same for all layers, then fills the rest with its own internal (ReKV) picks among the
blocks left."""

from __future__ import annotations

import torch

from stream_agent.memory.retrieval.base import Picks, RetrievalRequest, Retriever
from stream_agent.memory.retrieval.embedding import EmbeddingRetriever
from stream_agent.memory.retrieval.internal import InternalRetriever


class HybridRetriever(Retriever):
    """Shared embedding half plus per-layer internal rest (see the module docstring)."""

    name = "hybrid"
    uses_sketches = True

    def __init__(self, request: RetrievalRequest) -> None:
        super().__init__(request)
        self.embedding = EmbeddingRetriever(request)
        self.internal = InternalRetriever(request)
        self.shared = (self.top_k + 1) // 2

    def pick(self, layer: int, query: torch.Tensor) -> Picks:
        shared = self.embedding.best(min(self.shared, self.top_k))
        own = min(self.top_k - len(shared.indices), self.count - len(shared.indices))
        rest = self.internal.best(layer, query, own, exclude=shared.indices)
        return Picks(shared.indices + rest.indices, shared.scores + rest.scores)
