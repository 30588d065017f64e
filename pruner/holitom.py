"""HoliTom outer-LLM merging, over a sliding window of recent frames.

Released code (``cokeshao/HoliTom`` ``holitom/llava_arch.py``), on a clip of F frames:

1. ``sim[t, p] = cos(z_t[p], z_{t+1}[p])``; position p is static over [s, e] when
   ``sim[t, p] > tau`` for every t in s..e-1. Merging [s, e] removes ``G(s, e) =
   (#static positions) * (e - s)`` token copies.
2. ``select_static_windows``: a dynamic programme picks disjoint segments covering the clip that
   maximise the removed copies (:func:`select_static_windows` is a transcription).
3. Budget: ``r' = min(R / ((N_total - N_reduced) / N_total), 1)``, so the R share of the clip's
   tokens is spread over what is left after the temporal merge.
4. Per segment [s, e] (e > s): static tokens are averaged over the segment into one token at the
   first frame, then clustered by DPC-kNN to ``r'`` of their number (merged token = ``beta *
   centre + (1 - beta) * mean(members)``); each frame's dynamic tokens keep the ``r'`` share with
   the highest saliency (the released default D = 0: "dominant" tokens only). A single-frame
   segment treats all its tokens as dynamic.

Streaming form (documented latency): frames are buffered; after each push the programme runs over
the buffer, and every segment except the last (which may still grow) is final and emitted. When
the buffer holds ``window`` frames everything is emitted, so a frame waits at most ``window - 1``
pushes; ``flush()`` emits the rest. The budget of an emitted group of n frames is ``n * B``,
shared out by the largest-remainder method in proportion to ``r'`` (the released code rounds each
group on its own, which can exceed the budget by a few tokens). DPC-kNN breaks density ties by
position instead of adding random noise, so the result is deterministic.

Saliency: the released code uses the attention each patch receives in the vision tower's last
layer (``push(..., saliency=...)``); without it, ``1 - cos`` to the frame's mean token stands in.
``Selection.scores`` is that saliency. A static merged token's ``MergeGroups`` entry lists every
(frame, position) it stands for across its segment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import torch

from pruner.base import Frame, StreamPruner, plain_selection
from pruner.config import PrunerConfig
from pruner.ops import as_float, top_indices, unit
from pruner.records import MergeGroups, Selection


def static_window_gains(static_pairs: torch.Tensor) -> torch.Tensor:
    """(F, F) ``gain[s, e]`` = (positions static over s..e) * (e - s); zero where e <= s.

    ``static_pairs`` is (F - 1, N) bool: ``static_pairs[t, p]`` is ``sim[t, p] > tau``.
    """
    num_frames = static_pairs.shape[0] + 1
    gains = torch.zeros(num_frames, num_frames, dtype=torch.float32)
    pairs = static_pairs.to("cpu", torch.int64)
    for start in range(num_frames - 1):
        counts = torch.cumprod(pairs[start:], dim=0).sum(-1).float()
        lengths = torch.arange(1, counts.shape[0] + 1, dtype=torch.float32)
        gains[start, start + 1 :] = counts * lengths
    return gains


def select_static_windows(
    static_pairs: torch.Tensor, max_window: int
) -> tuple[list[tuple[int, int]], float]:
    """The released dynamic programme: disjoint [s, e] segments covering all frames, in order,
    that maximise the removed static copies; returns ``(segments, removed)``."""
    num_frames = static_pairs.shape[0] + 1
    gains = static_window_gains(static_pairs).tolist()
    best = [0.0] * num_frames
    start_of = [0] * num_frames
    for i in range(num_frames):
        value = best[i - 1] if i > 0 else 0.0
        start = i
        for width in range(2, min(i + 1, max_window) + 1):
            j = i - width
            candidate = (best[j] if j >= 0 else 0.0) + gains[j + 1][i]
            if candidate > value:
                value, start = candidate, j + 1
        best[i] = value
        start_of[i] = start
    segments: list[tuple[int, int]] = []
    i = num_frames - 1
    while i >= 0:
        segments.append((start_of[i], i))
        i = start_of[i] - 1
    segments.reverse()
    return segments, best[-1]


def dpc_knn_centres(
    tokens: torch.Tensor, count: int, neighbours: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN cluster centres (ascending) and the scaled distance matrix.

    Density ``exp(-mean(d_kNN^2))`` over the ``neighbours`` nearest (self included), distance
    ``cdist / sqrt(D)``; ``delta`` is the distance to the nearest denser token (the largest
    distance for the densest); centres are the ``count`` largest ``delta * density``. Equal
    densities are ordered by position (denser = lower position) instead of random noise.
    """
    x = as_float(tokens)
    size, channels = x.shape
    distance = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(channels)
    nearest = torch.sort(distance, dim=-1).values[:, : min(neighbours, size)]
    density = torch.exp(-(nearest**2).mean(-1))
    position = torch.arange(size, device=x.device)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (position[None, :] < position[:, None])
    )
    delta = torch.where(denser, distance, distance.max()).min(-1).values
    return top_indices(delta * density, count), distance


