"""The interface of in-context compression: what each layer of an answer attends to.

The answer pass (:mod:`~stream_agent.memory.answer`) runs the question's suffix, then every
generated token, through the LLM one decoder layer at a time, each layer over its own context
buffer: the sink, then the blocks that layer retrieved plus the recent ones (time order), then
the suffix and the generated tokens. An :class:`InContextCompressor` sits between block
selection/assembly and the layer's attention: before a layer runs, it is shown that layer's
:class:`LayerContext` (the buffer's K/V, which slots hold which block, which rows are the
question's) and an :class:`AttentionProbe` of the layer before (its attention weights from the
rows it just ran, computed on demand), and returns which context slots the layer may see. It
may also edit the layer's context K/V in place (the buffer is the answer's own copy; the stored
blocks are never touched). Pruned slots keep their positions (keys are already rotated), so
nothing is re-laid out; a hidden slot gets no attention at all, exactly as if it had been cut
from the buffer, and that is what the pass does: it compacts a pruned layer's buffer to the
kept slots before the layer runs (so the layer and every decoding step attend over fewer keys,
and the dropped K/V is freed), and it gathers a decoding step's keep-set rather than masking.
Before a layer's context is even assembled, :meth:`InContextCompressor.select_tokens` may name
the tokens of each block the layer needs (a keep-set carried from an earlier layer), so that
the rest are not loaded or re-rotated at all; :attr:`ContextBlock.offsets` then says which of
a block's tokens its slots hold. The probe recomputes the weights
(the library's fused attention kernels do not return them) with the layer's own modules.

Hooks (one compressor instance per answer, so it may keep state across layers and steps):

- :meth:`InContextCompressor.prefill_layer`: per layer, once, before the layer runs the
  question's suffix. Its keep-set also holds for that layer while decoding.
- :meth:`InContextCompressor.decode_layer`: per decoding step, per layer, before the layer runs
  the new token; its keep-set holds for that step only (on top of the prefill one).

How the three methods map onto it (:mod:`.dycoke`, :mod:`.holitom`, :mod:`.metok`).
Per-layer retrieval means neighbouring layers may hold different blocks, so a method that
scores at one layer and prunes at another carries its scores by block and offset
(``ContextBlock.key`` plus the token's offset, ``ContextBlock.token_offsets``); blocks the
scoring layer did not hold are kept.

- **DyCoke** (stage 2, decode-time KV pruning from layer ``L``): in ``decode_layer`` for layer
  ``L``, ``previous`` is layer ``L - 1`` at this step; take the new token's attention over the
  visual slots (``previous.weights()``: one row; mean over heads; the slots of
  ``previous.context.blocks``), compare it (cosine) with the previous step's (kept on the
  instance), re-select the top ``(1 - P)`` visual tokens when it changed (< 0.9; else keep the
  previous selection), and return that keep-set, mapped onto each layer's slots, for every
  layer ``>= L`` at this step (layers ``< L`` return None). The stored K/V is never dropped, so
  pruned tokens can come back at later steps, as in the paper.
- **HoliTom** (inner-LLM merge, once at layer ``k``): in ``prefill_layer`` for layer ``k``,
  score the visual tokens by the last suffix row's attention at layer ``k - 1``
  (``previous.weights(rows=slice(-1, None))``, mean over heads), keep the top ``1 - r``, merge
  each dropped token into its most similar kept one by averaging their keys and values in
  this layer's buffer (``context.cache.keys`` / ``values``, slots of ``context.blocks``) and
  return the keep-set; for the layers after ``k`` repeat the keep-set (by block and offset)
  and the merge on their own buffers. The keep-sets hold while decoding.
- **METok** (stage 2, prefill pruning at layers ``p1 < p2 < ...``): in ``prefill_layer`` for
  each pruning layer ``p``, score the visual tokens by the attention they receive from the
  question's rows at layer ``p - 1`` (``previous.weights(rows=previous.context.question_rows)``
  averaged over rows and heads), keep each event's quota (events: runs of consecutive blocks
  in ``context.blocks``), and return the keep-set, carried to the layers up to the next
  pruning layer and narrowed there. The keep-sets hold while decoding (METok's stage 3).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from stream_agent.memory.cache import SlotLayer
from stream_agent.memory.records import Candidate
from stream_agent.memory.runner import LayerRunner, rotate_half


@dataclass(frozen=True, slots=True, eq=False)
class ContextBlock:
    """One block in a layer's context buffer: which candidate, at which slots.

    ``offsets`` are the block's token offsets the slots hold, in order (None: all of them;
    a compressor that thinned the block, see :meth:`InContextCompressor.select_tokens`, leaves
    fewer); ``positions`` ``(P, len(slots))`` the positions its keys are rotated at here.
    """

    candidate: Candidate
    slots: slice
    recent: bool
    offsets: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.candidate.key

    def token_offsets(self) -> torch.Tensor:
        """The block's token offsets held at :attr:`slots` (long, CPU)."""
        if self.offsets is not None:
            return self.offsets
        return torch.arange(self.slots.stop - self.slots.start)


@dataclass(frozen=True, slots=True, eq=False)
class LayerContext:
    """One layer's context at one point of the answer pass.

    ``step`` is None during the question's prefill, else the decoding step (0: the first
    generated token). ``cache`` is the layer's buffer ``(1, kv_heads, capacity, head_dim)``
    (post-RoPE keys, values); slots ``sink`` hold the attention sink, ``blocks`` the retrieved
    and recent blocks (time order) up to ``context_slots``; ``rows`` are the slots of the rows
    the layer runs now (the suffix in the prefill, the new token in a step), ``question_rows``
    the question's own rows as offsets into the suffix (for the query scores). ``kept``: the
    prefill keep-set still to apply while decoding (None: the pass compacted the buffer to it,
    which it always does today).
    """

    layer: int
    step: int | None
    cache: SlotLayer
    sink: slice
    blocks: tuple[ContextBlock, ...]
    context_slots: int
    rows: slice
    question_rows: slice
    kept: torch.Tensor | None = None


