"""Scoring tokens against the reference and choosing which to recompute.

Scores are per token; with groups (:class:`Grouping`: runs of consecutive tokens, or square
windows over a raster grid) they are averaged over each group and whole groups are chosen
(Qwen2-VL's 2x2 merge windows). Chosen groups are turned into sorted token indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def token_cosine(current: Tensor, reference: Tensor) -> Tensor:
    """Per-token cosine similarity ``(N,)`` of two tensors of one frame.

    Both are ``(1, N, D)`` hidden states or ``(1, H, N, head_dim)`` per-head tensors; for the
    latter the heads are concatenated (the cosine of the merged ``H * head_dim`` vectors, as the
    released code takes it on ``k_proj`` outputs). Computed in float32.
    """
    a = current.to(torch.float32)
    b = reference.to(torch.float32)
    if a.ndim == 4:
        dot = (a * b).sum(dim=(1, 3))
        na = a.pow(2).sum(dim=(1, 3))
        nb = b.pow(2).sum(dim=(1, 3))
    else:
        dot = (a * b).sum(dim=-1)
        na = a.pow(2).sum(dim=-1)
        nb = b.pow(2).sum(dim=-1)
    eps = torch.finfo(torch.float32).eps
    return (dot * torch.rsqrt(na.clamp_min(eps) * nb.clamp_min(eps)))[0].clamp(-1.0, 1.0)


@dataclass(frozen=True, slots=True, eq=False)
class Grouping:
    """How a frame's tokens form units of reuse.

    ``size`` tokens per group; ``order`` lists the token indices group by group (``None``: the
    groups are consecutive runs of ``size`` tokens, the library's merge-window order).
    """

    size: int
    order: Tensor | None = None

    def pool(self, scores: Tensor) -> Tensor:
        """Mean of per-token ``scores`` ``(N,)`` over each group -> ``(N / size,)``."""
        if self.size == 1 and self.order is None:
            return scores
        ordered = scores if self.order is None else scores[self.order]
        return ordered.view(-1, self.size).mean(dim=1)

    def tokens(self, groups: Tensor) -> Tensor:
        """Group indices -> the sorted indices of all their tokens."""
        if self.size == 1 and self.order is None:
            return torch.sort(groups).values
        if self.order is None:
            offsets = torch.arange(self.size, device=groups.device)
            members = groups[:, None] * self.size + offsets
        else:
            members = self.order.view(-1, self.size)[groups]
        return torch.sort(members.reshape(-1)).values


def consecutive_groups(size: int) -> Grouping:
    """Groups of ``size`` consecutive tokens."""
    return Grouping(size)


def window_groups(grid: tuple[int, int], side: int, device: torch.device | str) -> Grouping:
    """Groups of ``side x side`` windows over a raster-ordered ``grid`` (rows, cols) of tokens,
    windows in raster order from the top-left corner (Qwen2-VL's 2x2 merge windows for a tower
    that keeps its patches in raster order)."""
    rows, cols = grid
    block_rows = torch.arange(rows // side, device=device)[:, None, None, None] * side
    block_cols = torch.arange(cols // side, device=device)[None, :, None, None] * side
    within_rows = torch.arange(side, device=device)[None, None, :, None]
    within_cols = torch.arange(side, device=device)[None, None, None, :]
    order = (block_rows + within_rows) * cols + (block_cols + within_cols)
    return Grouping(side * side, order.reshape(-1))


def lowest(scores: Tensor, count: int) -> Tensor:
    """Sorted indices of the ``count`` lowest ``scores`` (the paper's dynamic set)."""
    if count >= scores.shape[0]:
        return torch.arange(scores.shape[0], device=scores.device)
    picked = torch.topk(scores, count, largest=False).indices
    return torch.sort(picked).values


def over_threshold(change: Tensor, threshold: float, minimum: int, maximum: int) -> Tensor:
    """Sorted indices of the entries of ``change`` above ``threshold``, their number clamped to
    ``[minimum, maximum]`` by taking the most changed first."""
    above = change > threshold
    count = int(above.sum().item())
    if minimum <= count <= maximum:
        return torch.nonzero(above).flatten()
    count = min(max(count, minimum), maximum)
    if count == 0:
        return torch.empty(0, dtype=torch.long, device=change.device)
    return lowest(-change, count)