def merge_clusters(
    tokens: torch.Tensor, centres: torch.Tensor, distance: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign every non-centre to its nearest centre and merge.

    Returns ``(values, slot)``: (C, D) float32 merged tokens, ``beta * centre + (1 - beta) *
    mean(members)`` (a centre without members stays as it is), and (n,) the cluster of every
    token, centres included.
    """
    x = as_float(tokens)
    size = x.shape[0]
    slot = torch.full((size,), -1, dtype=torch.int64, device=x.device)
    slot[centres] = torch.arange(centres.shape[0], device=x.device)
    others = (slot < 0).nonzero().flatten()
    nearest = distance[others][:, centres].argmin(-1)
    slot[others] = nearest
    sums = torch.zeros(centres.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, nearest, x[others])
    counts = torch.bincount(nearest, minlength=centres.shape[0]).to(torch.float32)
    means = sums / counts.clamp(min=1.0)[:, None]
    merged = beta * x[centres] + (1.0 - beta) * means
    values = torch.where(counts[:, None] > 0, merged, x[centres])
    return values, slot


def apportion(sizes: list[int], total: int) -> list[int]:
    """Share ``total`` tokens among groups in proportion to their sizes (largest remainder,
    ties to the earlier group); never more than a group's size, sum = min(total, sum(sizes))."""
    whole = sum(sizes)
    if total >= whole:
        return list(sizes)
    shares = [size * total // whole for size in sizes]
    remainders = [size * total % whole for size in sizes]
    left = total - sum(shares)
    order = sorted(range(len(sizes)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def proxy_saliency(tokens: torch.Tensor) -> torch.Tensor:
    """(N,) ``1 - cos(token, frame mean)``: the stand-in when no ViT attention is given."""
    x = as_float(tokens)
    return 1.0 - (unit(x) * unit(x.mean(0, keepdim=True))).sum(-1)


class HoliTomPruner(StreamPruner):
    """HoliTom outer-LLM merging on one stream; may hold a frame back ``window - 1`` pushes."""

    method = "holitom"

    def __init__(self, config: PrunerConfig) -> None:
        super().__init__(config)
        self._frames: list[Frame] = []
        self._units: list[torch.Tensor] = []
        self._pairs: list[torch.Tensor] = []

    def _describe(self) -> str:
        options = self.config.holitom
        return f"tau={options.tau}, window={options.window}, {super()._describe()}"

    @property
    def max_delay_frames(self) -> int:
        return self.config.holitom.window - 1

    @property
    def pending(self) -> int:
        return len(self._frames)

    def _reset_state(self) -> None:
        self._frames = []
        self._units = []
        self._pairs = []

    def _segments(self) -> list[tuple[int, int]]:
        if not self._pairs:
            return [(0, 0)] if self._frames else []
        segments, _ = select_static_windows(torch.stack(self._pairs), self.config.holitom.window)
        return segments

    def _push(self, frame: Frame) -> list[Selection]:
        # buffered frames must not change if the caller reuses its tensor for the next frame
        frame = replace(frame, tokens=frame.tokens.clone())
        current = unit(frame.tokens)
        if self._units:
            similarity = (self._units[-1] * current).sum(-1)
            self._pairs.append(similarity > self.config.holitom.tau)
        self._frames.append(frame)
        self._units.append(current)
        segments = self._segments()
        if len(self._frames) >= self.config.holitom.window:
            return self._emit(segments)
        return self._emit(segments[:-1])

    def _flush(self) -> list[Selection]:
        return self._emit(self._segments())

    def _emit(self, segments: list[tuple[int, int]]) -> list[Selection]:
        if not segments:
            return []
        last = segments[-1][1]
        frames = self._frames[: last + 1]
        num_tokens = frames[0].num_tokens
        statics: list[torch.Tensor | None] = []
        sizes: list[int] = []
        for start, end in segments:
            if start == end:
                statics.append(None)
                sizes.append(num_tokens)
                continue
            span_static = torch.stack(self._pairs[start:end]).all(0)
            statics.append(span_static)
            static_count = int(span_static.sum().item())
            sizes.append(static_count)
            sizes.extend([num_tokens - static_count] * (end - start + 1))
        shares = iter(apportion(sizes, self.config.budget.per_frame(num_tokens) * len(frames)))
        selections: list[Selection] = []
        for (start, end), segment_static in zip(segments, statics, strict=True):
            if segment_static is None:
                frame = frames[start]
                saliency = self._saliency(frame)
                keep = top_indices(saliency, next(shares))
                selections.append(plain_selection(self.method, frame, keep, saliency))
                continue
            selections.extend(self._segment(frames[start : end + 1], segment_static, shares))
        self._frames = self._frames[last + 1 :]
        self._units = self._units[last + 1 :]
        self._pairs = self._pairs[last + 1 :]
        return selections

    @staticmethod
    def _saliency(frame: Frame) -> torch.Tensor:
        return frame.saliency if frame.saliency is not None else proxy_saliency(frame.tokens)

    def _segment(
        self, frames: list[Frame], static: torch.Tensor, shares: Iterator[int]
    ) -> list[Selection]:
        options = self.config.holitom
        first = frames[0]
        device = first.tokens.device
        static_positions = static.nonzero().flatten()
        static_count = int(static_positions.shape[0])
        static_share = min(next(shares), static_count)
        stacked = torch.stack([as_float(f.tokens[static_positions]) for f in frames])
        static_values = stacked.mean(0)
        if static_share >= static_count:
            centres = torch.arange(static_count, device=device)
            merged_values = static_values
            slot = centres
        elif static_share == 0:
            centres = torch.zeros(0, dtype=torch.int64, device=device)
            merged_values = static_values[:0]
            slot = torch.full((static_count,), -1, dtype=torch.int64, device=device)
        else:
            centres, distance = dpc_knn_centres(
                static_values, static_share, min(options.knn, static_share)
            )
            merged_values, slot = merge_clusters(static_values, centres, distance, options.beta)
        dynamic_positions = (~static).nonzero().flatten()
        selections: list[Selection] = []
        for offset, frame in enumerate(frames):
            saliency = self._saliency(frame)
            chosen = top_indices(saliency[dynamic_positions], next(shares))
            dynamic_keep = dynamic_positions[chosen]
            if offset > 0:
                selections.append(plain_selection(self.method, frame, dynamic_keep, saliency))
                continue
            selections.append(
                self._first_frame(
                    frames, static_positions, centres, merged_values, slot, dynamic_keep, saliency
                )
            )
        return selections

    def _first_frame(
        self,
        frames: list[Frame],
        static_positions: torch.Tensor,
        centres: torch.Tensor,
        merged_values: torch.Tensor,
        slot: torch.Tensor,
        dynamic_keep: torch.Tensor,
        saliency: torch.Tensor,
    ) -> Selection:
        """Frame s of a segment: its static merged tokens plus its kept dynamic tokens."""
        first = frames[0]
        device = first.tokens.device
        positions = torch.cat([static_positions[centres], dynamic_keep])
        values = torch.cat(
            [merged_values.to(first.tokens.dtype), first.tokens[dynamic_keep]], dim=0
        )
        order = torch.argsort(positions)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0], device=device)
        centre_count = int(centres.shape[0])
        member = slot >= 0
        static_owner = rank[slot[member]]
        static_index = static_positions[member]
        span = len(frames)
        owners = [static_owner.repeat(span), rank[centre_count:]]
        frame_ids = [
            torch.tensor([f.index for f in frames], device=device).repeat_interleave(
                static_owner.shape[0]
            ),
            torch.full((dynamic_keep.shape[0],), first.index, dtype=torch.int64, device=device),
        ]
        indices = [static_index.repeat(span), dynamic_keep]
        return Selection(
            method=self.method,
            frame_index=first.index,
            timestamp=first.timestamp,
            grid=first.grid,
            indices=positions[order],
            tokens=values[order],
            scores=saliency,
            merged=MergeGroups(
                owner=torch.cat(owners),
                frame_index=torch.cat(frame_ids),
                index=torch.cat(indices),
            ),
        )
