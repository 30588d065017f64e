"""Small tensor helpers shared by the methods; all deterministic and device-agnostic."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def as_float(tokens: torch.Tensor) -> torch.Tensor:
    """The tokens in float32 (scores are computed in float32 whatever the model's dtype)."""
    return tokens if tokens.dtype == torch.float32 else tokens.float()


def unit(tokens: torch.Tensor) -> torch.Tensor:
    """Rows L2-normalised (zero rows stay zero), float32."""
    return F.normalize(as_float(tokens), dim=-1)


def top_indices(priority: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` positions of highest priority, ascending; ties go to the lower position.

    A stable sort instead of ``topk`` makes the choice among equal scores the same on every
    device (``topk``'s tie order is unspecified).
    """
    k = max(0, min(k, int(priority.shape[0])))
    order = torch.sort(priority, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def bottom_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` positions of lowest value, ascending; ties go to the lower position."""
    k = max(0, min(k, int(values.shape[0])))
    order = torch.sort(values, descending=False, stable=True).indices[:k]
    return torch.sort(order).values


def position_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) cosine similarity of the tokens at the same position in two (N, D) frames."""
    return (unit(a) * unit(b)).sum(-1)


def pooled_count(grid: tuple[int, int], stride: int) -> int:
    """Tokens left after mean-pooling a grid in ``stride`` x ``stride`` blocks (ceil mode)."""
    return math.ceil(grid[0] / stride) * math.ceil(grid[1] / stride)


def block_pool(
    tokens: torch.Tensor, grid: tuple[int, int], stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean-pool (N, D) raster tokens in ``stride`` x ``stride`` blocks (edge blocks smaller).

    Returns ``(values, representative, block_of)``: ``values`` (M, D) float32 block means in
    block raster order; ``representative`` (M,) int64, the member position nearest the block
    centre (rounding up-left), ascending; ``block_of`` (N,) int64, each position's block. When
    ``stride`` divides the grid this equals bilinear downsampling by that factor (the released
    METok pooling); otherwise it is the area mean.
    """
    height, width = grid
    device = tokens.device
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    blocks_w = math.ceil(width / stride)
    blocks_h = math.ceil(height / stride)
    block_of = (rows // stride) * blocks_w + cols // stride
    count = blocks_h * blocks_w
    values = torch.zeros(count, tokens.shape[1], dtype=torch.float32, device=device)
    values.index_add_(0, block_of, as_float(tokens))
    sizes = torch.zeros(count, dtype=torch.float32, device=device)
    sizes.index_add_(0, block_of, torch.ones(height * width, dtype=torch.float32, device=device))
    values = values / sizes[:, None]
    block_rows = torch.arange(blocks_h, device=device)
    block_cols = torch.arange(blocks_w, device=device)
    centre_rows = (
        block_rows * stride + torch.clamp((block_rows + 1) * stride, max=height) - 1
    ) // 2
    centre_cols = (block_cols * stride + torch.clamp((block_cols + 1) * stride, max=width) - 1) // 2
    representative = (centre_rows[:, None] * width + centre_cols[None, :]).flatten()
    return values, representative, block_of
