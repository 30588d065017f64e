"""ReKV's internal retrieval: each layer scores every candidate block by the dot product of
its own mean question query with the block's representative key (the block's mean pre-RoPE key
at that layer, GQA-folded), and takes the ``top_k`` best. Deeper layers' queries depend on what
shallower layers retrieved, so each layer picks its own blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stream_agent.memory.retrieval.base import Picks, RetrievalRequest, Retriever


class InternalRetriever(Retriever):
    """Per-layer mean-query . mean-key top-k (see the module docstring)."""

    name = "internal"

    def __init__(self, request: RetrievalRequest) -> None:
        super().__init__(request)
        # store dtype, converted one layer at a time: half the RAM of a float32 copy
        self.keys = request.rows.rep_keys(request.candidates) if self.count else None

    def best(
        self, layer: int, query: torch.Tensor, count: int, exclude: Sequence[int] = ()
    ) -> Picks:
        """The ``count`` best candidates by layer ``layer``'s score, leaving out ``exclude``."""
        if count <= 0 or self.keys is None:
            return Picks([], [])
        keys = self.keys[:, layer].float()
        scores = keys @ query.to(keys.device)
        if exclude:
            scores[torch.tensor(list(exclude))] = float("-inf")
        top = torch.topk(scores, count)
        return Picks(top.indices.tolist(), top.values.tolist())

    def pick(self, layer: int, query: torch.Tensor) -> Picks:
        return self.best(layer, query, min(self.top_k, self.count))
