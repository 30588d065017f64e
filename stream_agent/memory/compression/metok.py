"""METok's stage 2 (and so its stage 3): hierarchical pruning of the retrieved visual tokens in
the prefill (EMNLP 2025, ``mnyuew/METok``, ``modeling_qwen2.py::Qwen2Model.forward``).

At each pruning layer ``p`` (3, 10 and 19 of 28 in the released code, scaled with depth, see
:func:`~.base.scaled_layer`) the retrieved blocks' tokens are scored by the attention they
received from the question's rows at layer ``p - 1`` (mean over those rows and the heads), and
each *event* keeps its quota of its best tokens; layers from ``p`` on load, re-rotate and attend
over the survivors only (at their original positions), in the prefill and in every decoding
step (METok's stage 3: the KV of deep layers holds few or no visual tokens).

Quotas, as the released code with ``ratio = 0.76`` (drop shares here, so that all-zero shares
are the uncompressed pass): a *key* unit keeps ``ceil((1 - prune) * n)`` of its ``n`` current
tokens at every pruning layer but the last, where it drops ``deep_prune`` (1.0: all); a
non-key unit keeps ``ceil((1 - non_key_prune) * n)`` at the first pruning layer (0.62: 38%) and
drops ``deep_prune`` at the later ones. A unit that keeps anything keeps at least one token.

Streaming adaptation of the events (stage 1 cuts the whole video into events by frame
similarity, before the LLM; here the memory's retrieval already chose the blocks): an event is a
run of consecutive blocks of one stream in the layer's context; the ``key_events`` (3) events
whose best token got the most attention are key events, and the block that *starts* an event is
a key unit too (stage 1 gives an event's key frames the finer stride: a new event's first block
is what a question about it needs most). Blocks layer ``p - 1`` did not hold are kept until a
pruning layer that scored them. The sink and text are never pruned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from stream_agent.memory.compression.base import (
    AttentionProbe,
    InContextCompressor,
    LayerContext,
    scaled_layer,
    selection_mask,
    visual_attention,
)
from stream_agent.memory.errors import MemoryConfigError
from stream_agent.memory.records import Candidate
from stream_agent.memory.runner import LayerRunner

PAPER_DEPTH = 28
PAPER_LAYERS = (3, 10, 19)


@dataclass(frozen=True, slots=True)
class METokSettings:
    """See the module docstring; ``layers`` None: (3, 10, 19) of 28 scaled."""

    prune: float = 0.24
    non_key_prune: float = 0.62
    deep_prune: float = 1.0
    key_events: int = 3
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("prune", "non_key_prune", "deep_prune"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise MemoryConfigError(f"metok.{name} must be in [0, 1], got {value!r}")
        if self.key_events < 0:
            raise MemoryConfigError(f"metok.key_events must be >= 0, got {self.key_events!r}")
        if self.layers is not None:
            if not self.layers or any(p < 1 for p in self.layers):
                raise MemoryConfigError("metok.layers must be layer indices >= 1")
            object.__setattr__(self, "layers", tuple(sorted(set(self.layers))))


def _quota(n: int, drop: float) -> int:
    if drop <= 0.0:
        return n
    if drop >= 1.0:
        return 0
    return min(n, max(1, math.ceil((1.0 - drop) * n)))


class METok(InContextCompressor):
    """METok's prefill pruning at a few layers (see the module docstring)."""

    name = "metok"
    settings_class = METokSettings

    @classmethod
    def build(cls, settings: object | None, runner: LayerRunner) -> InContextCompressor:
        assert settings is None or isinstance(settings, METokSettings)
        settings = settings or METokSettings()
        return cls(settings, runner.num_layers)

    def __init__(self, settings: METokSettings, depth: int) -> None:
        self.settings = settings
        layers = settings.layers or tuple(scaled_layer(p, PAPER_DEPTH, depth) for p in PAPER_LAYERS)
        self.layers = tuple(sorted({p for p in layers if p < depth}))
        #: Per block: keep flags over its tokens (blocks never scored are absent: whole).
        self._keep: dict[tuple[int, int], torch.Tensor] = {}
        #: Per pruning layer: (kept, scored) visual token counts (tests, the benchmark).
        self.kept_counts: dict[int, tuple[int, int]] = {}

    def select_tokens(
        self, layer: int, chosen: Sequence[Candidate]
    ) -> Mapping[tuple[int, int], torch.Tensor] | None:
        if not self._keep:
            return None
        out = {}
        for cand in chosen:
            flags = self._keep.get(cand.key)
            if flags is not None:
                out[cand.key] = flags.nonzero().squeeze(1)
        return out

    def prefill_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        if context.layer not in self.layers or previous is None:
            return None
        s = self.settings
        stage = self.layers.index(context.layer)
        last = stage == len(self.layers) - 1
        scores = visual_attention(previous, previous.context.question_rows)
        held = [b for b in context.blocks if b.key in scores]
        if not held:
            return None
        # token scores of this layer's blocks, by offset
        by_offset: dict[tuple[int, int], torch.Tensor] = {}
        for key, (offsets, values, size) in scores.items():
            full = torch.full((size,), float("nan"))
            full[offsets] = values
            by_offset[key] = full
        # events: runs of consecutive blocks of one stream
        events: list[list[int]] = []
        for i, block in enumerate(held):
            prev = held[i - 1].candidate if i else None
            cand = block.candidate
            if (
                prev is None
                or prev.stream_id != cand.stream_id
                or cand.meta.block_id != prev.meta.block_id + 1
            ):
                events.append([])
            events[-1].append(i)

        def best(event: list[int]) -> float:
            tops = []
            for i in event:
                b = held[i]
                v = by_offset[b.key][b.token_offsets()]
                v = v[~v.isnan()]
                if v.numel():
                    tops.append(float(v.max()))
            return max(tops, default=float("-inf"))

        ranked = sorted(range(len(events)), key=lambda e: best(events[e]), reverse=True)
        key_events = set(ranked[: s.key_events])
        kept_total = scored_total = 0
        for e, event in enumerate(events):
            units = [[event[0]], event[1:]]
            for u, unit in enumerate(units):
                if not unit:
                    continue
                is_key = e in key_events or u == 0
                if is_key:
                    drop = s.deep_prune if last else s.prune
                else:
                    drop = s.non_key_prune if stage == 0 else s.deep_prune
                tokens: list[tuple[tuple[int, int], int, float]] = []
                for i in unit:
                    b = held[i]
                    for o in b.token_offsets().tolist():
                        v = float(by_offset[b.key][o])
                        if not math.isnan(v):
                            tokens.append((b.key, o, v))
                keep = _quota(len(tokens), drop)
                kept_total += keep
                scored_total += len(tokens)
                if keep == len(tokens):
                    continue
                tokens.sort(key=lambda t: t[2], reverse=True)
                for key, o, _ in tokens[keep:]:
                    flags = self._keep.get(key)
                    if flags is None:
                        size = next(b for b in held if b.key == key).candidate.meta.tokens
                        flags = torch.ones(size, dtype=torch.bool)
                        self._keep[key] = flags
                    flags[o] = False
        self.kept_counts[context.layer] = (kept_total, scored_total)
        if not self._keep:
            return None
        return selection_mask(context, self._keep)
