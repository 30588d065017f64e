"""Synthetic token clips for the pruner tests (no model needed: tokens are built directly)."""

from __future__ import annotations

import torch

from pruner import Selection, StreamPruner


def background(grid: tuple[int, int], dim: int, seed: int = 0) -> torch.Tensor:
    """A static scene: (N, D) tokens, smooth-ish and all different, fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(grid[0] * grid[1], dim, generator=generator) + 2.0


def object_positions(grid: tuple[int, int], top: int, left: int, size: int) -> list[int]:
    """Raster positions of a ``size`` x ``size`` block whose top-left corner is (top, left)."""
    return [(top + r) * grid[1] + left + c for r in range(size) for c in range(size)]


def moving_object_clip(
    grid: tuple[int, int], dim: int, frames: int, size: int = 2, seed: int = 0, step: int = 1
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """A static background with one ``size`` x ``size`` object moving ``step`` columns a frame.

    Returns the frames and, per frame, the object's positions. The object's tokens are far from
    every background token (a different direction), like a person entering an empty room.
    """
    scene = background(grid, dim, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    thing = torch.randn(dim, generator=generator)
    thing = -4.0 * scene.mean(0) / scene.mean(0).norm() * dim**0.5 + thing
    clip, where = [], []
    for t in range(frames):
        left = (t * step) % (grid[1] - size + 1)
        positions = object_positions(grid, 1, left, size)
        x = scene.clone()
        x[positions] = thing
        clip.append(x)
        where.append(positions)
    return clip, where


def run(
    pruner: StreamPruner, clip: list[torch.Tensor], grid: tuple[int, int], start: float = 0.0
) -> list[Selection]:
    """Push every frame (one per second) and flush; return all selections in order."""
    out: list[Selection] = []
    for t, frame in enumerate(clip):
        out.extend(pruner.push(frame, grid, start + float(t)))
    out.extend(pruner.flush())
    return out


def check_selection(selection: Selection, frame: torch.Tensor) -> None:
    """The invariants every selection must satisfy, whatever the method."""
    n = frame.shape[0]
    idx = selection.indices
    assert idx.dtype == torch.int64 and idx.ndim == 1
    assert selection.grid[0] * selection.grid[1] == n
    if idx.numel():
        assert int(idx.min()) >= 0 and int(idx.max()) < n
        assert bool((idx[1:] > idx[:-1]).all()), "indices must be unique and ascending"
    assert selection.tokens.shape == (idx.shape[0], frame.shape[1])
    assert selection.tokens.dtype == frame.dtype
    assert selection.scores.shape == (n,) and selection.scores.dtype == torch.float32
    assert bool(torch.isfinite(selection.scores).all())
    rows, cols = selection.coordinates().unbind(1)
    assert torch.equal(rows * selection.grid[1] + cols, idx)
    assert bool((cols < selection.grid[1]).all()) and bool((rows < selection.grid[0]).all())
    assert int(selection.keep_mask().sum()) == selection.num_kept
    if selection.merged is None:
        assert torch.equal(selection.tokens, frame[idx])
    else:
        groups = selection.merged
        assert groups.owner.shape == groups.frame_index.shape == groups.index.shape
        owners = set(groups.owner.tolist())
        assert owners == set(range(selection.num_kept)), "every kept token owns a group"
        # a kept token always stands for its own position in its own frame
        for k, position in enumerate(idx.tolist()):
            assert (selection.frame_index, position) in groups.members(k)
