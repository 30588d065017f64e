"""HoliTom's inner-LLM merging (NeurIPS 2025, ``cokeshao/HoliTom``,
``holitom/modeling_qwen2.py::Qwen2Model_holitom.forward``).

Once, at layer ``k`` (18 of 28 in the paper's scripts, scaled with depth, see
:func:`~.base.scaled_layer`): the retrieved blocks' tokens are scored by the attention the
question's last row gave them at layer ``k - 1`` (mean over heads); the top
``round(n * (1 - prune))`` are kept (``prune`` 0.5) and each dropped token is merged into its
most similar kept token by a running pairwise average, in index order, as the released code does
(``h_i <- (h_i + h_j) / 2``). Layers ``>= k`` then hold only the kept (merged) tokens, at their
original positions, in the prefill and in every decoding step.

Streaming adaptation (the memory holds blocks' keys and values, not their hidden states, and
layers after ``k`` attend over stored K/V rather than over a sequence that went through ``k``):
the merge averages each kept token's value with its dropped tokens' values and its key with
their keys rotated to the kept token's position (exact for RoPE: the average is then a key at
that position); similarity is the cosine of the tokens' values at layer ``k`` (concatenated over
KV heads: values carry no position). The keep-set and the assignment, chosen at layer ``k`` by
block and offset, are applied the same way to every later layer's own K/V; blocks layer
``k - 1`` did not score (per-layer retrieval) are kept whole, and a dropped token whose target
is not in a later layer's context is dropped without merging. The sink and text are never
touched. ``merge=False`` is HoliTom "w/o M" (keep-set only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stream_agent.memory.compression.base import (
    AttentionProbe,
    InContextCompressor,
    LayerContext,
    scaled_layer,
    visual_attention,
)
from stream_agent.memory.errors import MemoryConfigError
from stream_agent.memory.runner import LayerRunner

PAPER_DEPTH = 28

Token = tuple[int, int, int]  # stream id, block id, offset


@dataclass(frozen=True, slots=True)
class HoliTomSettings:
    """``prune``: share of the visual tokens dropped (merged) at the layer (0.5); ``layer``
    (None: 18 of 28 scaled); ``merge``: average dropped tokens into kept ones (True)."""

    prune: float = 0.5
    layer: int | None = None
    merge: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune < 1.0:
            raise MemoryConfigError(f"holitom.prune must be in [0, 1), got {self.prune!r}")
        if self.layer is not None and self.layer < 1:
            raise MemoryConfigError(f"holitom.layer must be >= 1, got {self.layer!r}")


class HoliTom(InContextCompressor):
    """HoliTom's once-at-layer-``k`` keep-and-merge (see the module docstring)."""

    name = "holitom"
    settings_class = HoliTomSettings

    @classmethod
    def build(cls, settings: object | None, runner: LayerRunner) -> InContextCompressor:
        assert settings is None or isinstance(settings, HoliTomSettings)
        settings = settings or HoliTomSettings()
        return cls(settings, runner.num_layers, runner)

    def __init__(self, settings: HoliTomSettings, depth: int, runner: LayerRunner) -> None:
        self.settings = settings
        self.runner = runner
        self.layer = min(depth - 1, settings.layer or scaled_layer(18, PAPER_DEPTH, depth))
        self._dropped: dict[tuple[int, int], torch.Tensor] | None = None
        self._target: dict[Token, Token] = {}
        #: (kept, scored) visual token counts at the scoring layer (tests, the benchmark).
        self.kept_counts: tuple[int, int] | None = None

    def prefill_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        if context.layer < self.layer:
            return None
        if context.layer == self.layer:
            if previous is None:
                return None
            self._choose(context, previous)
        if not self._dropped:
            return None
        return self._apply(context)

    def _choose(self, context: LayerContext, previous: AttentionProbe) -> None:
        scores = visual_attention(previous, slice(-1, None))
        # only tokens this layer holds are candidates
        held = {b.key: b for b in context.blocks}
        keys: list[tuple[int, int]] = []
        offsets: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for key, (offs, score, _) in scores.items():
            if key in held:
                keys.append(key)
                offsets.append(offs)
                values.append(score)
        count = sum(int(v.numel()) for v in values)
        keep = round(count * (1.0 - self.settings.prune))
        self.kept_counts = (keep, count)
        if not count or keep >= count:
            self._dropped = {}
            return
        flat = torch.cat(values)
        chosen = torch.zeros(count, dtype=torch.bool)
        chosen[flat.topk(keep).indices] = True
        dropped: dict[tuple[int, int], torch.Tensor] = {}
        at = 0
        for key, offs in zip(keys, offsets, strict=True):
            flags = torch.zeros(held[key].candidate.meta.tokens, dtype=torch.bool)
            flags[offs] = ~chosen[at : at + offs.numel()]
            at += offs.numel()
            dropped[key] = flags
        self._dropped = dropped
        if self.settings.merge:
            self._target = self._assign(context, dropped)

    def _slots(
        self, context: LayerContext, flags: dict[tuple[int, int], torch.Tensor]
    ) -> tuple[list[int], list[Token]]:
        """Buffer slots and token ids of the tokens ``flags`` mark, in slot order."""
        slots: list[int] = []
        tokens: list[Token] = []
        for block in context.blocks:
            marked = flags.get(block.key)
            if marked is None:
                continue
            offs = block.token_offsets()
            hit = marked[offs].nonzero().squeeze(1)
            slots.extend((block.slots.start + hit).tolist())
            tokens.extend((*block.key, int(o)) for o in offs[hit].tolist())
        return slots, tokens

    def _assign(
        self, context: LayerContext, dropped: dict[tuple[int, int], torch.Tensor]
    ) -> dict[Token, Token]:
        """Each dropped token's most similar (value cosine) kept block token at this layer."""
        kept_flags = {}
        for block in context.blocks:
            flags = dropped.get(block.key)
            kept_flags[block.key] = (
                ~flags
                if flags is not None
                else torch.ones(block.candidate.meta.tokens, dtype=torch.bool)
            )
        kept_slots, kept_tokens = self._slots(context, kept_flags)
        drop_slots, drop_tokens = self._slots(context, dropped)
        if not kept_slots or not drop_slots:
            return {}
        values = context.cache.values
        assert values is not None
        flat = values[0].transpose(0, 1).reshape(values.shape[2], -1).float()  # (slots, kvh*hd)
        kept_v = torch.nn.functional.normalize(flat[kept_slots], dim=-1)
        drop_v = torch.nn.functional.normalize(flat[drop_slots], dim=-1)
        best = (drop_v @ kept_v.T).argmax(dim=1).tolist()
        return {d: kept_tokens[b] for d, b in zip(drop_tokens, best, strict=True)}

    def _apply(self, context: LayerContext) -> torch.Tensor:
        """Merge (when set) and return this layer's keep-set."""
        assert self._dropped is not None
        keep = torch.ones(context.context_slots, dtype=torch.bool)
        slot_of: dict[Token, int] = {}
        position_of: dict[int, torch.Tensor] = {}
        drop_slots: list[int] = []
        drop_tokens: list[Token] = []
        for block in context.blocks:
            offs = block.token_offsets()
            flags = self._dropped.get(block.key)
            if flags is not None:
                local = flags[offs]
                keep[block.slots] = ~local
                hit = local.nonzero().squeeze(1)
                drop_slots.extend((block.slots.start + hit).tolist())
                drop_tokens.extend((*block.key, int(o)) for o in offs[hit].tolist())
            if self._target:
                for i, o in enumerate(offs.tolist()):
                    slot_of[(*block.key, o)] = block.slots.start + i
                if block.positions is not None:
                    for i in range(offs.numel()):
                        position_of[block.slots.start + i] = block.positions[:, i]
        if self._target and drop_slots:
            pairs = [
                (s, slot_of[self._target[t]])
                for s, t in zip(drop_slots, drop_tokens, strict=True)
                if t in self._target and self._target[t] in slot_of
            ]
            if pairs:
                self._merge(context, pairs, position_of)
        return keep

    def _merge(
        self,
        context: LayerContext,
        pairs: list[tuple[int, int]],
        position_of: dict[int, torch.Tensor],
    ) -> None:
        """``h_i <- (h_i + h_j) / 2`` for each (dropped j, kept i), j in slot order, in closed
        form: a target merged ``m`` times keeps ``2^-m`` of itself, its ``t``-th source (of
        ``m``) ``2^-(m - t + 1)``."""
        keys, values = context.cache.keys, context.cache.values
        assert keys is not None and values is not None
        sources = torch.tensor([j for j, _ in pairs])
        targets = torch.tensor([i for _, i in pairs])
        counts = torch.bincount(targets, minlength=keys.shape[2])
        # rank of each source among its target's sources (1-based, slot order)
        order = torch.argsort(targets, stable=True)
        ranks = torch.empty_like(targets)
        sorted_targets = targets[order]
        starts = torch.searchsorted(sorted_targets, sorted_targets, right=False)
        ranks[order] = torch.arange(len(pairs)) - starts + 1
        weights = 0.5 ** (counts[targets] - ranks + 1).double()
        own = 0.5 ** counts.double()
        src_k = keys[0][:, sources].float()  # (kvh, n, hd)
        if position_of:
            deltas = torch.stack(
                [position_of[int(i)] - position_of[int(j)] for j, i in pairs], dim=1
            )
            src_k = self.runner.shift_tokens(src_k, deltas)
        src_v = values[0][:, sources].float()
        w = weights.float().to(keys.device)[None, :, None]
        own_w = own.float().to(keys.device)[None, :, None]
        merged_k = keys[0].float() * own_w
        merged_v = values[0].float() * own_w
        merged_k.index_add_(1, targets.to(keys.device), src_k * w)
        merged_v.index_add_(1, targets.to(keys.device), src_v * w)
        touched = torch.unique(targets).to(keys.device)
        keys[0][:, touched] = merged_k[:, touched].to(keys.dtype)
        values[0][:, touched] = merged_v[:, touched].to(values.dtype)
