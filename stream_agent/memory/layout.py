"""Where blocks sit in the sequence: laying blocks out, for encoding, re-basing and answering.

A block is either a *video step* (visual tokens of one step, with the family's per-step text,
laid out by :meth:`VideoLLM.video_step_chunk`, the runtime's one place for that) or a *text*
block (a chunk built at position 0, shifted to where it goes). :class:`BlockLayout` is what is
needed to lay a block out again anywhere: its kind, grid, kept rows, timestamp, and for text
its positions relative to its start. :func:`lay_out` places a sequence of blocks one after the
other from a start position, numbering video steps from 0 as one video, exactly as the
reference prompt does; when it places every block of a stream in order from where the stream
began, it reproduces the positions they were encoded at.

Stored keys are rotated at the positions a block was encoded at (``BlockLayout.positions``);
moving a block is a per-token, per-component rotation by ``new - old`` positions (exact: RoPE
rotations compose, and M-RoPE rotates each frequency band by one position component).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from stream_agent.memory.errors import KVMemoryError
from stream_agent.models.base import LanguageModel, VideoLLM
from stream_agent.models.records import LMChunk, VisualTokens


@dataclass(frozen=True, slots=True, eq=False)
class BlockLayout:
    """How a block is laid out.

    ``positions`` ``(P, T)`` and ``next_position`` are where it was encoded. For a ``"step"``:
    ``grid`` (rows, cols) of its visual tokens, ``keep`` the kept rows (None: all),
    ``timestamp`` (seconds from the stream's start, for families that print frame times) and
    ``seconds_per_step``. For ``"text"``: ``positions - start`` is its layout at position 0 and
    ``span`` how far it advances the sequence.
    """

    kind: Literal["text", "step"]
    positions: torch.Tensor
    next_position: int
    start: int
    grid: tuple[int, int] | None = None
    keep: torch.Tensor | None = None
    timestamp: float = 0.0
    seconds_per_step: float = 1.0

    @property
    def span(self) -> int:
        return self.next_position - self.start

    @property
    def tokens(self) -> int:
        return int(self.positions.shape[1])

    def describe(self) -> str:
        """The JSON the index keeps (positions and kept rows go in blobs of their own)."""
        return json.dumps(
            {
                "kind": self.kind,
                "next": self.next_position,
                "start": self.start,
                "grid": list(self.grid) if self.grid else None,
                "timestamp": self.timestamp,
                "seconds_per_step": self.seconds_per_step,
                "all_rows": self.keep is None,
            }
        )

    @staticmethod
    def restore(text: str, positions: torch.Tensor, keep: torch.Tensor) -> BlockLayout:
        data = json.loads(text)
        grid = tuple(data["grid"]) if data["grid"] else None
        return BlockLayout(
            kind=data["kind"],
            positions=positions,
            next_position=int(data["next"]),
            start=int(data["start"]),
            grid=(int(grid[0]), int(grid[1])) if grid else None,
            keep=None if data["all_rows"] else keep,
            timestamp=float(data["timestamp"]),
            seconds_per_step=float(data["seconds_per_step"]),
        )


def _placeholder_tokens(model: VideoLLM, grid: tuple[int, int]) -> VisualTokens:
    rows = grid[0] * grid[1]
    embeds = torch.zeros(rows, model.lm_spec.hidden_size, dtype=model.dtype, device=model.device)
    return VisualTokens(embeds=embeds, grid=grid)


def step_chunk(
    model: VideoLLM,
    tokens: VisualTokens,
    start: int,
    *,
    step: int,
    timestamp: float,
    seconds_per_step: float,
    keep: torch.Tensor | None,
    embeds: torch.Tensor | None = None,
) -> LMChunk:
    """Video step ``step`` of ``tokens`` at ``start`` via the runtime's ``video_step_chunk``;
    ``embeds`` replaces the kept visual rows (a pruner's merged values)."""
    chunk = model.video_step_chunk(
        tokens,
        start,
        step=step,
        timestamp=timestamp,
        seconds_per_step=seconds_per_step,
        keep=keep,
    )
    if embeds is None:
        return chunk
    opening = len(model.frame_open_chunk(start, timestamp=timestamp))
    kept = len(tokens) if keep is None else int(torch.as_tensor(keep).numel())
    if tuple(embeds.shape) != (kept, chunk.embeds.shape[1]):
        raise KVMemoryError(
            f"replacement embeddings {tuple(embeds.shape)} do not match the {kept} kept tokens"
        )
    values = chunk.embeds.clone()
    values[opening : opening + kept] = embeds.to(values.dtype)
    return LMChunk(values, chunk.positions, chunk.next_position)


@dataclass(slots=True, eq=False)
class Placement:
    """Blocks laid out: each block's positions ``(P, T)``, start and next position; the
    position after the last, and how many video steps end the sequence (the next step's
    index)."""

    positions: list[torch.Tensor]
    starts: list[int]
    ends: list[int]
    end: int
    steps: int

    def moved(self, index: int, layout: BlockLayout) -> BlockLayout:
        """``layout`` (block ``index``) as placed here."""
        return replace(
            layout,
            positions=self.positions[index],
            start=self.starts[index],
            next_position=self.ends[index],
        )


class Layouter:
    """Lays blocks out for one model. It remembers the step positions it computed, keyed by the
    layout objects, so it must not outlive the blocks it was given (one per question or
    re-basing)."""

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        self._steps: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
        self._alive: list[BlockLayout] = []

    def _step(self, layout: BlockLayout, start: int, step: int) -> tuple[torch.Tensor, int]:
        # A step's layout only moves with its start (RoPE layouts are relative), so it is
        # computed once per block and step number and shifted.
        key = (id(layout), step)
        hit = self._steps.get(key)
        if hit is not None:
            return hit[0] + start, hit[1] + start
        model = self.model
        if not isinstance(model, VideoLLM) or layout.grid is None:
            raise KVMemoryError("a video step block needs a video model")
        chunk = step_chunk(
            model,
            _placeholder_tokens(model, layout.grid),
            start,
            step=step,
            timestamp=layout.timestamp,
            seconds_per_step=layout.seconds_per_step,
            keep=layout.keep,
        )
        self._steps[key] = (chunk.positions.cpu() - start, chunk.next_position - start)
        self._alive.append(layout)  # keeps id(layout) from being reused while cached
        return chunk.positions.cpu(), chunk.next_position

    def lay_out(self, blocks: Sequence[BlockLayout], start: int) -> Placement:
        """``blocks`` placed one after the other from ``start``."""
        placement = Placement([], [], [], start, 0)
        position = start
        step = 0
        for layout in blocks:
            placement.starts.append(position)
            if layout.kind == "text":
                placement.positions.append(layout.positions - layout.start + position)
                position += layout.span
                step = 0
            else:
                positions, position = self._step(layout, position, step)
                placement.positions.append(positions)
                step += 1
            placement.ends.append(position)
        placement.end = position
        placement.steps = step
        return placement
