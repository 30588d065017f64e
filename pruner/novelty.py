"""Novelty-adaptive budgets: how many positions changed since the previous frame.

A position counts as changed when its token's cosine similarity to the previous frame's token at
the same position is at most ``tau`` (every position of a stream's first frame counts as changed).
The adaptive budget of a frame is ``min(method_share, max(min_tokens, changed))``: a frame that
shows nothing new costs ``min_tokens``, and a frame never keeps more tokens than changed (unless
``min_tokens`` says so). Which tokens are kept is still the method's choice.

The comparison is with the previous frame, not with what was last sent: a position the method
keeps dropping although it changed once would otherwise count as changed for ever, so a static
frame could never become cheap. The price is that drift slower than ``tau`` per frame does not
raise the budget.
"""

from __future__ import annotations

import torch

from pruner.config import Budget


class NoveltyTracker:
    """Per-stream memory of the previous frame's unit-norm tokens (O(N*D) state)."""

    def __init__(self, tau: float) -> None:
        self._tau = tau
        self._previous: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous frame (a new stream or a new frame shape)."""
        self._previous = None

    def novelty(self, unit_tokens: torch.Tensor) -> torch.Tensor:
        """(N,) float32: 1 - cosine to the previous frame's token; 2 on a stream's first frame."""
        if self._previous is None:
            return torch.full(
                (unit_tokens.shape[0],), 2.0, dtype=torch.float32, device=unit_tokens.device
            )
        return 1.0 - (unit_tokens * self._previous).sum(-1)

    def changed(self, unit_tokens: torch.Tensor) -> torch.Tensor:
        """(N,) bool: positions whose cosine to the previous frame is at most ``tau``."""
        return self.novelty(unit_tokens) >= 1.0 - self._tau

    def update(self, unit_tokens: torch.Tensor) -> None:
        """Remember this frame as the previous one."""
        self._previous = unit_tokens


def adaptive_share(budget: Budget, share: int, changed: torch.Tensor) -> int:
    """The frame's token count: ``share`` unless the budget adapts to novelty (see module doc)."""
    if not budget.adaptive:
        return share
    return min(share, max(budget.min_tokens, int(changed.sum().item())))
