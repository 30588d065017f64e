"""DyCoke stage 1, temporal token merging (TTM), on a stream.

Released code (``KD-TAO/DyCoke`` ``llava_arch.py::dycole_ttm``), per window of 4 frames
[f0, f1, f2, f3]: f0 whole; f1 and f2 keep the ``int((1 - K) N)`` tokens least similar (cosine at
the same position) to f0; f3 keeps those least similar to the *unpruned* f2. "Merging" is
dropping in the code: kept tokens are sent unchanged.

Streaming form: every comparison is with an earlier frame, so each frame is decided on its own
push (no delay); the window phase runs from the first frame after ``reset()``. The offline
code's edge effects (an odd last frame dropped, the last window's f2 left whole when the clip
length is a multiple of 4) come from its loop bounds over a finite clip and do not apply to a
stream. Kept tokens are in raster order (the released code keeps ``topk`` order).

``Selection.scores`` is ``1 - cos`` to the reference frame (ones for f0, or the novelty when the
budget adapts). Ties are broken towards the lower raster position. With an adaptive budget, f0
keeps its most novel positions (cosine to the previous frame) and f1-f3 keep fewer tokens when
little changed.
"""

from __future__ import annotations

import torch

from pruner.base import Frame, StreamPruner, plain_selection
from pruner.config import PrunerConfig
from pruner.errors import BudgetError
from pruner.novelty import NoveltyTracker, adaptive_share
from pruner.ops import top_indices, unit
from pruner.records import Selection

WINDOW = 4


def pruned_frame_share(config: PrunerConfig, num_tokens: int) -> int:
    """Tokens kept by frames 1-3 of a window: ``int((1 - k) N)``, or derived from the budget."""
    k = config.dycoke.k
    if k is not None:
        return int((1.0 - k) * num_tokens)
    per_frame = config.budget.per_frame(num_tokens)
    if WINDOW * per_frame < num_tokens:
        raise BudgetError(
            f"dycoke keeps frame 0 of every 4-frame window whole, so it cannot keep only "
            f"{per_frame} of {num_tokens} tokens per frame on average; raise the budget to at "
            f"least {-(-num_tokens // WINDOW)} tokens, set dycoke.k, or pick another method"
        )
    return min(num_tokens, (WINDOW * per_frame - num_tokens) // (WINDOW - 1))


class DyCokePruner(StreamPruner):
    """DyCoke TTM on one stream; decides each frame on its push (no delay)."""

    method = "dycoke"

    def __init__(self, config: PrunerConfig) -> None:
        super().__init__(config)
        self._phase = 0
        self._first: torch.Tensor | None = None
        self._third: torch.Tensor | None = None
        self._novelty = NoveltyTracker(config.budget.novelty_tau)

    def _describe(self) -> str:
        k = self.config.dycoke.k
        return f"k={k}" if k is not None else f"k from {super()._describe()}"

    def _reset_state(self) -> None:
        self._phase = 0
        self._first = None
        self._third = None
        self._novelty.reset()

    def _push(self, frame: Frame) -> list[Selection]:
        budget = self.config.budget
        num_tokens = frame.num_tokens
        pruned_share = pruned_frame_share(self.config, num_tokens)
        current = unit(frame.tokens)
        if self._phase == 0:
            share = num_tokens
            if budget.adaptive:
                priority = self._novelty.novelty(current)
            else:
                priority = torch.ones(num_tokens, dtype=torch.float32, device=current.device)
            self._first = current
        else:
            reference = self._third if self._phase == WINDOW - 1 else self._first
            assert reference is not None
            priority = 1.0 - (reference * current).sum(-1)
            share = pruned_share
            if self._phase == 2:
                self._third = current
        if budget.adaptive:
            share = adaptive_share(budget, share, self._novelty.changed(current))
        keep = top_indices(priority, share)
        if budget.adaptive:
            self._novelty.update(current)
        self._phase = (self._phase + 1) % WINDOW
        return [plain_selection(self.method, frame, keep, priority)]
