"""Records the memory takes and hands out: small frozen dataclasses, no loose dicts.

An answer's records (:class:`~stream_agent.answers.AnswerDelta`, ``AnswerFinal`` with its
``Moment``s and ``AnswerTimings``) are the project's shared ones, :mod:`stream_agent.answers`:
the memory yields what the engine delivers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stream_agent.memory.errors import QuestionError
from stream_agent.memory.layout import BlockLayout


@dataclass(frozen=True, slots=True)
class FrameStamp:
    """Where a block comes from: the frame's sequence number and timestamps.

    ``pts`` is stream seconds, ``wall`` Unix seconds, both of the block's first frame; the ``_end``
    values are of its last frame (a block may span several frames, e.g. Qwen2-VL's two) and
    default to the start.
    """

    seq: int
    pts: float
    wall: float
    pts_end: float | None = None
    wall_end: float | None = None

    @property
    def end_pts(self) -> float:
        return self.pts if self.pts_end is None else self.pts_end

    @property
    def end_wall(self) -> float:
        return self.wall if self.wall_end is None else self.wall_end


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Bounds (Unix seconds, inclusive; None = open) on the wall time of retrievable blocks: a
    block is used only if its whole span (first to last frame) lies inside them."""

    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise QuestionError(
                f"the time range starts ({self.since}) after it ends ({self.until}); swap them"
            )


@dataclass(frozen=True, slots=True)
class BlockMeta:
    """One stored block, as the index records it.

    Its keys are stored post-RoPE at the positions it was encoded at, ``layout.positions``;
    ``layout`` also says how to lay it out elsewhere (:mod:`~stream_agent.memory.layout`).
    ``segment``/``offset``/``length`` locate its bytes; ``crcs`` hold one CRC-32 per layer
    slice.
    """

    stream: str
    block_id: int
    seq: int
    pts_start: float
    pts_end: float
    wall_start: float
    wall_end: float
    tokens: int
    segment: int
    offset: int
    length: int
    crcs: tuple[int, ...]
    layout: BlockLayout

    @property
    def span(self) -> int:
        """Positions the block advanced the sequence by when encoded."""
        return self.layout.span

    @property
    def key_base(self) -> int:
        """The position the block started at when encoded."""
        return self.layout.start


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


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One stream's memory, for metrics: sizes and the newest moment it holds."""

    stream: str
    blocks: int
    tokens: int
    window_tokens: int
    ram_bytes: int
    disk_bytes: int
    frames_encoded: int
    oldest_wall: float | None
    last_pts: float | None
    last_wall: float | None


@dataclass(frozen=True, slots=True, eq=False)
class EncodedBlock:
    """What encoding one block produced: its keys/values per layer (post-RoPE, rotated at
    ``layout.positions``), each ``(layers, kv_heads, tokens, head_dim)``, its representative
    keys ``(layers, kv_heads * head_dim)`` (mean pre-RoPE key) and its embedding sketch
    ``(vectors, hidden)``."""

    keys: torch.Tensor
    values: torch.Tensor
    rep_keys: torch.Tensor
    sketch: torch.Tensor
    layout: BlockLayout
