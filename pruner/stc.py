"""STC-Pruner: keep the tokens least like the frame's own context and the stream's history.

Released default (``lern-to-write/STC`` ``model/prune.py``, ``strategy="gaussian"``), applied with
one frame per chunk as in the ReKV+STC scripts (``encode_chunk_size = 1``):

1. Keep, for scoring only, the ``channel_keep_ratio`` share of channels with the lowest variance
   over the frame's tokens (in ascending-variance order, as ``topk(largest=False)`` returns them).
2. Append the frame's mean over those channels to the history; the temporal anchor is the mean of
   the history, current frame included (all frames by default: a running mean, O(D) state).
3. ``z = L2norm(tokens)``; spatial anchor ``a_s = mean(z)``; temporal anchor
   ``a_m = L2norm(history mean)``; ``G(z, a) = sum_alpha exp(-|z - a|^2 / (2 alpha))`` over the
   bandwidths {1/8, 1/4, 1/2, 1, 2}; score ``G(z, a_s) + G(z, a_m)``.
4. Keep the K tokens with the *lowest* score, in raster order.

``dual_anchor`` (the paper's form): ``S = alpha (1 - cos(z, a_t)) + (1 - alpha)(1 - cos(z, a_s))``
with ``a_t`` the mean of a FIFO of the last ``dual_anchor_window`` frames' ``a_s`` (pushed after
each frame; the first frame uses ``a_t = a_s``); keep the K highest.

``Selection.scores`` is the keep priority: ``-(G_s + G_m)`` for gaussian, ``S`` for dual_anchor.
Ties are broken towards the lower raster position.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

from pruner.base import Frame, StreamPruner, plain_selection
from pruner.config import PrunerConfig
from pruner.novelty import NoveltyTracker, adaptive_share
from pruner.ops import as_float, top_indices, unit
from pruner.records import Selection


def low_variance_channels(tokens: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Indices of the ``keep_ratio`` share (at least one) of lowest-variance channels, by rank."""
    variance = as_float(tokens).var(dim=0, unbiased=False)
    count = max(1, int(variance.shape[0] * keep_ratio))
    return torch.sort(variance, stable=True).indices[:count]


def gaussian_similarity(
    unit_tokens: torch.Tensor, anchor: torch.Tensor, bandwidths: tuple[float, ...]
) -> torch.Tensor:
    """(N,) sum over bandwidths of ``exp(-|z - anchor|^2 / (2 * bandwidth))``."""
    distance = ((unit_tokens - anchor) ** 2).sum(-1)
    total = torch.zeros_like(distance)
    for bandwidth in bandwidths:
        total = total + torch.exp(-distance / (2.0 * bandwidth))
    return total


class _RunningMean:
    """Mean of every vector added so far, in O(D) memory (the released unbounded history)."""

    def __init__(self) -> None:
        self._mean: torch.Tensor | None = None
        self._count = 0

    def add(self, vector: torch.Tensor) -> None:
        self._count += 1
        if self._mean is None:
            self._mean = vector.clone()
        else:
            self._mean = self._mean + (vector - self._mean) / self._count

    def mean(self) -> torch.Tensor | None:
        return self._mean


class _WindowMean:
    """Mean of the last ``size`` vectors added."""

    def __init__(self, size: int) -> None:
        self._items: deque[torch.Tensor] = deque(maxlen=size)

    def add(self, vector: torch.Tensor) -> None:
        self._items.append(vector)

    def mean(self) -> torch.Tensor | None:
        if not self._items:
            return None
        return torch.stack(list(self._items)).mean(0)


class STCPruner(StreamPruner):
    """STC-Pruner on one stream; decides each frame on its push (no delay)."""

    method = "stc"

    def __init__(self, config: PrunerConfig) -> None:
        super().__init__(config)
        self._history: _RunningMean | _WindowMean = self._new_history()
        self._novelty = NoveltyTracker(config.budget.novelty_tau)

    def _describe(self) -> str:
        options = self.config.stc
        return f"{options.strategy}, {super()._describe()}"

    def _new_history(self) -> _RunningMean | _WindowMean:
        options = self.config.stc
        if options.strategy == "dual_anchor":
            return _WindowMean(options.dual_anchor_window)
        if options.gaussian_history is None:
            return _RunningMean()
        return _WindowMean(options.gaussian_history)

    def _reset_state(self) -> None:
        self._history = self._new_history()
        self._novelty.reset()

    def _score(self, tokens: torch.Tensor) -> torch.Tensor:
        """Score one frame, update the history, and return its (N,) keep priority."""
        options = self.config.stc
        x = as_float(tokens)
        channels = low_variance_channels(x, options.channel_keep_ratio)
        selected = x[:, channels]
        z = F.normalize(selected, dim=-1)
        spatial = z.mean(0)
        aligned = options.channel_aligned_memory
        if options.strategy == "gaussian":
            self._history.add(x.mean(0) if aligned else selected.mean(0))
            memory = self._history.mean()
            assert memory is not None
            temporal = F.normalize(memory[channels] if aligned else memory, dim=0)
            similarity = gaussian_similarity(z, spatial, options.bandwidths)
            similarity = similarity + gaussian_similarity(z, temporal, options.bandwidths)
            return -similarity
        past = self._history.mean()
        if past is not None and aligned:
            past = past[channels]
        temporal = spatial if past is None else past
        alpha = options.alpha
        temporal_distance = 1.0 - F.cosine_similarity(z, temporal[None], dim=-1)
        spatial_distance = 1.0 - F.cosine_similarity(z, spatial[None], dim=-1)
        self._history.add(unit(x).mean(0) if aligned else spatial)
        return alpha * temporal_distance + (1.0 - alpha) * spatial_distance

    def _push(self, frame: Frame) -> list[Selection]:
        budget = self.config.budget
        priority = self._score(frame.tokens)
        share = budget.per_frame(frame.num_tokens)
        unit_tokens = unit(frame.tokens) if budget.adaptive else None
        if unit_tokens is not None:
            share = adaptive_share(budget, share, self._novelty.changed(unit_tokens))
        keep = top_indices(priority, share)
        if unit_tokens is not None:
            self._novelty.update(unit_tokens)
        return [plain_selection(self.method, frame, keep, priority)]
