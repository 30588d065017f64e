"""The change gate: decide, before the vision encoder, that a frame shows nothing new.

A fixed camera shows an unchanged scene most of the time. Such a frame should cost its decode and
one cheap comparison, not a vision encode and a prefill. :class:`ChangeGate` compares each frame,
downscaled to a small luma image (area average, ``width`` x ``height``, default 64x36), against the
stream's last *passed* frame -- not the previous one, so that a slow change (a drifting light, a
person creeping in) accumulates until it passes -- and says :class:`GateDecision` ``passed`` or
``gated`` with the reason and the evidence.

The comparison, per frame:

1. ``diff = small - small_ref`` (luma, 0..255), optionally minus its median
   (``compensate_brightness``: a global brightness shift, auto-exposure or a cloud, is not a
   change of the scene; the median of the signed difference ignores a person covering a minority
   of the image);
2. ``cell_diff`` = mean of ``|diff|`` over each cell of ``cell`` x ``cell`` small pixels (a 16x9
   grid by default): area averaging before the comparison already divides sensor noise by the
   number of source pixels per small pixel, the cell mean divides it again;
3. a cell *changed* when ``cell_diff > cell_threshold``; the frame passes (``"changed"``) when at
   least ``max(min_cells, ceil(changed_share * cells))`` cells changed: a small person entering
   changes a few cells by tens of levels, noise changes none;
4. with compensation on, a global shift larger than ``brightness_threshold`` passes too
   (``"brightness"``): the model should see a scene that got much darker, once;
5. a forced refresh: the frame passes when the last passed frame is ``max_age_s`` seconds old
   (``"max_age"``) or ``max_skipped`` frames were gated in a row (``"max_skipped"``), so that
   changes under the thresholds cannot hide forever and the memory sees the scene now and then.

A frame of another size than the reference passes (``"shape"``), a timestamp earlier than the
reference's (a restarted source) passes (``"restart"``), the first frame of a stream passes
(``"first"``). A gated frame's decision carries the span ``(t1, t2)``: from the last passed frame to
this one, nothing changed -- the memory extends the last block's time span to ``t2`` so that
"when did someone last enter?" and the evidence times stay right.

numpy only (no torch): the gate is a leaf that runs before anything touches the model. Not
thread-safe: the engine thread (or one ingest thread per stream) owns it.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal, get_args

import numpy as np
import numpy.typing as npt

from cacher.errors import ConfigurationError, FrameError

log = logging.getLogger(__name__)

GateReason = Literal[
    "disabled",
    "first",
    "shape",
    "restart",
    "changed",
    "brightness",
    "max_age",
    "max_skipped",
    "unchanged",
]
GATE_REASONS: Final[tuple[str, ...]] = get_args(GateReason)

FloatArray = npt.NDArray[np.float32]

#: ITU-R BT.601 luma weights (what a camera's Y channel holds).
_LUMA: Final[FloatArray] = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_number(name: str, value: object, *, minimum: float, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"gate.{name} must be a finite number, got {value!r}")
    if value < minimum or (open_low and value == minimum):
        relation = "greater than" if open_low else "at least"
        raise ConfigurationError(f"gate.{name} must be {relation} {minimum}, got {value}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"gate.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"gate.{name} must be at least {minimum}, got {value}")


@dataclass(frozen=True)
class GateConfig:
    """The change gate's knobs (validated on construction; see the module docstring).

    - ``enabled``: off -> every frame passes (``"disabled"``), nothing is compared.
    - ``width`` / ``height``: the small luma image frames are area-averaged to (64x36 keeps 16:9;
      a 768x432 frame's small pixel covers 12x12 source pixels).
    - ``cell``: side of a comparison cell in small pixels (4: a 16x9 grid of 144 cells); must
      divide ``width`` and ``height``.
    - ``cell_threshold``: mean absolute luma difference (0..255) over a cell above which the cell
      changed. 12 levels: H.264 and sensor noise after the area average stay under 1-2 levels on
      the project's clips, a person entering changes the cells they cover by 40-200, a standing
      person's small movements by 5-20 (which 12 gates mostly; see ``bench/bench_gate.py``).
    - ``changed_share`` / ``min_cells``: the frame passes when at least
      ``max(min_cells, ceil(changed_share * cells))`` cells changed (defaults: 2 cells).
    - ``compensate_brightness``: subtract the median signed difference (a global brightness
      shift) before comparing; ``brightness_threshold``: a shift larger than this passes anyway.
    - ``max_age_s``: the reference (last passed frame) is refreshed at least this often, in the
      frames' own timestamps (seconds); ``None``: never by age.
    - ``max_skipped``: at most this many frames gated in a row; ``None``: no limit.
    - ``max_streams``: streams kept; past it the least recently seen one is forgotten (counted).
    """

    enabled: bool = True
    width: int = 64
    height: int = 36
    cell: int = 4
    cell_threshold: float = 12.0
    changed_share: float = 0.01
    min_cells: int = 1
    compensate_brightness: bool = True
    brightness_threshold: float = 24.0
    max_age_s: float | None = 30.0
    max_skipped: int | None = None
    max_streams: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigurationError(f"gate.enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.compensate_brightness, bool):
            raise ConfigurationError(
                "gate.compensate_brightness must be true or false, got "
                f"{self.compensate_brightness!r}"
            )
        _check_int("width", self.width, 1)
        _check_int("height", self.height, 1)
        _check_int("cell", self.cell, 1)
        if self.width % self.cell or self.height % self.cell:
            raise ConfigurationError(
                f"gate.cell ({self.cell}) must divide gate.width ({self.width}) and "
                f"gate.height ({self.height})"
            )
        _check_number("cell_threshold", self.cell_threshold, minimum=0.0)
        _check_number("changed_share", self.changed_share, minimum=0.0)
        if self.changed_share > 1:
            raise ConfigurationError(
                f"gate.changed_share must be in [0, 1], got {self.changed_share}"
            )
        _check_int("min_cells", self.min_cells, 1)
        if self.min_cells > self.cells:
            raise ConfigurationError(
                f"gate.min_cells ({self.min_cells}) exceeds the {self.cells} cells of the grid"
            )
        _check_number("brightness_threshold", self.brightness_threshold, minimum=0.0)
        if self.max_age_s is not None:
            _check_number("max_age_s", self.max_age_s, minimum=0.0, open_low=True)
        if self.max_skipped is not None:
            _check_int("max_skipped", self.max_skipped, 0)
        _check_int("max_streams", self.max_streams, 1)

    @property
    def grid(self) -> tuple[int, int]:
        """Cells (rows, cols)."""
        return self.height // self.cell, self.width // self.cell

    @property
    def cells(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def cells_to_pass(self) -> int:
        """Changed cells that make a frame pass."""
        return max(self.min_cells, math.ceil(self.changed_share * self.cells - 1e-9))


def gate_config_from_mapping(section: Mapping[str, Any]) -> GateConfig:
    """A :class:`GateConfig` from a plain mapping (a YAML section); unknown keys are rejected."""
    if not isinstance(section, Mapping):
        raise ConfigurationError(f"gate must be a mapping, got {section!r}")
    known = {f.name for f in fields(GateConfig)}
    unknown = sorted(set(map(str, section)) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown gate option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return GateConfig(**dict(section))


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What the gate decided for one frame.

    - ``passed``: encode it (True) or not (False, ``reason == "unchanged"``).
    - ``changed_cells`` / ``changed_share``: cells over the threshold against the reference.
    - ``mean_diff``: mean absolute luma difference over the small image (after compensation).
    - ``brightness_shift``: the median signed luma difference (0 when compensation is off).
    - ``reference_time``: timestamp of the stream's last passed frame before this one (``None``
      for the first).
    - ``span``: for a gated frame ``(t1, t2)``: nothing new from the last passed frame ``t1`` to
      this one ``t2``; ``None`` for a passed frame.
    - ``skipped``: frames gated in a row up to and including this one (0 for a passed frame).
    """

    stream_id: str
    timestamp: float
    passed: bool
    reason: GateReason
    changed_cells: int
    changed_share: float
    mean_diff: float
    brightness_shift: float
    reference_time: float | None
    span: tuple[float, float] | None
    skipped: int


@dataclass(frozen=True, slots=True)
class GateCounters:
    """Totals since the gate was created (for metrics): frames seen, passed, gated, passes by
    reason, streams forgotten past ``max_streams``."""

    frames: int = 0
    passed: int = 0
    gated: int = 0
    by_reason: Mapping[str, int] = field(default_factory=dict)
    evictions: int = 0

    @property
    def gated_share(self) -> float:
        return self.gated / self.frames if self.frames else 0.0


@dataclass(slots=True)
class _StreamState:
    small: FloatArray  # the last passed frame's small luma image
    shape: tuple[int, ...]  # the source frame's shape
    time: float  # the last passed frame's timestamp
    skipped: int = 0


def _bins(size: int, parts: int) -> npt.NDArray[np.intp]:
    """Start indices of ``parts`` near-equal bins over ``size`` items."""
    starts: npt.NDArray[np.intp] = np.floor(np.arange(parts) * (size / parts)).astype(np.intp)
    return starts


def small_luma(frame: npt.NDArray[Any], width: int, height: int) -> FloatArray:
    """``frame`` (``(H, W, 3)`` RGB or ``(H, W)`` gray, uint8) area-averaged to ``(height, width)``
    luma, float32 in 0..255. Each small pixel is the mean of a block of source pixels (blocks
    differ by at most one pixel in size when the sizes do not divide)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        kind = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
        raise FrameError(f"the gate takes uint8 frames (H, W, 3) or (H, W), got {kind}")
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        image = frame[..., :3]
    elif frame.ndim == 2:
        image = frame[..., None]
    else:
        raise FrameError(f"the gate takes frames (H, W, 3) or (H, W), got shape {frame.shape}")
    rows, cols = int(image.shape[0]), int(image.shape[1])
    if rows < height or cols < width:
        raise FrameError(
            f"a {cols}x{rows} frame is smaller than the gate's {width}x{height} comparison image"
        )
    row_bins, col_bins = _bins(rows, height), _bins(cols, width)
    summed = np.add.reduceat(image, row_bins, axis=0, dtype=np.uint32)
    summed = np.add.reduceat(summed, col_bins, axis=1, dtype=np.uint32)
    counts = np.diff(np.append(row_bins, rows))[:, None] * np.diff(np.append(col_bins, cols))[None]
    mean = np.divide(summed, counts[..., None], dtype=np.float32)
    if mean.shape[2] == 1:
        return np.ascontiguousarray(mean[..., 0])
    luma: FloatArray = np.tensordot(mean, _LUMA, axes=([2], [0])).astype(np.float32)
    return luma


class ChangeGate:
    """Per-stream change gate (see the module docstring); ``check`` one frame at a time."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config if config is not None else GateConfig()
        self._streams: OrderedDict[str, _StreamState] = OrderedDict()
        self._counters = GateCounters()

    @property
    def counters(self) -> GateCounters:
        return self._counters

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._streams)

    def reset(self, stream_id: str) -> None:
        """Forget a stream's reference (the source reconnected): its next frame passes."""
        self._streams.pop(stream_id, None)

    remove = reset

    def check(self, stream_id: str, frame: npt.NDArray[Any], timestamp: float) -> GateDecision:
        """Decide for ``frame`` of ``stream_id`` at ``timestamp`` (seconds, the frame's own clock:
        pts or wall time, monotonic within a stream). Raises :class:`FrameError` for a frame that
        is not uint8 ``(H, W, 3)`` / ``(H, W)`` or smaller than the comparison image, and for a
        non-finite timestamp; the stream's state is left as it was."""
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise FrameError(f"a frame timestamp must be a number, got {timestamp!r}")
        t = float(timestamp)
        if not math.isfinite(t):
            raise FrameError(f"a frame timestamp must be finite, got {timestamp!r}")
        config = self.config
        if not config.enabled:
            return self._record(self._decision(stream_id, t, "disabled", None))
        small = small_luma(frame, config.width, config.height)
        state = self._streams.get(stream_id)
        if state is None:
            return self._record(self._pass(stream_id, small, frame.shape, t, "first", None))
        self._streams.move_to_end(stream_id)
        if frame.shape != state.shape:
            return self._record(self._pass(stream_id, small, frame.shape, t, "shape", state))
        if t < state.time:
            return self._record(self._pass(stream_id, small, frame.shape, t, "restart", state))
        diff = small - state.small
        shift = float(np.median(diff)) if config.compensate_brightness else 0.0
        absolute = np.abs(diff - shift) if shift else np.abs(diff)
        rows, cols = config.grid
        cell_diff = absolute.reshape(rows, config.cell, cols, config.cell).mean(axis=(1, 3))
        changed = int(np.count_nonzero(cell_diff > config.cell_threshold))
        evidence = (changed, float(absolute.mean()), shift)
        reason: GateReason | None = None
        if changed >= config.cells_to_pass:
            reason = "changed"
        elif config.compensate_brightness and abs(shift) > config.brightness_threshold:
            reason = "brightness"
        elif config.max_age_s is not None and t - state.time >= config.max_age_s:
            reason = "max_age"
        elif config.max_skipped is not None and state.skipped >= config.max_skipped:
            reason = "max_skipped"
        if reason is not None:
            return self._record(
                self._pass(stream_id, small, frame.shape, t, reason, state, evidence)
            )
        state.skipped += 1
        return self._record(
            self._decision(stream_id, t, "unchanged", state, evidence, span=(state.time, t))
        )

    # ------------------------------------------------------------------------------ internals

    def _pass(
        self,
        stream_id: str,
        small: FloatArray,
        shape: tuple[int, ...],
        t: float,
        reason: GateReason,
        previous: _StreamState | None,
        evidence: tuple[int, float, float] | None = None,
    ) -> GateDecision:
        decision = self._decision(stream_id, t, reason, previous, evidence)
        if stream_id not in self._streams and len(self._streams) >= self.config.max_streams:
            forgotten, _ = self._streams.popitem(last=False)
            self._counters = replace(self._counters, evictions=self._counters.evictions + 1)
            log.info(
                "change gate: forgot stream %r (more than %d streams)",
                forgotten,
                self.config.max_streams,
            )
        self._streams[stream_id] = _StreamState(small=small, shape=tuple(shape), time=t)
        self._streams.move_to_end(stream_id)
        return decision

    def _decision(
        self,
        stream_id: str,
        t: float,
        reason: GateReason,
        state: _StreamState | None,
        evidence: tuple[int, float, float] | None = None,
        *,
        span: tuple[float, float] | None = None,
    ) -> GateDecision:
        changed, mean_diff, shift = evidence if evidence is not None else (0, 0.0, 0.0)
        passed = reason != "unchanged"
        return GateDecision(
            stream_id=stream_id,
            timestamp=t,
            passed=passed,
            reason=reason,
            changed_cells=changed,
            changed_share=changed / self.config.cells,
            mean_diff=mean_diff,
            brightness_shift=shift,
            reference_time=None if state is None else state.time,
            span=span,
            skipped=0 if passed or state is None else state.skipped,
        )

    def _record(self, decision: GateDecision) -> GateDecision:
        c = self._counters
        by_reason = dict(c.by_reason)
        by_reason[decision.reason] = by_reason.get(decision.reason, 0) + 1
        self._counters = GateCounters(
            frames=c.frames + 1,
            passed=c.passed + int(decision.passed),
            gated=c.gated + int(not decision.passed),
            by_reason=by_reason,
            evictions=c.evictions,
        )
        return decision

    def __len__(self) -> int:
        return len(self._streams)
