"""ReKV's external retrieval, with the LLM's input-embedding space as the shared space: the
question's token embeddings score each candidate's embedding sketch by max-sim (see
:mod:`~stream_agent.memory.sketch`), once per question, and every layer takes the same
``top_k`` blocks."""

from __future__ import annotations

import torch

from stream_agent.memory.retrieval.base import Picks, RetrievalRequest, Retriever
from stream_agent.memory.sketch import max_sim


class EmbeddingRetriever(Retriever):
    """One max-sim selection for every layer (see the module docstring)."""

    name = "embedding"
    uses_sketches = True

    def __init__(self, request: RetrievalRequest) -> None:
        super().__init__(request)
        sketches = request.rows.sketches(request.candidates) if self.count else None
        self.scores = (
            max_sim(request.question_embeds, sketches) if sketches is not None else torch.empty(0)
        )
        self._best: dict[int, Picks] = {}

    def best(self, count: int) -> Picks:
        """The ``count`` best candidates by max-sim (the same for every layer)."""
        count = min(count, self.count)
        if count <= 0:
            return Picks([], [])
        if count not in self._best:
            top = torch.topk(self.scores, count)
            self._best[count] = Picks(top.indices.tolist(), top.values.tolist())
        picks = self._best[count]
        return Picks(list(picks.indices), list(picks.scores))

    def pick(self, layer: int, query: torch.Tensor) -> Picks:
        return self.best(self.top_k)
