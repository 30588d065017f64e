"""One stream's working window: the attention sink plus the newest blocks, encoded with
sliding-window attention in a ring of preallocated slots.

Layout of every layer's buffer: slots ``[0, S)`` hold the sink (the prompt's prefix, at
positions ``0 .. S-1``), slots ``[S, S + R)`` a ring of ``R`` slots for the window's blocks.
A new block is written at the ring's head (wrapping around); the oldest blocks leave the window
(their slots are merely marked free) until the window and the new block together hold at most
``window_tokens`` tokens. Its queries attend, through an explicit mask, to the sink, the live
window slots, and causally to themselves; free slots are masked out. Nothing is ever copied to
make room, so the per-block cost depends only on the window size, not on the stream's length.
The ring starts small and doubles up to ``window_tokens`` slots.

Positions. Keys are stored post-RoPE. The memory lays each block out at the window's cursor
(video steps numbered on from the window's last step, see :mod:`~.layout`). When a block would
pass ``position_limit``, the window's blocks are laid out again from just after the sink as a
fresh video and their keys re-rotated there (exact rotations), so positions stay bounded however
long the stream runs. A block can span more positions than it holds tokens (a pruned frame keeps
its tokens' places in the whole frame), so the window is bounded in positions too: its blocks
span at most half of the positions after the sink. After re-basing, the other half is free, so
re-basing happens at most once per half a window of blocks, never per block.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from stream_agent.memory.cache import SlotCache, SlotLayer
from stream_agent.memory.errors import MemoryConfigError
from stream_agent.memory.layout import BlockLayout, Layouter
from stream_agent.memory.records import EncodedBlock
from stream_agent.memory.runner import LayerRunner
from stream_agent.memory.sketch import embedding_sketch
from stream_agent.models.records import LMChunk

log = logging.getLogger(__name__)

_MIN_RING = 64


@lru_cache(maxsize=16)
def _causal_cached(tokens: int) -> torch.Tensor:
    return torch.ones(tokens, tokens, dtype=torch.bool).tril()


def causal_mask(tokens: int) -> torch.Tensor:
    """Lower-triangular ``(tokens, tokens)`` boolean mask (new tokens see earlier new tokens):
    a fresh copy of a cached one, so that a caller editing it in place cannot change the masks
    later blocks get."""
    return _causal_cached(tokens).clone()


@dataclass(frozen=True, slots=True, eq=False)
class SinkKV:
    """The attention sink: the prompt prefix's keys/values per layer
    ``(layers, kv_heads, S, head_dim)`` at positions ``0 .. S-1``, and its token ids."""

    ids: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.keys.shape[2])


@dataclass(slots=True)
class _WindowBlock:
    layout: BlockLayout  # where its keys are rotated now
    start: int  # ring offset of its first token

    @property
    def tokens(self) -> int:
        return self.layout.tokens


class Window:
    """The working window of one stream (see the module docstring)."""

    def __init__(
        self,
        runner: LayerRunner,
        sink: SinkKV,
        *,
        window_tokens: int,
        position_limit: int,
        sketch_vectors: int = 8,
    ) -> None:
        self.runner = runner
        self.sketch_vectors = sketch_vectors
        self.sink = sink
        self.window_tokens = window_tokens
        self.position_limit = position_limit
        self.sink_tokens = sink.tokens
        if self.sink_tokens >= position_limit:
            raise MemoryConfigError(
                f"the prompt prefix ({self.sink_tokens} tokens) leaves no positions under the "
                f"position limit {position_limit}"
            )
        self.span_budget = (position_limit - self.sink_tokens) // 2
        self.ring = min(_MIN_RING, window_tokens)
        self.cache = SlotCache([self._new_layer(i, self.ring) for i in range(runner.num_layers)])
        self.occupied = torch.zeros(self.sink_tokens + self.ring, dtype=torch.bool)
        self.occupied[: self.sink_tokens] = True
        self.blocks: deque[_WindowBlock] = deque()
        self.live_tokens = 0
        self.live_span = 0
        self.head = 0
        self.cursor = self.sink_tokens
        self.next_step = 0
        self.rebases = 0

    # --------------------------------------------------------------------------------- layout

    def _new_layer(self, index: int, ring: int) -> SlotLayer:
        r = self.runner
        shape = (1, r.kv_heads, self.sink_tokens + ring, r.head_dim)
        keys = torch.zeros(shape, dtype=r.dtype, device=r.device)
        values = torch.zeros(shape, dtype=r.dtype, device=r.device)
        keys[0, :, : self.sink_tokens] = self.sink.keys[index].to(r.device, r.dtype)
        values[0, :, : self.sink_tokens] = self.sink.values[index].to(r.device, r.dtype)
        return SlotLayer(keys, values, extent=self.sink_tokens + ring)

    def _ring_slots(self, start: int, count: int) -> torch.Tensor:
        offsets = (start + torch.arange(count)) % self.ring
        return (self.sink_tokens + offsets).to(self.runner.device)

    def live_slots(self) -> torch.Tensor:
        """Buffer slots of the window's blocks, oldest first."""
        if not self.blocks:
            return torch.empty(0, dtype=torch.long, device=self.runner.device)
        return self._ring_slots(self.blocks[0].start, self.live_tokens)

    def _grow(self, needed: int) -> None:
        ring = self.ring
        while ring < needed:
            ring *= 2
        ring = min(ring, self.window_tokens)
        live = self.live_slots()
        layers = []
        for index in range(self.runner.num_layers):
            old = self.cache.layer(index)
            new = self._new_layer(index, ring)
            assert old.keys is not None and old.values is not None
            assert new.keys is not None and new.values is not None
            s = self.sink_tokens
            new.keys[:, :, s : s + self.live_tokens] = old.keys.index_select(2, live)
            new.values[:, :, s : s + self.live_tokens] = old.values.index_select(2, live)
            layers.append(new)
        self.cache = SlotCache(layers)
        self.ring = ring
        offset = 0
        for block in self.blocks:
            block.start = offset
            offset += block.tokens
        self.head = self.live_tokens % ring
        self.occupied = torch.zeros(self.sink_tokens + ring, dtype=torch.bool)
        self.occupied[: self.sink_tokens + self.live_tokens] = True

    def _drop_oldest(self) -> None:
        block = self.blocks.popleft()
        slots = self._ring_slots(block.start, block.tokens).cpu()
        self.occupied[slots] = False
        self.live_tokens -= block.tokens
        self.live_span -= block.layout.span

    def make_room(self, tokens: int, span: int) -> None:
        """Drop the oldest blocks until a block of ``tokens`` tokens spanning ``span`` positions
        fits in the window (in tokens and in positions), and size the ring."""
        if tokens > self.window_tokens:
            raise MemoryConfigError(
                f"a block of {tokens} tokens does not fit memory.window_tokens="
                f"{self.window_tokens}; raise window_tokens above the tokens of one frame"
            )
        if span > self.span_budget:
            raise MemoryConfigError(
                f"a block spanning {span} positions does not fit half of the positions left "
                f"after the prompt prefix ({self.span_budget}); raise memory.position_limit"
            )
        while self.blocks and (
            self.live_tokens + tokens > self.window_tokens
            or self.live_span + span > self.span_budget
        ):
            self._drop_oldest()
        if self.ring - self.live_tokens < tokens:
            self._grow(self.live_tokens + tokens)

    @torch.no_grad()
    def rebase(self) -> None:
        """Lay the window's blocks out again from just after the sink (a fresh video) and
        re-rotate their keys there; the cursor and step count follow."""
        layouts = [block.layout for block in self.blocks]
        placement = Layouter(self.runner.model).lay_out(layouts, self.sink_tokens)
        if layouts:
            deltas = torch.cat(
                [
                    new - old.positions
                    for new, old in zip(placement.positions, layouts, strict=True)
                ],
                dim=1,
            )
            live = self.live_slots()
            for index in range(self.runner.num_layers):
                layer = self.cache.layer(index)
                assert layer.keys is not None
                moved = self.runner.shift_tokens(layer.keys.index_select(2, live), deltas)
                layer.keys.index_copy_(2, live, moved)
            for i, block in enumerate(self.blocks):
                block.layout = placement.moved(i, block.layout)
        self.live_span = sum(block.layout.span for block in self.blocks)
        self.cursor = placement.end
        self.next_step = placement.steps
        self.rebases += 1
        log.debug("window laid out again from position %d", self.sink_tokens)

    # ------------------------------------------------------------------------------- encoding

    def _place(self, layout: BlockLayout) -> torch.Tensor:
        """Reserve ring slots for a block."""
        start = self.head
        slots = self._ring_slots(start, layout.tokens)
        self.blocks.append(_WindowBlock(layout, start))
        self.head = (self.head + layout.tokens) % self.ring
        self.live_tokens += layout.tokens
        self.live_span += layout.span
        return slots

    def _advance(self, layout: BlockLayout) -> None:
        self.cursor = layout.next_position
        self.next_step = self.next_step + 1 if layout.kind == "step" else 0

    @torch.no_grad()
    def encode(self, chunk: LMChunk, layout: BlockLayout) -> EncodedBlock:
        """Prefill one block (``chunk`` laid out at the cursor, described by ``layout``) with
        sliding-window attention; call :meth:`make_room` first (and :meth:`rebase` if the
        block would pass the position limit).

        Returns its keys/values and its representative keys. A block of no tokens only advances
        the cursor.
        """
        r = self.runner
        tokens = len(chunk)
        sketch = embedding_sketch(chunk.embeds, self.sketch_vectors)
        if tokens == 0:
            self._advance(layout)
            empty = torch.empty(r.num_layers, r.kv_heads, 0, r.head_dim, dtype=r.dtype)
            return EncodedBlock(
                keys=empty,
                values=empty.clone(),
                rep_keys=torch.zeros(r.num_layers, r.kv_heads * r.head_dim),
                sketch=sketch,
                layout=layout,
            )
        if self.ring - self.live_tokens < tokens:
            raise RuntimeError("Window.encode without room; call make_room first")
        visible = self.occupied.clone()
        head = self.head
        slots = self._place(layout)
        try:
            return self._prefill(chunk, layout, slots, visible, sketch)
        except BaseException:
            # nothing was stored (e.g. out of memory on a GPU): take the placement back so that
            # the window holds no half-written block
            self.blocks.pop()
            self.head = head
            self.live_tokens -= layout.tokens
            self.live_span -= layout.span
            raise

    def _prefill(
        self,
        chunk: LMChunk,
        layout: BlockLayout,
        slots: torch.Tensor,
        visible: torch.Tensor,
        sketch: torch.Tensor,
    ) -> EncodedBlock:
        r = self.runner
        tokens = len(chunk)
        cpu_slots = slots.cpu()
        mask_bool = visible[None].expand(tokens, -1).clone()
        mask_bool[:, cpu_slots] = causal_mask(tokens)
        mask = r.additive_mask(mask_bool.to(r.device))
        embeddings = r.position_embeddings(chunk.positions.to(r.device))
        hidden = chunk.embeds[None].to(device=r.device, dtype=r.dtype)
        extent = self.sink_tokens + self.ring
        reps = []
        keys = []
        values = []
        for index in range(r.num_layers):
            pre_keys = r.project(index, r.normed(index, hidden), "k")
            reps.append(pre_keys[0].float().mean(dim=0).reshape(-1))
            layer = self.cache.layer(index)
            layer.plan(slots, extent)
            hidden = r.run_layer(index, hidden, embeddings, self.cache, mask)
            assert layer.written is not None
            keys.append(layer.written[0][0])
            values.append(layer.written[1][0])
            layer.written = None
        self.occupied[cpu_slots] = True
        self._advance(layout)
        return EncodedBlock(
            keys=torch.stack(keys),
            values=torch.stack(values),
            rep_keys=torch.stack(reps).cpu(),
            sketch=sketch,
            layout=layout,
        )

    @torch.no_grad()
    def restore(self, blocks: Sequence[tuple[BlockLayout, torch.Tensor, torch.Tensor]]) -> None:
        """Refill an empty window with stored blocks ``(layout, keys, values)`` (keys
        ``(layers, kv_heads, tokens, head_dim)``), oldest first, then lay them out from just
        after the sink (after a restart, so that the next block attends to its recent past)."""
        if self.blocks:
            raise RuntimeError("restore needs an empty window")
        kept = [b for b in blocks if b[0].tokens > 0]
        total = sum(b[0].tokens for b in kept)
        span = sum(b[0].span for b in kept)
        while kept and (total > self.window_tokens or span > self.span_budget):
            layout = kept.pop(0)[0]
            total -= layout.tokens
            span -= layout.span
        if total > self.ring:
            self._grow(total)
        for layout, keys, values in kept:
            slots = self._place(layout)
            for index in range(self.runner.num_layers):
                layer = self.cache.layer(index)
                assert layer.keys is not None and layer.values is not None
                k = keys[index].to(self.runner.device, self.runner.dtype)
                v = values[index].to(self.runner.device, self.runner.dtype)
                layer.keys.index_copy_(2, slots, k[None])
                layer.values.index_copy_(2, slots, v[None])
            self.occupied[slots.cpu()] = True
        self.rebase()

    @property
    def nbytes(self) -> int:
        """Bytes of the window's buffers (all layers, keys and values)."""
        layer = self.cache.layer(0)
        assert layer.keys is not None
        return 2 * self.runner.num_layers * layer.keys.numel() * layer.keys.element_size()
