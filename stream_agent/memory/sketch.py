"""Embedding sketches: a few unit vectors per block in the LLM's input-embedding space.

The ``"embedding"`` retrieval mode (ReKV's *external* retrieval, with the LLM's own input
embeddings as the shared space instead of a separate CLIP-like model) scores a block by
max-sim: for each of the question's token embeddings, the best cosine with the block's
vectors, summed over the question's tokens. Keeping every token's embedding per block would
cost as much RAM as a fraction of the KV itself, so a block keeps at most ``vectors`` of them:
all of its tokens when it has that few (cycled to fill the rows, which leaves max-sim exact),
else spherical k-means centroids of its tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ITERATIONS = 8


def embedding_sketch(embeds: torch.Tensor, vectors: int) -> torch.Tensor:
    """``(T, D)`` input embeddings -> float32 ``(vectors, D)`` unit rows (zeros for ``T == 0``)."""
    tokens, dim = int(embeds.shape[0]), int(embeds.shape[1])
    if tokens == 0:
        return torch.zeros(vectors, dim)
    x = F.normalize(embeds.detach().float().cpu(), dim=-1)
    if tokens <= vectors:
        return x[torch.arange(vectors) % tokens].clone()
    centroids = x[torch.linspace(0, tokens - 1, vectors).round().long()].clone()
    for _ in range(_ITERATIONS):
        assign = F.one_hot((x @ centroids.T).argmax(dim=1), vectors).to(x.dtype)
        sums = assign.T @ x
        filled = assign.sum(dim=0) > 0
        centroids[filled] = F.normalize(sums[filled], dim=-1)
    return centroids


def max_sim(query: torch.Tensor, sketches: torch.Tensor) -> torch.Tensor:
    """Scores ``(N,)`` of blocks' sketches ``(N, c, D)`` for question embeddings ``(n, D)``."""
    if sketches.shape[0] == 0:
        return torch.empty(0)
    q = F.normalize(query.detach().float().cpu(), dim=-1)
    sims = torch.einsum("nd,bcd->bnc", q, sketches.float())
    return sims.amax(dim=-1).sum(dim=-1)
