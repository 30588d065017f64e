"""Frozen records the pruner hands out: one :class:`Selection` per frame, plus running stats.

Tensors inside a record are never written to after the record is built; they live on the device
of the frame's tokens. Records compare by identity (tensors have no single truth value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class MergeGroups:
    """Which original tokens each kept token stands for, as three aligned (M,) int64 tensors.

    Row m says: kept token ``owner[m]`` (a position in ``Selection.indices``/``tokens``)
    represents token ``index[m]`` (raster position) of frame ``frame_index[m]``. Every kept token
    appears as an owner at least once (a token that merged nothing owns only itself). A merged
    token may stand for tokens of later frames (HoliTom's static tokens represent their whole
    span, placed at the first frame).
    """

    owner: torch.Tensor
    frame_index: torch.Tensor
    index: torch.Tensor

    def members(self, kept: int) -> list[tuple[int, int]]:
        """The (frame_index, raster index) pairs kept token number ``kept`` stands for."""
        rows = (self.owner == kept).nonzero().flatten()
        frames = self.frame_index[rows].tolist()
        positions = self.index[rows].tolist()
        return list(zip(frames, positions, strict=True))


@dataclass(frozen=True, eq=False)
class Selection:
    """The pruner's decision for one frame.

    - ``frame_index``: the pruner's count of frames pushed before this one (never reused, not even
      after ``reset()``, so a deferred selection always matches its frame); ``timestamp`` is the
      value passed with the frame.
    - ``grid``: the frame's (height, width) in tokens; N = height * width.
    - ``indices``: (K,) int64, unique, ascending, each in [0, N): the frame's original raster
      positions of the kept tokens (K may be 0). The adapter maps these to LLM positions.
    - ``tokens``: (K, D), the values to send, in the frame's dtype and on its device: exactly
      ``frame_tokens[indices]`` unless ``merged`` is set, in which case merged values.
    - ``scores``: (N,) float32 keep priority per original position, higher = kept first (what a
      client draws; the method docstrings say what it measures).
    - ``merged``: None when each kept token stands only for itself, else the merge groups.
    """

    method: str
    frame_index: int
    timestamp: float
    grid: tuple[int, int]
    indices: torch.Tensor
    tokens: torch.Tensor
    scores: torch.Tensor
    merged: MergeGroups | None = None

    @property
    def num_tokens(self) -> int:
        """N, the frame's token count before pruning."""
        return self.grid[0] * self.grid[1]

    @property
    def num_kept(self) -> int:
        """K, the number of tokens sent to the LLM for this frame."""
        return int(self.indices.shape[0])

    @property
    def keep_ratio(self) -> float:
        """K / N."""
        return self.num_kept / self.num_tokens

    def coordinates(self) -> torch.Tensor:
        """(K, 2) int64 (row, column) on the frame's grid of each kept token (for 2-D RoPE)."""
        width = self.grid[1]
        return torch.stack([self.indices // width, self.indices % width], dim=1)

    def keep_mask(self) -> torch.Tensor:
        """(N,) bool, True at kept positions (for drawing)."""
        mask = torch.zeros(self.num_tokens, dtype=torch.bool, device=self.indices.device)
        mask[self.indices] = True
        return mask


@dataclass(frozen=True)
class PrunerStats:
    """Counters since the pruner was built (``reset()`` does not clear them).

    ``frames_discarded`` counts buffered frames thrown away by ``reset()`` without a ``flush()``;
    ``tokens_in`` / ``tokens_out`` count the emitted frames' tokens before and after pruning.
    """

    frames_in: int = 0
    frames_out: int = 0
    frames_discarded: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    resets: int = 0
    shape_changes: int = 0
