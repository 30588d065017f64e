"""DyCoke's stage 2: dynamic pruning of the retrieved visual KV while decoding (CVPR 2025,
``KD-TAO/DyCoke``, ``modeling_qwen2.py::PrunableDynamicCache``).

Prefill is whole. At each decoding step, before layer ``L`` runs (3 of 28 in the paper, scaled
with depth, see :func:`~.base.scaled_layer`), the new token's attention at layer ``L - 1``
(mean over heads) over the retrieved blocks' tokens is compared (cosine) with the previous
step's; when it falls under ``threshold`` (0.9; the first step always selects) the top
``floor(n * (1 - prune))`` tokens by that attention are selected, else the previous selection
stays. Every layer ``>= L`` then attends over the sink, the selected block tokens, the question
and the generated tokens, gathered from the full retrieved KV, which is never dropped, so a
token pruned at one step can come back at a later one (the paper's "dynamic pruning cache").

Deviation from the released code, on purpose: there, a step whose similarity is ``>= 0.9``
applies *no* pruning at all (the keep list stays unset), which looks unintended; this keeps the
previous selection, as the paper describes. Blocks layer ``L - 1`` did not hold (per-layer
retrieval) are kept whole in the layers that hold them. The sink and text are never pruned.

Streaming adaptation: the "visual span" is the retrieved (and recent) blocks' tokens, wherever
they sit in each layer's buffer, matched across layers by block and token offset.
"""

from __future__ import annotations

import math
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
from stream_agent.memory.runner import LayerRunner

PAPER_DEPTH = 28


@dataclass(frozen=True, slots=True)
class DyCokeSettings:
    """``prune``: share of the visual KV hidden at each step (0.7); ``layer``: the first pruned
    layer (None: 3 of 28 scaled); ``threshold``: re-select when the attention's cosine
    similarity to the previous step's falls under it (0.9)."""

    prune: float = 0.7
    layer: int | None = None
    threshold: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune < 1.0:
            raise MemoryConfigError(f"dycoke.prune must be in [0, 1), got {self.prune!r}")
        if self.layer is not None and self.layer < 1:
            raise MemoryConfigError(f"dycoke.layer must be >= 1, got {self.layer!r}")
        if not -1.0 <= self.threshold <= 1.0:
            raise MemoryConfigError(f"dycoke.threshold must be in [-1, 1], got {self.threshold!r}")


class DyCoke(InContextCompressor):
    """DyCoke's decode-time KV pruning (see the module docstring)."""

    name = "dycoke"
    settings_class = DyCokeSettings

    @classmethod
    def build(cls, settings: object | None, runner: LayerRunner) -> InContextCompressor:
        assert settings is None or isinstance(settings, DyCokeSettings)
        settings = settings or DyCokeSettings()
        return cls(settings, runner.num_layers)

    def __init__(self, settings: DyCokeSettings, depth: int) -> None:
        self.settings = settings
        self.layer = min(depth - 1, settings.layer or scaled_layer(3, PAPER_DEPTH, depth))
        self._step: int | None = None
        self._previous_attention: torch.Tensor | None = None
        self._selected: dict[tuple[int, int], torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}
        #: Decoding steps at which the selection was made anew (tests, the benchmark).
        self.reselections: list[int] = []
        #: Per reselection: (selected, scored) visual token counts.
        self.kept_counts: list[tuple[int, int]] = []

    def decode_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        if context.layer < self.layer:
            return None
        if context.layer == self.layer and previous is not None:
            self._score(previous, context.step)
        if not self._selected:
            return None
        mask = self._masks.get(context.layer)
        if mask is None:
            mask = selection_mask(context, self._selected)
            self._masks[context.layer] = mask
        return mask

    def _score(self, previous: AttentionProbe, step: int | None) -> None:
        scores = visual_attention(previous, None)
        if not scores:
            return
        attention = torch.cat([s for _, s, _ in scores.values()])
        similarity = 0.0
        if self._previous_attention is not None and self._previous_attention.shape == (
            attention.shape
        ):
            similarity = float(
                torch.nn.functional.cosine_similarity(attention, self._previous_attention, dim=0)
            )
        self._previous_attention = attention
        if self._selected and similarity >= self.settings.threshold:
            return
        count = attention.numel()
        keep = math.floor(count * (1.0 - self.settings.prune))
        chosen = torch.zeros(count, dtype=torch.bool)
        chosen[attention.topk(keep).indices] = True
        selected: dict[tuple[int, int], torch.Tensor] = {}
        at = 0
        for key, (offsets, values, size) in scores.items():
            flags = torch.ones(size, dtype=torch.bool)
            flags[offsets] = chosen[at : at + values.numel()]
            at += values.numel()
            selected[key] = flags
        self._selected = selected
        self._masks.clear()
        self.reselections.append(-1 if step is None else step)
        self.kept_counts.append((keep, count))
