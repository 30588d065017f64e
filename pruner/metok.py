"""METok stage 1 (event-aware pooling), adapted to a stream.

Released code (``mnyuew/METok`` ``llava_arch.py``, on a 32-frame clip): frame descriptors are the
mean projected token; events are cut at the 4 lowest adjacent-frame cosine similarities; the 3
events most relevant to the question (SigLIP text-frame similarity) are key events and each
event's 6 most relevant frames are key frames; frames are pooled with stride 2 (key event, key
frame), 4 (mixed) or 8 (neither) on the 27x27 tower grid.

Streaming form (no delay: each frame is decided on its push). There is no question when frames
arrive, so relevance becomes novelty, and the whole-clip ranks become running statistics:

- descriptor ``d_t = mean token``; ``s_t = cos(d_{t-1}, d_t)``;
- a boundary (new event) when ``s_t`` is below the ``cuts / (window - 1)`` quantile of the last
  ``window - 1`` similarities (once ``min_history`` are known): the released 4 cuts per 32
  frames; and, because a stream need not contain any event, only when the drop ``1 - s_t`` is at
  least ``min_drop`` times the typical one (``1 -`` the median of that history), so that noise on
  a static scene does not cut;
- a new event is *novel* (key) when its first frame is at least ``novel_share`` as far (``1 -
  cos``) from every remembered event (``event_memory`` past event mean descriptors) as from the
  frame before it, or when nothing is remembered yet: a new scene is novel, a return to a scene
  seen before is not;
- the first ``key_frames`` frames of an event are its key frames (the released code takes the 6
  frames most relevant to the question; without one, an event is newest at its start);
- the wanted stride is ``strides[0]`` (novel event, key frame), ``strides[1]`` (one of the two) or
  ``strides[2]`` (neither); strides relative to the grid the pruner receives (LLaVA-OV's 14x14 is
  the tower's 27x27 already pooled by 2, so the released (2, 4, 8) become (1, 2, 4)).

Budget: a token bucket earns B per frame and holds at most ``credit_frames * B`` between frames
(it starts full); a frame gets the finest stride at or coarser than the wanted one that the bucket
can pay for, coarser strides (doubling down to one token per frame) serving when the three
configured ones cannot be paid. Any n consecutive frames keep at most ``(n + credit_frames) * B``
tokens. With an adaptive budget a frame also keeps at most ``max(min_tokens, changed)`` tokens.

Pooling is a block mean (``ceil`` blocks at the edges); each pooled token is placed at the block
member nearest the block centre, and ``MergeGroups`` lists the block. ``Selection.scores`` is
``1 - cos`` to the previous frame at the same position (ones for a stream's first frame):
informational, since stage 1 pools whole frames rather than choosing tokens.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from pruner.base import Frame, StreamPruner, plain_selection
from pruner.config import PrunerConfig
from pruner.novelty import NoveltyTracker
from pruner.ops import as_float, block_pool, pooled_count, unit
from pruner.records import MergeGroups, Selection


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile of a non-empty list (numpy's default method)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stride_ladder(grid: tuple[int, int], strides: tuple[int, int, int]) -> list[int]:
    """The configured strides followed by doublings of the last until one token is left."""
    ladder = list(strides)
    while pooled_count(grid, ladder[-1]) > 1:
        ladder.append(ladder[-1] * 2)
    return ladder


class METokPruner(StreamPruner):
    """METok stage 1 on one stream; decides each frame on its push (no delay)."""

    method = "metok"

    def __init__(self, config: PrunerConfig) -> None:
        super().__init__(config)
        self._novelty = NoveltyTracker(config.budget.novelty_tau)
        self._reset_state()

    def _describe(self) -> str:
        options = self.config.metok
        return f"strides={options.strides}, cuts={options.cuts}/{options.window}, " + (
            super()._describe()
        )

    def _reset_state(self) -> None:
        options = self.config.metok
        self._previous: torch.Tensor | None = None
        self._previous_units: torch.Tensor | None = None
        self._similarities: deque[float] = deque(maxlen=options.window - 1)
        self._events: deque[torch.Tensor] = deque(maxlen=options.event_memory)
        self._event_sum: torch.Tensor | None = None
        self._event_count = 0
        self._event_key = False
        self._credit: int | None = None
        self._novelty.reset()

    def _close_event(self) -> None:
        if self._event_sum is not None and self._event_count > 0:
            self._events.append(unit(self._event_sum[None] / self._event_count)[0])
        self._event_sum = None
        self._event_count = 0

    def _classify(self, descriptor: torch.Tensor) -> tuple[bool, bool]:
        """Update the event state with this frame's descriptor; return (key event, key frame)."""
        options = self.config.metok
        history = list(self._similarities)
        similarity: float | None = None
        if self._previous is None:
            boundary = True
        else:
            similarity = float((unit(self._previous[None]) * unit(descriptor[None])).sum().item())
            boundary = (
                len(history) >= options.min_history
                and similarity < quantile(history, options.cuts / (options.window - 1))
                and 1.0 - similarity >= options.min_drop * (1.0 - quantile(history, 0.5))
            )
        if boundary:
            self._close_event()
            if not self._events or similarity is None:
                self._event_key = True
            else:
                remembered = torch.stack(list(self._events))
                closest = float((remembered @ unit(descriptor[None])[0]).max().item())
                self._event_key = 1.0 - closest >= options.novel_share * (1.0 - similarity)
        key_frame = self._event_count < options.key_frames
        self._event_sum = (
            descriptor.clone() if self._event_sum is None else (self._event_sum + descriptor)
        )
        self._event_count += 1
        if similarity is not None:
            self._similarities.append(similarity)
        self._previous = descriptor
        return self._event_key, key_frame

    def _push(self, frame: Frame) -> list[Selection]:
        options = self.config.metok
        budget = self.config.budget
        x = as_float(frame.tokens)
        current = unit(x)
        key_event, key_frame = self._classify(x.mean(0))
        wanted = (0 if key_frame else 1) if key_event else (1 if key_frame else 2)

        per_frame = budget.per_frame(frame.num_tokens)
        if self._credit is None:
            self._credit = options.credit_frames * per_frame
        self._credit += per_frame
        limit = self._credit
        if budget.adaptive:
            changed = int(self._novelty.changed(current).sum().item())
            limit = min(limit, max(budget.min_tokens, changed))
        ladder = stride_ladder(frame.grid, options.strides)
        stride = next((s for s in ladder[wanted:] if pooled_count(frame.grid, s) <= limit), None)

        if self._previous_units is None:
            scores = torch.ones(frame.num_tokens, dtype=torch.float32, device=x.device)
        else:
            scores = 1.0 - (self._previous_units * current).sum(-1)
        self._previous_units = current

        if stride is None:
            keep = torch.zeros(0, dtype=torch.int64, device=x.device)
            selection = plain_selection(self.method, frame, keep, scores)
        elif stride == 1:
            keep = torch.arange(frame.num_tokens, device=x.device)
            selection = plain_selection(self.method, frame, keep, scores)
        else:
            values, representative, block_of = block_pool(frame.tokens, frame.grid, stride)
            selection = Selection(
                method=self.method,
                frame_index=frame.index,
                timestamp=frame.timestamp,
                grid=frame.grid,
                indices=representative,
                tokens=values.to(frame.tokens.dtype),
                scores=scores,
                merged=MergeGroups(
                    owner=block_of,
                    frame_index=torch.full_like(block_of, frame.index),
                    index=torch.arange(frame.num_tokens, device=x.device),
                ),
            )
        self._credit = min(self._credit - selection.num_kept, options.credit_frames * per_frame)
        if budget.adaptive:
            self._novelty.update(current)
        return [selection]