class AttentionProbe:
    """The attention weights a layer computed for the rows it ran, recomputed on demand from
    its input (only a compressor that asks pays for it): ``softmax(q . k / sqrt(d) + mask)``
    with the layer's own projections, rotary embedding and mask, over its whole buffer, as the
    library's eager attention computes them."""

    def __init__(
        self,
        runner: LayerRunner,
        context: LayerContext,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        visible: torch.Tensor | None,
    ) -> None:
        self.runner = runner
        self.context = context
        self._hidden = hidden
        self._embeddings = position_embeddings
        self._visible = visible

    @torch.no_grad()
    def weights(self, rows: slice | None = None) -> torch.Tensor:
        """Float32 ``(heads, len(rows), extent)`` attention probabilities of ``rows`` (offsets
        into the rows the layer ran; None: all) over the layer's buffer slots ``[0, extent)``."""
        r = self.runner
        layer = self.context.layer
        picked = rows or slice(None)
        hidden = self._hidden[:, picked]
        queries = r.project(layer, r.normed(layer, hidden), "q")[0].transpose(0, 1).float()
        cos, sin = (e[:, picked].float() for e in self._embeddings)
        queries = queries * cos + rotate_half(queries) * sin
        cache = self.context.cache
        extent = cache.extent
        assert cache.keys is not None
        keys = cache.keys[0, :, :extent].float().repeat_interleave(r.group, dim=0)
        scaling = float(getattr(r.layers[layer].self_attn, "scaling", r.head_dim**-0.5))
        scores = queries @ keys.transpose(1, 2) * scaling
        if self._visible is not None:
            visible = self._visible[picked].to(scores.device)
            scores = scores.masked_fill(~visible[None], float("-inf"))
        return torch.softmax(scores, dim=-1)


class InContextCompressor(abc.ABC):
    """One answer's in-context compression (see the module docstring). The base keeps all."""

    name: ClassVar[str]
    #: The method's settings record (a frozen dataclass; None: it takes none).
    settings_class: ClassVar[type | None] = None

    @classmethod
    def build(cls, settings: object | None, runner: LayerRunner) -> InContextCompressor:
        """One answer's instance, for ``runner``'s model."""
        return cls()

    def select_tokens(
        self, layer: int, chosen: Sequence[Candidate]
    ) -> Mapping[tuple[int, int], torch.Tensor] | None:
        """Before layer ``layer``'s context is assembled from ``chosen`` (time order): the
        token offsets (ascending, long) of each block (by :attr:`Candidate.key`) the layer
        needs, for a block the compressor already thinned at an earlier layer (a block left out
        is assembled whole; an empty tensor leaves it out). The pass then loads, re-rotates
        and attends over those tokens only. None: every block whole."""
        return None

    def prefill_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        """Before layer ``context.layer`` runs the question's suffix: a boolean
        ``(context.context_slots,)`` of the context slots it may see (the sink's and the
        blocks'), or None for all. ``previous``: the layer before's probe (None at layer 0)."""
        return None

    def decode_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        """Before layer ``context.layer`` runs decoding step ``context.step``: as
        :meth:`prefill_layer`, for this step only (intersected with ``context.kept``);
        ``previous`` is the layer before at this step."""
        return None

    @property
    def active(self) -> bool:
        """False when the compressor never narrows anything (the pass then skips building
        contexts and probes, and decodes without a mask)."""
        return True


#: Per block (by key): its held token offsets, their scores, and the block's token count.
BlockScores = dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, int]]


def block_scores(context: LayerContext, slot_scores: torch.Tensor) -> BlockScores:
    """Per block of ``context``: its held token offsets and their scores, read from
    ``slot_scores`` (one per buffer slot)."""
    out = {}
    for block in context.blocks:
        out[block.key] = (
            block.token_offsets(),
            slot_scores[block.slots].float().cpu(),
            block.candidate.meta.tokens,
        )
    return out


def selection_mask(
    context: LayerContext, selected: Mapping[tuple[int, int], torch.Tensor]
) -> torch.Tensor:
    """A boolean ``(context.context_slots,)`` keep-set from per-block keep flags (by key, one
    flag per token offset of the whole block): the sink and blocks not in ``selected`` kept."""
    keep = torch.ones(context.context_slots, dtype=torch.bool)
    for block in context.blocks:
        flags = selected.get(block.key)
        if flags is not None:
            keep[block.slots] = flags[block.token_offsets()]
    return keep


def scaled_layer(paper_layer: int, paper_depth: int, depth: int) -> int:
    """A layer index of the paper's ``paper_depth``-layer model scaled to ``depth`` layers:
    ``round(paper_layer * depth / paper_depth)``, clamped to ``[1, depth - 1]`` (a method needs
    a layer before it to score with, and one to act on). LLaVA-OV-0.5B's 24 layers: DyCoke's
    3 stays 3, HoliTom's 18 becomes 15, METok's (3, 10, 19) become (3, 9, 16)."""
    return max(1, min(depth - 1, round(paper_layer * depth / paper_depth)))


def visual_attention(probe: AttentionProbe, rows: slice | None) -> BlockScores:
    """The attention the blocks' tokens of ``probe``'s layer received from ``rows`` (mean over
    rows and heads), per block: ``{key: (offsets, scores)}``."""
    weights = probe.weights(rows=rows)  # (heads, rows, extent)
    return block_scores(probe.context, weights.mean(dim=(0, 1)))
