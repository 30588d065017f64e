"""The one interface every method implements, and the checks they all share.

A :class:`StreamPruner` serves one stream. ``push()`` takes one frame's visual tokens and returns
the selections that are ready (zero or more, in frame order); ``flush()`` returns the rest;
``reset()`` forgets the stream (the daemon calls it when a source reconnects). Methods that decide
frame by frame (``none``, ``stc``, ``dycoke``, ``metok``) return exactly one selection per push
(``max_delay_frames == 0``); ``holitom`` may hold a frame back for up to ``window - 1`` pushes.
Not thread-safe: one pruner per stream, driven by one thread.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from pruner.config import PrunerConfig
from pruner.errors import FrameError, ShapeChangedError
from pruner.records import PrunerStats, Selection

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Frame:
    """One validated input frame, as the methods see it."""

    index: int
    timestamp: float
    grid: tuple[int, int]
    tokens: torch.Tensor
    saliency: torch.Tensor | None

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class _Signature:
    grid: tuple[int, int]
    channels: int
    dtype: torch.dtype
    device: torch.device


def _check_grid(grid: object) -> tuple[int, int]:
    if (
        not isinstance(grid, tuple | list)
        or len(grid) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid)
    ):
        raise FrameError(f"grid must be two positive integers (height, width), got {grid!r}")
    return int(grid[0]), int(grid[1])


class StreamPruner(abc.ABC):
    """Base of all methods: validation, shape-change policy, frame counting and stats."""

    method: ClassVar[str]

    def __init__(self, config: PrunerConfig) -> None:
        self.config = config
        self._next_index = 0
        self._signature: _Signature | None = None
        self._last_timestamp = -math.inf
        self._stats = PrunerStats()
        logger.info("pruner %s ready (%s)", self.method, self._describe())

    def _describe(self) -> str:
        budget = self.config.budget
        size = f"{budget.tokens} tokens" if budget.tokens is not None else f"ratio {budget.ratio}"
        return f"budget {size}, adaptive={budget.adaptive}"

    # ----------------------------------------------------------------- public interface

    @property
    def max_delay_frames(self) -> int:
        """The most pushes a frame can wait before its selection is returned (0: same push)."""
        return 0

    @property
    def next_frame_index(self) -> int:
        """The ``frame_index`` the next pushed frame gets (frames are counted from 0 and never
        renumbered, not even by :meth:`reset`)."""
        return self._next_index

    @property
    def pending(self) -> int:
        """Frames pushed whose selections have not been returned yet."""
        return 0

    def stats(self) -> PrunerStats:
        """Counters since construction."""
        return self._stats

    def push(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        timestamp: float,
        *,
        saliency: torch.Tensor | None = None,
    ) -> list[Selection]:
        """Feed one frame; return the selections that are now ready, oldest first.

        ``tokens``: (N, D) floating-point tensor in raster order, N = height * width of ``grid``.
        ``timestamp``: seconds, non-decreasing within a stream (until ``reset()``).
        ``saliency``: optional (N,) per-token importance, higher = more important; ``holitom``
        uses it (the released code uses the attention each patch receives in the vision tower's
        last layer, pooled like the tokens); the other methods ignore it.
        A frame whose grid, channel count, dtype or device differs from the stream's earlier
        frames is handled by ``config.on_shape_change``: with ``reset`` the selections of the
        buffered older frames come first in the returned list.
        """
        frame_grid = _check_grid(grid)
        self._check_tokens(tokens, frame_grid)
        saliency = self._check_saliency(saliency, tokens)
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise FrameError(f"timestamp must be a number of seconds, got {timestamp!r}")
        if not math.isfinite(timestamp):
            raise FrameError(f"timestamp must be finite, got {timestamp!r}")

        ready: list[Selection] = []
        signature = _Signature(frame_grid, int(tokens.shape[1]), tokens.dtype, tokens.device)
        if self._signature is not None and signature != self._signature:
            if self.config.on_shape_change == "raise":
                raise ShapeChangedError(
                    f"frame of grid {signature.grid}, {signature.channels} channels, "
                    f"{signature.dtype} on {signature.device} does not match the stream's "
                    f"{self._signature.grid}, {self._signature.channels} channels, "
                    f"{self._signature.dtype} on {self._signature.device}; call flush() and "
                    "reset() when the source changes, or set on_shape_change='reset'"
                )
            logger.info(
                "pruner %s: frame shape changed from %s x %d to %s x %d; flushing and resetting",
                self.method,
                self._signature.grid,
                self._signature.channels,
                signature.grid,
                signature.channels,
            )
            ready.extend(self.flush())
            self._reset_state()
            self._stats = replace(self._stats, shape_changes=self._stats.shape_changes + 1)
            self._last_timestamp = -math.inf
        if timestamp < self._last_timestamp:
            raise FrameError(
                f"timestamp {timestamp} is earlier than the previous frame's "
                f"{self._last_timestamp}; call reset() when a source restarts its clock"
            )
        self._signature = signature
        self._last_timestamp = float(timestamp)
        frame = Frame(self._next_index, float(timestamp), frame_grid, tokens.detach(), saliency)
        self._next_index += 1
        self._stats = replace(self._stats, frames_in=self._stats.frames_in + 1)
        ready.extend(self._count(self._push(frame)))
        return ready

    def flush(self) -> list[Selection]:
        """Return the selections of every frame still held back (the stream state is kept)."""
        return self._count(self._flush())

    def reset(self) -> None:
        """Forget the stream: method state, shape and clock. Buffered frames are discarded
        (counted in ``stats().frames_discarded``); call ``flush()`` first to keep them."""
        discarded = self.pending
        self._reset_state()
        self._signature = None
        self._last_timestamp = -math.inf
        self._stats = replace(
            self._stats,
            resets=self._stats.resets + 1,
            frames_discarded=self._stats.frames_discarded + discarded,
        )
        logger.info("pruner %s reset (%d buffered frames discarded)", self.method, discarded)

    # ----------------------------------------------------------------- for subclasses

    @abc.abstractmethod
    def _push(self, frame: Frame) -> list[Selection]:
        """Process a validated frame of the stream's current shape."""

    def _flush(self) -> list[Selection]:
        return []

    @abc.abstractmethod
    def _reset_state(self) -> None:
        """Drop all per-stream state (buffers, anchors, windows)."""

    # ----------------------------------------------------------------- helpers

    def _count(self, selections: list[Selection]) -> list[Selection]:
        if selections:
            self._stats = replace(
                self._stats,
                frames_out=self._stats.frames_out + len(selections),
                tokens_in=self._stats.tokens_in + sum(s.num_tokens for s in selections),
                tokens_out=self._stats.tokens_out + sum(s.num_kept for s in selections),
            )
        return selections

    @staticmethod
    def _check_tokens(tokens: object, grid: tuple[int, int]) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise FrameError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.ndim != 2:
            raise FrameError(
                f"tokens must be 2-D (N, D) in raster order, got shape {tuple(tokens.shape)}"
            )
        if not tokens.is_floating_point():
            raise FrameError(f"tokens must be floating point, got {tokens.dtype}")
        if tokens.shape[0] != grid[0] * grid[1] or tokens.shape[1] < 1:
            raise FrameError(
                f"tokens of shape {tuple(tokens.shape)} do not fit grid {grid}: expected "
                f"({grid[0] * grid[1]}, D >= 1)"
            )
        if not bool(torch.isfinite(tokens).all()):
            raise FrameError("tokens contain NaN or infinity; check the vision encoder's output")

    @staticmethod
    def _check_saliency(saliency: object, tokens: torch.Tensor) -> torch.Tensor | None:
        if saliency is None:
            return None
        if not isinstance(saliency, torch.Tensor):
            raise FrameError(f"saliency must be a torch.Tensor, got {type(saliency).__name__}")
        if saliency.shape != (tokens.shape[0],):
            raise FrameError(
                f"saliency must have shape ({tokens.shape[0]},), got {tuple(saliency.shape)}"
            )
        values = saliency.detach().to(device=tokens.device, dtype=torch.float32)
        if not bool(torch.isfinite(values).all()):
            raise FrameError("saliency contains NaN or infinity")
        return values


def plain_selection(
    method: str, frame: Frame, keep: torch.Tensor, scores: torch.Tensor
) -> Selection:
    """A selection that sends the kept tokens as they are (no merging)."""
    return Selection(
        method=method,
        frame_index=frame.index,
        timestamp=frame.timestamp,
        grid=frame.grid,
        indices=keep,
        tokens=frame.tokens[keep],
        scores=scores,
    )
