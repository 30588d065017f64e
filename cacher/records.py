"""What the cacher returns: the hidden states of a frame and the statistics of how it got them.

Records holding tensors compare by identity (``eq=False``). Tensors in them live on the encoder's
device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

import torch

FrameKind = Literal["full", "reference", "selective", "reused"]
"""How a frame was encoded.

``full``: ``off`` mode, all layers, nothing cached; ``reference``: all layers, and the frame became
the stream's reference; ``selective``: some tokens recomputed per layer against the reference;
``reused``: no layer run, the reference's hidden states returned whole (``adaptive`` only).
"""

RefreshReason = Literal["first", "interval", "scene_change", "drift", "settled", "max_age", "shape"]
"""Why a reference frame was taken.

``first``: no reference yet (the stream's first frame, or the first after a reset);
``interval``: ``paper`` mode's every-N-th frame; ``scene_change``: in ``adaptive`` mode more than
the ceiling share of tokens changed at the encoder input; ``drift``: the mean similarity of the
tokens not counted as changed fell under ``drift_similarity``; ``settled``: tokens that differ from
the reference but no longer from the previous frame have cost ``settle_cost`` frames of recompute;
``max_age``: the reference has served ``max_age`` frames; ``shape``: the frame's token count,
rotary angles or mask differ from the reference's.
"""
REFRESH_REASONS: Final[tuple[str, ...]] = get_args(RefreshReason)


@dataclass(frozen=True, slots=True, eq=False)
class FrameStats:
    """Per-frame statistics, for metrics and as a free motion signal.

    - ``index``: the frame's number in its stream since the last reset (0-based).
    - ``reference_age``: frames since the reference this frame was compared with (0 on a
      reference frame).
    - ``recomputed_per_layer``: tokens recomputed at each layer (``tokens`` for a full layer).
    - ``similarity_per_layer``: mean similarity of the frame to the reference at each layer, as
      the selector measured it (``paper``: cosine of the keys; ``adaptive``: cosine of the
      layer-normalised inputs); empty when no layer was compared.
    - ``input_similarity``: ``1 - mean(change)``, the frame's similarity to the reference at the
      encoder input; ``None`` when ``change`` is.
    - ``recomputed``: ``(tokens,)`` bool, the tokens recomputed in at least one layer, in the
      encoder's token order (all True on a full frame, all False on a reused one).
    - ``change``: ``(tokens,)`` float32, each token's dissimilarity ``1 - cos`` at the encoder
      input (layer-normalised patch embeddings) to the reference it was compared with -- the
      reference before the refresh on a reference frame; ``None`` when there was none (first
      frame, ``off`` mode). A motion map that costs one layer norm.
    """

    stream_id: str
    index: int
    kind: FrameKind
    refresh_reason: RefreshReason | None
    tokens: int
    reference_age: int
    recomputed_per_layer: tuple[int, ...]
    similarity_per_layer: tuple[float, ...]
    input_similarity: float | None
    recomputed: torch.Tensor
    change: torch.Tensor | None

    @property
    def refreshed(self) -> bool:
        """Whether this frame became the stream's new reference."""
        return self.kind == "reference"

    @property
    def recomputed_share(self) -> float:
        """Recomputed token-layers over all token-layers (1.0 for a full frame, 0.0 reused)."""
        layers = len(self.recomputed_per_layer)
        if layers == 0 or self.tokens == 0:
            return 0.0
        return sum(self.recomputed_per_layer) / (layers * self.tokens)

    @property
    def mean_similarity(self) -> float | None:
        """Mean of :attr:`similarity_per_layer`, or ``None`` when no layer was compared."""
        if not self.similarity_per_layer:
            return None
        return sum(self.similarity_per_layer) / len(self.similarity_per_layer)


@dataclass(frozen=True, slots=True, eq=False)
class CachedEncoding:
    """One frame's hidden states at the requested indices, each ``(1, N, D)``, and its stats.

    ``hidden_states[i]`` is the hidden state with index ``keep[i]`` (0 = the encoder input, ``j`` =
    output of layer ``j``), the convention of :func:`cacher.layers.encoder_forward`, ready for a
    model's head (``VideoLLM.tokens_from_hidden``).
    """

    hidden_states: tuple[torch.Tensor, ...]
    keep: tuple[int, ...]
    stats: FrameStats


@dataclass(frozen=True, slots=True)
class CacherCounters:
    """Running totals of one stream since it was created (a reset does not clear them)."""

    frames: int = 0
    full_frames: int = 0
    reference_frames: int = 0
    selective_frames: int = 0
    reused_frames: int = 0
    resets: int = 0
    rejected_frames: int = 0
    token_layers: int = 0
    recomputed_token_layers: int = 0

    @property
    def recomputed_share(self) -> float:
        """Recomputed token-layers over all token-layers of all encoded frames."""
        return self.recomputed_token_layers / self.token_layers if self.token_layers else 0.0
