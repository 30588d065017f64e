"""Answering from the memory: per-layer retrieval in one layer-by-layer pass, then decoding.

The prompt suffix (the family's end-of-video tokens, the question and the opening of the
assistant's turn) runs through the LLM one decoder layer at a time. At layer ``l``:

1. its pre-RoPE queries of the question's rows are averaged (and folded onto the KV heads);
2. the question's :class:`~.retrieval.base.Retriever` picks the ``top_k`` blocks layer ``l``
   retrieves (ReKV's internal retrieval: the dot product of that query with every candidate
   block's mean pre-RoPE key at layer ``l``; see :mod:`~.retrieval` for the others);
3. layer ``l``'s context is assembled: the sink, then the retrieved blocks and the stream's
   recent blocks in time order, laid out one after the other as one video (video steps
   renumbered from 0, see :mod:`~.layout`) that ends where the suffix starts, each block's
   stored keys re-rotated there;
4. the answer's :class:`~.compression.base.InContextCompressor` may narrow what of that context
   the layer sees (``none``, the default, keeps all): before assembly by naming the tokens of
   each block to load (``select_tokens``), after it by a keep-set (``prefill_layer``) to which
   the buffer is compacted; while decoding, a step's keep-set (``decode_layer``) is gathered;
5. the library's decoder layer runs the suffix over that context (writing the suffix's own K/V
   after it), giving layer ``l + 1``'s input, whose queries depend on what layer ``l`` saw.

The suffix starts at the same position in every layer: after the longest selection any layer
could lay out (the recent blocks and the ``top_k`` candidates of the largest spans). When the
window held the whole stream and ``top_k`` covers every block, each block lands at the position
it was encoded at, so the context equals the uncompressed prompt's.

The question's K/V lives only in this answer's cache and is dropped with it; the stream's memory
is not changed by a question.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from stream_agent.answers import Moment, best_first
from stream_agent.memory.cache import SlotCache, SlotLayer
from stream_agent.memory.compression import (
    AttentionProbe,
    ContextBlock,
    InContextCompressor,
    LayerContext,
    NoCompression,
)
from stream_agent.memory.errors import PositionBudgetError
from stream_agent.memory.layout import Layouter
from stream_agent.memory.records import Candidate
from stream_agent.memory.retrieval import Retriever
from stream_agent.memory.runner import LayerRunner
from stream_agent.memory.window import SinkKV
from stream_agent.models.base import decode_tokens
from stream_agent.models.records import DecodeOptions, DecodeStep, LMChunk

#: Loads one layer of one block: ``(keys, values)`` each ``(kv_heads, tokens, head_dim)``.
LayerLoader = Callable[["Candidate", int], tuple[torch.Tensor, torch.Tensor]]

__all__ = ["AnswerPass", "Candidate", "LayerLoader", "PreparedAnswer"]


@dataclass(frozen=True, slots=True, eq=False)
class PreparedAnswer:
    """The question prefilled over its retrieved context, ready to decode.

    ``evidence`` are the blocks any layer saw, as the answer cites them (best first);
    ``selections[l]`` are the blocks layer ``l`` saw (time order); ``context_tokens`` the largest
    number of cached tokens in a layer before the suffix; ``kept[l]`` the context slots the
    compressor left layer ``l`` (None: all).
    """

    cache: SlotCache
    logits: torch.Tensor
    next_position: int
    evidence: tuple[Moment, ...]
    selections: tuple[tuple[Candidate, ...], ...]
    context_tokens: int
    retrieval_s: float
    blocks_loaded: int
    contexts: tuple[LayerContext | None, ...] = ()
    kept: tuple[torch.Tensor | None, ...] = ()
    notes: tuple[str, ...] = ()


class AnswerPass:
    """One question's retrieval, prefill and decoding (see the module docstring)."""

    def __init__(
        self,
        runner: LayerRunner,
        sink: SinkKV,
        *,
        candidates: Sequence[Candidate],
        recent: Sequence[Candidate],
        top_k: int,
        loader: LayerLoader,
        compressor: InContextCompressor | None = None,
    ) -> None:
        self.runner = runner
        self.sink = sink
        self.candidates = list(candidates)
        self.recent = sorted(recent, key=lambda c: c.order)
        self.top_k = top_k
        self.loader = loader
        self.compressor = compressor or NoCompression()
        self.layouter = Layouter(runner.model)

    def start_position(self) -> int:
        """Where the suffix starts: after the longest selection any layer could lay out (the
        recent blocks and the ``top_k`` candidates of the largest spans), so that every layer's
        blocks fit before it; when every block is selected, where the stream's next block
        would have gone."""
        widest = sorted(self.candidates, key=lambda c: c.meta.span, reverse=True)[: self.top_k]
        chosen = sorted([*widest, *self.recent], key=lambda c: c.order)
        return self.layouter.lay_out([c.meta.layout for c in chosen], self.sink.tokens).end

    def _assemble(
        self,
        layer: int,
        chosen: Sequence[Candidate],
        limit: int,
        extra: int,
        recent_keys: set[tuple[int, int]],
        offsets: Mapping[tuple[int, int], torch.Tensor] | None = None,
    ) -> tuple[SlotLayer, tuple[ContextBlock, ...]]:
        """Layer ``layer``'s context buffer: the sink, then ``chosen`` laid out one after the
        other and moved as a whole to end right where the suffix starts (``limit``), so that
        the newest blocks stay next to the question; their keys are re-rotated there. Of a
        block in ``offsets`` only those tokens are loaded (at their laid-out positions).
        ``extra`` free slots follow."""
        r = self.runner
        sink_tokens = self.sink.tokens
        placement = self.layouter.lay_out([c.meta.layout for c in chosen], sink_tokens)
        if placement.end > limit:
            raise PositionBudgetError(
                f"layer {layer}'s blocks end at {placement.end}, after the suffix at {limit}"
            )
        gap = limit - placement.end
        picks = [None if offsets is None else offsets.get(c.key) for c in chosen]
        sizes = [
            c.meta.tokens if p is None else int(p.numel())
            for c, p in zip(chosen, picks, strict=True)
        ]
        tokens = sum(sizes)
        capacity = sink_tokens + tokens + extra
        shape = (1, r.kv_heads, capacity, r.head_dim)
        keys = torch.empty(shape, dtype=r.dtype, device=r.device)
        values = torch.empty(shape, dtype=r.dtype, device=r.device)
        keys[0, :, :sink_tokens] = self.sink.keys[layer].to(r.device, r.dtype)
        values[0, :, :sink_tokens] = self.sink.values[layer].to(r.device, r.dtype)
        blocks: list[ContextBlock] = []
        if chosen:
            block_keys: list[torch.Tensor] = []
            block_values: list[torch.Tensor] = []
            block_deltas: list[torch.Tensor] = []
            at = sink_tokens
            for cand, new, pick, size in zip(
                chosen, placement.positions, picks, sizes, strict=True
            ):
                placed = new + gap
                if pick is not None:
                    placed = placed[:, pick]
                if size:
                    k, v = self.loader(cand, layer)
                    if pick is not None:
                        k, v = k[:, pick.to(k.device)], v[:, pick.to(v.device)]
                    block_keys.append(k.to(r.device, r.dtype))
                    block_values.append(v.to(r.device, r.dtype))
                    old = cand.meta.layout.positions
                    block_deltas.append(placed - (old if pick is None else old[:, pick]))
                blocks.append(
                    ContextBlock(cand, slice(at, at + size), cand.key in recent_keys, pick, placed)
                )
                at += size
            if block_keys:
                joined = r.shift_tokens(torch.cat(block_keys, dim=1), torch.cat(block_deltas, 1))
                keys[0, :, sink_tokens : sink_tokens + tokens] = joined
                values[0, :, sink_tokens : sink_tokens + tokens] = torch.cat(block_values, 1)
        return SlotLayer(keys, values, extent=sink_tokens + tokens), tuple(blocks)

    def _compact(
        self,
        slot_layer: SlotLayer,
        blocks: tuple[ContextBlock, ...],
        keep: torch.Tensor,
        extra: int,
    ) -> tuple[SlotLayer, tuple[ContextBlock, ...]]:
        """The buffer with only the ``keep`` context slots (the sink is always kept), so that
        the layer, and every decoding step after, attends over fewer keys."""
        r = self.runner
        picked = keep.nonzero().squeeze(1)
        kept = int(picked.numel())
        shape = (1, r.kv_heads, kept + extra, r.head_dim)
        keys = torch.empty(shape, dtype=r.dtype, device=r.device)
        values = torch.empty(shape, dtype=r.dtype, device=r.device)
        assert slot_layer.keys is not None and slot_layer.values is not None
        where = picked.to(r.device)
        keys[:, :, :kept] = slot_layer.keys.index_select(2, where)
        values[:, :, :kept] = slot_layer.values.index_select(2, where)
        out: list[ContextBlock] = []
        at = self.sink.tokens
        for block in blocks:
            local = keep[block.slots]
            size = int(local.sum())
            positions = None if block.positions is None else block.positions[:, local]
            offsets = block.token_offsets()[local]
            out.append(
                ContextBlock(
                    block.candidate, slice(at, at + size), block.recent, offsets, positions
                )
            )
            at += size
        return SlotLayer(keys, values, extent=kept), tuple(out)

    @torch.no_grad()
    def prefill(
        self,
        suffix: LMChunk,
        query_rows: slice,
        retriever: Retriever,
        *,
        max_new_tokens: int,
        position_limit: int,
    ) -> PreparedAnswer:
        """Run ``suffix`` (built at :meth:`start_position`) through every layer, each retrieving
        its blocks with ``retriever`` (built for this pass's candidates and ``top_k``)."""
        began = time.perf_counter()
        r = self.runner
        end_position = suffix.next_position + max_new_tokens
        if end_position > position_limit:
            raise PositionBudgetError(
                f"the answer needs {end_position} positions but the model has {position_limit}; "
                "lower memory.top_k or memory.recent_blocks"
            )
        rows = len(suffix)
        embeddings = r.position_embeddings(suffix.positions)
        hidden = suffix.embeds[None].to(device=r.device, dtype=r.dtype)
        start = int(suffix.positions.min()) if rows else suffix.next_position
        cache = SlotCache([])
        selections: list[tuple[Candidate, ...]] = []
        picked_by: dict[tuple[int, int], list[float]] = {}
        recent_keys = {c.key for c in self.recent}
        loaded: set[tuple[int, int, int]] = set()
        context_tokens = 0
        causal = torch.tril(torch.ones(rows, rows, dtype=torch.bool, device=r.device))
        compressor = self.compressor
        contexts: list[LayerContext | None] = []
        kept: list[torch.Tensor | None] = []
        previous: AttentionProbe | None = None
        for layer in range(r.num_layers):
            query = r.grouped_query(r.project(layer, r.normed(layer, hidden), "q")[:, query_rows])
            picks = retriever.select(layer, query)
            retrieved = [self.candidates[i] for i in picks.indices]
            for i, value in zip(picks.indices, picks.scores, strict=True):
                picked_by.setdefault(self.candidates[i].key, []).append(value)
            chosen = sorted([*retrieved, *self.recent], key=lambda c: c.order)
            selections.append(tuple(chosen))
            for cand in chosen:
                loaded.add((cand.stream_id, cand.meta.block_id, layer))
            extra = rows + max_new_tokens
            thinned = compressor.select_tokens(layer, chosen) if compressor.active else None
            slot_layer, blocks = self._assemble(layer, chosen, start, extra, recent_keys, thinned)
            view: LayerContext | None = None
            keep: torch.Tensor | None = None
            if compressor.active:
                view = self._view(layer, slot_layer, blocks, query_rows, rows)
                keep = compressor.prefill_layer(view, previous)
                if keep is not None:
                    keep = keep.cpu().clone()
                    keep[: self.sink.tokens] = True
                    if bool(keep.all()):
                        keep = None
                    else:
                        slot_layer, blocks = self._compact(slot_layer, blocks, keep, extra)
                        view = self._view(layer, slot_layer, blocks, query_rows, rows)
                        keep = None
            context = slot_layer.extent
            context_tokens = max(context_tokens, context)
            slot_layer.plan(slice(context, context + rows), context + rows)
            cache.add(slot_layer)
            visible = torch.ones(rows, context + rows, dtype=torch.bool, device=r.device)
            visible[:, context:] = causal
            contexts.append(view)
            kept.append(keep)
            layer_input = hidden
            hidden = r.run_layer(layer, hidden, embeddings, cache, r.additive_mask(visible))
            slot_layer.written = None
            if view is not None:
                previous = AttentionProbe(r, view, layer_input, embeddings, visible)
        logits = r.logits(hidden)
        evidence = self._evidence(picked_by, recent_keys)
        return PreparedAnswer(
            cache=cache,
            logits=logits,
            next_position=suffix.next_position,
            evidence=evidence,
            selections=tuple(selections),
            context_tokens=context_tokens,
            retrieval_s=time.perf_counter() - began,
            blocks_loaded=len({(s, b) for s, b, _ in loaded}),
            contexts=tuple(contexts),
            kept=tuple(kept),
        )

    def _view(
        self,
        layer: int,
        slot_layer: SlotLayer,
        blocks: tuple[ContextBlock, ...],
        query_rows: slice,
        rows: int,
    ) -> LayerContext:
        context = slot_layer.extent
        return LayerContext(
            layer=layer,
            step=None,
            cache=slot_layer,
            sink=slice(0, self.sink.tokens),
            blocks=blocks,
            context_slots=context,
            rows=slice(context, context + rows),
            question_rows=query_rows,
        )

    def _evidence(
        self, picked_by: dict[tuple[int, int], list[float]], recent_keys: set[tuple[int, int]]
    ) -> tuple[Moment, ...]:
        """The blocks the layers saw as the answer's moments, best first (stream names are
        the cameras')."""
        layers = self.runner.num_layers
        out: list[tuple[tuple[float, float, int, int], Moment]] = []
        for cand in [*self.candidates, *self.recent]:
            m = cand.meta
            if cand.key in recent_keys:
                score, relevance = 1.0, None
            elif cand.key in picked_by:
                hits = picked_by[cand.key]
                score, relevance = len(hits) / layers, sum(hits) / len(hits)
            else:
                continue
            moment = Moment(
                camera=m.stream,
                start_pts=m.pts_start,
                end_pts=m.pts_end,
                start_wall=m.wall_start,
                end_wall=m.wall_end,
                score=score,
                relevance=relevance,
                recent=cand.key in recent_keys,
                seq=m.seq,
            )
            out.append((cand.order, moment))
        out.sort(key=lambda pair: pair[0])  # ties in rank stay in time order
        return best_first(moment for _, moment in out)

    def decode(self, prepared: PreparedAnswer, options: DecodeOptions) -> Iterator[DecodeStep]:
        """Decode the answer over the per-layer contexts (each token appended to every layer;
        with a compressor, each layer sees what its prefill and step hooks left)."""
        r = self.runner
        cache = prepared.cache
        compressor = self.compressor
        steps = [0]

        @torch.no_grad()
        def feed(token: int, position: int) -> torch.Tensor:
            chunk = r.model.text_chunk([token], position)
            embeddings = r.position_embeddings(chunk.positions)
            hidden = chunk.embeds[None].to(device=r.device, dtype=r.dtype)
            previous: AttentionProbe | None = None
            for layer in range(r.num_layers):
                slot_layer = cache.layer(layer)
                extent = slot_layer.extent
                slot_layer.plan(slice(extent, extent + 1), extent + 1)
                mask: torch.Tensor | None = None
                visible: torch.Tensor | None = None
                base = prepared.contexts[layer] if prepared.contexts else None
                view: LayerContext | None = None
                if compressor.active and base is not None:
                    kept = prepared.kept[layer]
                    view = LayerContext(
                        layer=layer,
                        step=steps[0],
                        cache=slot_layer,
                        sink=base.sink,
                        blocks=base.blocks,
                        context_slots=base.context_slots,
                        rows=slice(extent, extent + 1),
                        question_rows=base.question_rows,
                        kept=kept,
                    )
                    keep = compressor.decode_layer(view, previous)
                    if kept is not None or keep is not None:
                        visible = torch.ones(1, extent + 1, dtype=torch.bool, device=r.device)
                        for narrowed in (kept, keep):
                            if narrowed is not None:
                                visible[:, : base.context_slots] &= narrowed.to(r.device)[None]
                        # one query row: attend over the kept slots gathered, not a mask
                        slot_layer.gather = visible[0].nonzero().squeeze(1)
                layer_input = hidden
                hidden = r.run_layer(layer, hidden, embeddings, cache, mask)
                slot_layer.written = None
                if view is not None:
                    previous = AttentionProbe(r, view, layer_input, embeddings, visible)
            steps[0] += 1
            return r.logits(hidden)

        return decode_tokens(r.model, prepared.logits, prepared.next_position, options, feed)
