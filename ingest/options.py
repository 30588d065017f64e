"""How a source is read: sampling rate, size, pacing, timeouts, backoff, the hand-off queue."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from ingest.errors import InvalidOptionsError


class OverflowPolicy(StrEnum):
    """What the decode thread does when the consumer has not taken the queued frames yet.

    ``DROP_OLDEST``: the newest frame wins; the oldest queued frame is discarded and counted in
    ``dropped_stale``. The default for live sources and for files replayed in real time.
    ``BLOCK``: the decode thread waits for room, nothing is dropped. The default for files read
    as fast as possible (batch work wants every sampled frame).
    """

    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


class Decoder(StrEnum):
    """Which library decodes. ``AUTO`` is PyAV everywhere, except a webcam on a platform whose
    PyAV build has no device input (e.g. the PyPI wheels without ``v4l2``), where OpenCV reads it.
    ``OPENCV`` forces OpenCV (also for files and URLs; useful for checking that path)."""

    AUTO = "auto"
    PYAV = "pyav"
    OPENCV = "opencv"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidOptionsError(message)


def _finite_positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Capped, jittered exponential backoff between reconnection attempts.

    The n-th consecutive failure waits ``min(max_s, initial_s * multiplier**n)``, reduced by a
    random fraction of at most ``jitter`` (so that many cameras behind one failed switch do not
    reconnect in lockstep). The count resets once a session has stayed online ``reset_after_s``.
    Live sources never give up.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.25
    reset_after_s: float = 10.0

    def __post_init__(self) -> None:
        _check(_finite_positive(self.initial_s), "backoff initial_s must be a positive number")
        _check(
            _finite_positive(self.max_s) and self.max_s >= self.initial_s,
            "backoff max_s must be a number at least initial_s",
        )
        _check(
            math.isfinite(self.multiplier) and self.multiplier >= 1.0,
            "backoff multiplier must be at least 1",
        )
        _check(0.0 <= self.jitter < 1.0, "backoff jitter must be in [0, 1)")
        _check(
            math.isfinite(self.reset_after_s) and self.reset_after_s >= 0,
            "backoff reset_after_s must be zero or positive",
        )


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Options for reading one source.

    - ``fps``: target sampling rate by presentation time (the first frame at or after each
      multiple of ``1/fps``); ``None`` keeps every decoded frame.
    - ``max_size``: ``(width, height)`` box the frames are scaled down into, keeping the aspect
      ratio (never scaled up); ``None`` keeps the decoded size. Rotation metadata is applied first.
    - ``realtime``: replay recorded media (files, finite HTTP) at the pace of its timestamps, as if
      live; False reads as fast as decoding allows. Ignored for live sources.
    - ``loop``: replay a file forever (timestamps keep increasing across the restarts).
    - ``open_timeout_s`` / ``read_timeout_s``: how long opening, and each read once open, may
      wait for data; a read that waits longer marks a live source ``stalled``.
    - ``backoff``: reconnection pacing for live sources.
    - ``queue_size`` / ``overflow``: the bounded hand-off between the decode thread and the
      consumer. ``None`` picks per source: ``DROP_OLDEST`` with one slot (newest frame wins) for
      live sources and real-time replay, ``BLOCK`` with 8 slots for as-fast-as-possible files.
    - ``decoder`` / ``decoder_threads``: the decoding library and FFmpeg's codec thread count
      (0 lets FFmpeg choose).
    """

    fps: float | None = 1.0
    max_size: tuple[int, int] | None = None
    realtime: bool = True
    loop: bool = False
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    queue_size: int | None = None
    overflow: OverflowPolicy | None = None
    decoder: Decoder = Decoder.AUTO
    decoder_threads: int = 0

    def __post_init__(self) -> None:
        _check(
            self.fps is None or _finite_positive(self.fps),
            "fps must be a positive number, or None for every frame",
        )
        if self.max_size is not None:
            _check(
                len(self.max_size) == 2
                and all(isinstance(v, int) and v >= 2 for v in self.max_size),
                "max_size must be (width, height) with both at least 2 pixels",
            )
        _check(_finite_positive(self.open_timeout_s), "open_timeout_s must be a positive number")
        _check(_finite_positive(self.read_timeout_s), "read_timeout_s must be a positive number")
        _check(
            self.queue_size is None or (isinstance(self.queue_size, int) and self.queue_size >= 1),
            "queue_size must be at least 1",
        )
        _check(
            isinstance(self.decoder_threads, int) and self.decoder_threads >= 0,
            "decoder_threads must be 0 (automatic) or a positive count",
        )
        # Accept the enums' string values too (config files carry strings).
        if self.overflow is not None:
            try:
                object.__setattr__(self, "overflow", OverflowPolicy(self.overflow))
            except ValueError:
                raise InvalidOptionsError(
                    f"overflow must be one of {[p.value for p in OverflowPolicy]}"
                ) from None
        try:
            object.__setattr__(self, "decoder", Decoder(self.decoder))
        except ValueError:
            raise InvalidOptionsError(
                f"decoder must be one of {[d.value for d in Decoder]}"
            ) from None

    def handoff_for(self, live_like: bool) -> tuple[OverflowPolicy, int]:
        """The hand-off policy and capacity for a source that is live (or paced like one)."""
        policy = self.overflow or (
            OverflowPolicy.DROP_OLDEST if live_like else OverflowPolicy.BLOCK
        )
        size = self.queue_size or (1 if policy is OverflowPolicy.DROP_OLDEST else 8)
        return policy, size
