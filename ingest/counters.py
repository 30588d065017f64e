"""The mutable counters a decode thread updates (read as :class:`IngestCounters` snapshots)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class WorkerCounters:
    """Counts written by one decode thread (and ``delivered`` by the consumer).

    Each field has a single writer, and reading an int is atomic in CPython, so a snapshot taken
    from the event loop is consistent per field without a lock.
    """

    decoded: int = 0
    sampled: int = 0
    delivered: int = 0
    decode_errors: int = 0
    connect_attempts: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    stalls: int = 0
    last_frame_wall_time: float | None = None
