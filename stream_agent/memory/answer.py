"""Answering from the memory: per-layer retrieval in one layer-by-layer pass, then decoding.

The prompt suffix (the family's end-of-video tokens, the question and the opening of the
assistant's turn) runs through the LLM one decoder layer at a time. At layer ``l``:

1. its pre-RoPE queries of the question's rows are averaged (and folded onto the KV heads);
2. the dot product with every candidate block's representative key (its mean pre-RoPE key at
   layer ``l``) scores the blocks, and the ``top_k`` best are retrieved (ReKV);
3. layer ``l``'s context is assembled: the sink, then the retrieved blocks and the stream's
   recent blocks in time order, laid out one after the other as one video (video steps
   renumbered from 0, see :mod:`~.layout`) that ends where the suffix starts, each block's
   stored keys re-rotated there;
4. the library's decoder layer runs the suffix over that context (writing the suffix's own K/V
   after it), giving layer ``l + 1``'s input, whose queries depend on what layer ``l`` saw.

The suffix starts at the same position in every layer: after the longest selection any layer
could lay out (the recent blocks and the ``top_k`` candidates of the largest spans). When the
window held the whole stream and ``top_k`` covers every block, each block lands at the position
it was encoded at, so the context equals the uncompressed prompt's.

With ``"embedding"`` retrieval one selection, by max-sim of the question's input embeddings
against the blocks' embedding sketches, serves every layer (ReKV's external retrieval).

The question's K/V lives only in this answer's cache and is dropped with it; the stream's memory
is not changed by a question.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from stream_agent.memory.cache import SlotCache, SlotLayer
from stream_agent.memory.errors import PositionBudgetError
from stream_agent.memory.layout import Layouter
from stream_agent.memory.records import BlockMeta, Evidence
from stream_agent.memory.runner import LayerRunner
from stream_agent.memory.window import SinkKV
from stream_agent.models.base import decode_tokens
from stream_agent.models.records import DecodeOptions, DecodeStep, LMChunk

#: Loads one layer of one block: ``(keys, values)`` each ``(kv_heads, tokens, head_dim)``.
LayerLoader = Callable[["Candidate", int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """A block an answer may use, with the stream it belongs to."""

    stream_id: int
    meta: BlockMeta

    @property
    def order(self) -> tuple[float, float, int, int]:
        """Time order across streams: wall time, then pts, stream and block id."""
        m = self.meta
        return (m.wall_start, m.pts_start, self.stream_id, m.block_id)

    @property
    def key(self) -> tuple[int, int]:
        return (self.stream_id, self.meta.block_id)


@dataclass(frozen=True, slots=True, eq=False)
class PreparedAnswer:
    """The question prefilled over its retrieved context, ready to decode.

    ``selections[l]`` are the blocks layer ``l`` saw (time order); ``context_tokens`` the largest
    number of cached tokens in a layer before the suffix.
    """

    cache: SlotCache
    logits: torch.Tensor
    next_position: int
    evidence: tuple[Evidence, ...]
    selections: tuple[tuple[Candidate, ...], ...]
    context_tokens: int
    retrieval_s: float
    blocks_loaded: int
    notes: tuple[str, ...] = ()


class AnswerPass:
    """One question's retrieval, prefill and decoding (see the module docstring)."""

    def __init__(
        self,
        runner: LayerRunner,
        sink: SinkKV,
        *,
        candidates: Sequence[Candidate],
        candidate_keys: torch.Tensor,
        recent: Sequence[Candidate],
        top_k: int,
        loader: LayerLoader,
    ) -> None:
        self.runner = runner
        self.sink = sink
        self.candidates = list(candidates)
        self.keys = candidate_keys.float()
        self.recent = sorted(recent, key=lambda c: c.order)
        self.top_k = top_k
        self.loader = loader
        self.layouter = Layouter(runner.model)
        #: Scores of one retrieval shared by every layer (embedding retrieval), whose best
        #: ``shared_count`` blocks every layer takes before filling ``top_k`` with its own picks
        #: (ReKV's internal retrieval); None: internal retrieval only.
        self.shared_scores: torch.Tensor | None = None
        self.shared_count = 0

    def start_position(self) -> int:
        """Where the suffix starts: after the longest selection any layer could lay out (the
        recent blocks and the ``top_k`` candidates of the largest spans), so that every layer's
        blocks fit before it; when every block is selected, where the stream's next block
        would have gone."""
        widest = sorted(self.candidates, key=lambda c: c.meta.span, reverse=True)[: self.top_k]
        chosen = sorted([*widest, *self.recent], key=lambda c: c.order)
        return self.layouter.lay_out([c.meta.layout for c in chosen], self.sink.tokens).end

    def _select(self, layer: int, query: torch.Tensor) -> tuple[list[int], list[float]]:
        """Indices (into the candidates) of the blocks layer ``layer`` retrieves, with the score
        that picked each: the shared (embedding) score for the first :attr:`shared_count`, then
        the layer's own (its mean question query . the block's mean key) for the rest."""
        count = len(self.candidates)
        if count == 0 or self.top_k == 0:
            return [], []
        picked: list[int] = []
        values: list[float] = []
        shared = 0 if self.shared_scores is None else min(self.shared_count, self.top_k)
        if shared:
            assert self.shared_scores is not None
            top = torch.topk(self.shared_scores, min(shared, count))
            picked += top.indices.tolist()
            values += top.values.tolist()
        own = min(self.top_k - len(picked), count - len(picked))
        if own > 0:
            scores = self.keys[:, layer] @ query.to(self.keys.device)
            if picked:
                scores[torch.tensor(picked)] = float("-inf")
            top = torch.topk(scores, own)
            picked += top.indices.tolist()
            values += top.values.tolist()
        return picked, values

    def _assemble(
        self, layer: int, chosen: Sequence[Candidate], limit: int, extra: int
    ) -> SlotLayer:
        """Layer ``layer``'s context buffer: the sink, then ``chosen`` laid out one after the
        other and moved as a whole to end right where the suffix starts (``limit``), so that
        the newest blocks stay next to the question; their keys are re-rotated there. ``extra``
        free slots follow."""
        r = self.runner
        sink_tokens = self.sink.tokens
        tokens = sum(c.meta.tokens for c in chosen)
        capacity = sink_tokens + tokens + extra
        shape = (1, r.kv_heads, capacity, r.head_dim)
        keys = torch.empty(shape, dtype=r.dtype, device=r.device)
        values = torch.empty(shape, dtype=r.dtype, device=r.device)
        keys[0, :, :sink_tokens] = self.sink.keys[layer].to(r.device, r.dtype)
        values[0, :, :sink_tokens] = self.sink.values[layer].to(r.device, r.dtype)
        placement = self.layouter.lay_out([c.meta.layout for c in chosen], sink_tokens)
        if placement.end > limit:
            raise PositionBudgetError(
                f"layer {layer}'s blocks end at {placement.end}, after the suffix at {limit}"
            )
        if chosen:
            block_keys: list[torch.Tensor] = []
            block_values: list[torch.Tensor] = []
            for cand in chosen:
                k, v = self.loader(cand, layer)
                block_keys.append(k.to(r.device, r.dtype))
                block_values.append(v.to(r.device, r.dtype))
            gap = limit - placement.end
            deltas = torch.cat(
                [
                    new + gap - cand.meta.layout.positions
                    for new, cand in zip(placement.positions, chosen, strict=True)
                ],
                dim=1,
            )
            joined = r.shift_tokens(torch.cat(block_keys, dim=1), deltas)
            keys[0, :, sink_tokens : sink_tokens + tokens] = joined
            values[0, :, sink_tokens : sink_tokens + tokens] = torch.cat(block_values, dim=1)
        return SlotLayer(keys, values, extent=sink_tokens + tokens)

    @torch.no_grad()
    def prefill(
        self, suffix: LMChunk, query_rows: slice, *, max_new_tokens: int, position_limit: int
    ) -> PreparedAnswer:
        """Run ``suffix`` (built at :meth:`start_position`) through every layer with retrieval."""
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
        for layer in range(r.num_layers):
            query = r.grouped_query(r.project(layer, r.normed(layer, hidden), "q")[:, query_rows])
            picked, values = self._select(layer, query)
            retrieved = [self.candidates[i] for i in picked]
            for i, value in zip(picked, values, strict=True):
                picked_by.setdefault(self.candidates[i].key, []).append(value)
            chosen = sorted([*retrieved, *self.recent], key=lambda c: c.order)
            selections.append(tuple(chosen))
            for cand in chosen:
                loaded.add((cand.stream_id, cand.meta.block_id, layer))
            slot_layer = self._assemble(layer, chosen, start, rows + max_new_tokens)
            context = slot_layer.extent
            context_tokens = max(context_tokens, context)
            slot_layer.plan(slice(context, context + rows), context + rows)
            cache.add(slot_layer)
            visible = torch.ones(rows, context + rows, dtype=torch.bool, device=r.device)
            visible[:, context:] = causal
            hidden = r.run_layer(layer, hidden, embeddings, cache, r.additive_mask(visible))
            slot_layer.written = None
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
        )

    def _evidence(
        self, picked_by: dict[tuple[int, int], list[float]], recent_keys: set[tuple[int, int]]
    ) -> tuple[Evidence, ...]:
        layers = self.runner.num_layers
        out: list[tuple[tuple[float, float, int, int], Evidence]] = []
        for cand in [*self.candidates, *self.recent]:
            m = cand.meta
            if cand.key in recent_keys:
                score, relevance = 1.0, None
            elif cand.key in picked_by:
                hits = picked_by[cand.key]
                score, relevance = len(hits) / layers, sum(hits) / len(hits)
            else:
                continue
            out.append(
                (
                    cand.order,
                    Evidence(
                        stream=m.stream,
                        seq=m.seq,
                        pts_start=m.pts_start,
                        pts_end=m.pts_end,
                        wall_start=m.wall_start,
                        wall_end=m.wall_end,
                        score=score,
                        relevance=relevance,
                        recent=cand.key in recent_keys,
                    ),
                )
            )
        out.sort(key=lambda pair: pair[0])
        return tuple(e for _, e in out)

    def decode(self, prepared: PreparedAnswer, options: DecodeOptions) -> Iterator[DecodeStep]:
        """Decode the answer over the per-layer contexts (each token appended to every layer)."""
        r = self.runner
        cache = prepared.cache

        @torch.no_grad()
        def feed(token: int, position: int) -> torch.Tensor:
            chunk = r.model.text_chunk([token], position)
            embeddings = r.position_embeddings(chunk.positions)
            hidden = chunk.embeds[None].to(device=r.device, dtype=r.dtype)
            for layer in range(r.num_layers):
                slot_layer = cache.layer(layer)
                extent = slot_layer.extent
                slot_layer.plan(slice(extent, extent + 1), extent + 1)
                hidden = r.run_layer(layer, hidden, embeddings, cache, None)
                slot_layer.written = None
            return r.logits(hidden)

        return decode_tokens(r.model, prepared.logits, prepared.next_position, options, feed)
